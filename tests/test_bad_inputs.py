"""Bad inputs as a new user makes them: one line, exit status 2, no traceback, nothing written.

Each case runs the command line (``ticketlab.cli.main``) and checks the message names the input
and the cause, and that the files the command could have touched are unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ticketlab.cli import main


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(capsys, *argv, contains: str | tuple[str, ...]) -> str:
    code, _, err = run_cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert "\x1b" not in err
    for part in (contains,) if isinstance(contains, str) else contains:
        assert part in lines[0], lines[0]
    return lines[0]


def snapshot(*paths: Path) -> dict[Path, bytes | None]:
    return {p: (p.read_bytes() if p.is_file() else None) for p in paths}


@pytest.fixture
def omp_mask(capsys, bert_dir, tmp_path) -> Path:
    out = tmp_path / "omp.safetensors"
    code, _, err = run_cli(
        capsys, "prune", "--model", bert_dir, "--method", "omp", "--sparsity", 0.5, "--out", out
    )
    assert code == 0, err
    return out


# -- mask headers --------------------------------------------------------------------------------


def _rewrite_header(source: Path, target: Path, edit) -> Path:
    with safe_open(str(source), framework="pt") as handle:
        header = json.loads(handle.metadata()["ticketlab"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    save_file(tensors, str(target), metadata={"ticketlab": json.dumps(edit(header))})
    return target


def _first_tensor(header):
    return next(iter(header["tensors"]))


HEADER_EDITS = {
    "a list": (lambda h: [1, 2], "expected a JSON object"),
    "no tensors": (
        lambda h: {k: v for k, v in h.items() if k != "tensors"},
        "missing required field 'tensors'",
    ),
    "no kind": (lambda h: {k: v for k, v in h.items() if k != "kind"}, "missing required field 'kind'"),
    "string version": (lambda h: {**h, "format_version": "1"}, "format_version: expected an integer"),
    "negative shape": (
        lambda h: {**h, "tensors": {**h["tensors"], _first_tensor(h): {"shape": [-32, 32]}}},
        "negative size",
    ),
    "text shape": (
        lambda h: {**h, "tensors": {**h["tensors"], _first_tensor(h): {"shape": ["a", 32]}}},
        "shape[0]: expected an integer",
    ),
    "provenance a list": (lambda h: {**h, "provenance": [1]}, "provenance: expected a mapping"),
    "fingerprint a string": (
        lambda h: {**h, "provenance": {**h["provenance"], "fingerprint": "abc"}},
        "provenance.fingerprint",
    ),
    "structured without heads": (lambda h: {**h, "kind": "structured"}, "needs tensors 'heads' and 'ffn'"),
}


@pytest.mark.parametrize("case", sorted(HEADER_EDITS))
def test_mask_headers_of_the_wrong_shape_are_one_line_errors(capsys, omp_mask, tmp_path, case):
    edit, message = HEADER_EDITS[case]
    bad = _rewrite_header(omp_mask, tmp_path / "bad.safetensors", edit)
    line = assert_one_line_error(capsys, "inspect", bad, contains=(str(bad), message))
    assert "mask header" in line or "format" in line
    assert_one_line_error(capsys, "compare", omp_mask, bad, contains=str(bad))


def test_a_newer_header_with_extra_keys_still_reads(capsys, omp_mask, tmp_path):
    extra = _rewrite_header(
        omp_mask,
        tmp_path / "extra.safetensors",
        lambda h: {**h, "future": 1, "provenance": {**h["provenance"], "future": {"x": 1}}},
    )
    assert run_cli(capsys, "inspect", extra)[0] == 0


def test_inspect_of_a_folder_says_so(capsys, tmp_path):
    assert_one_line_error(capsys, "inspect", tmp_path, contains="is a folder, not a mask file")


def test_header_tensors_must_match_the_header(tmp_path):
    from ticketlab.errors import MaskFormatError
    from ticketlab.masks import load_mask

    path = tmp_path / "m.safetensors"
    header = {
        "format": "ticketlab-mask",
        "format_version": 1,
        "kind": "unstructured",
        "tensors": {"w": {"shape": [3]}},
    }
    save_file({"w": torch.zeros(5, dtype=torch.uint8)}, str(path), metadata={"ticketlab": json.dumps(header)})
    with pytest.raises(MaskFormatError, match="wrong packed size"):
        load_mask(path)
