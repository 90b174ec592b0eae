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


# -- output paths --------------------------------------------------------------------------------

# Each verb with its output flag; the check runs before any work, so the other inputs need not exist.
WRITERS = {
    "prune": (["prune", "--model", "m", "--method", "omp", "--sparsity", "0.5", "--out"], "x.safetensors"),
    "import-mask": (["import-mask", "orig.pt", "--model", "m", "--out"], "x.safetensors"),
    "finetune": (["finetune", "--model", "m", "--task", "sst2", "--out"], "run"),
    "imp": (["imp", "--model", "m", "--task", "sst2", "--levels", "0.5", "--out"], "run"),
    "tamt": (["tamt", "--model", "m", "--objective", "kd", "--sparsity", "0.5", "--out"], "x.safetensors"),
    "importance": (["importance", "--model", "m", "--task", "sst2", "--out"], "x.safetensors"),
    "grid": (["grid", "spec.yaml", "--out"], "grid"),
    "report": (["report", "run", "--out"], "report"),
    "shrink": (["shrink", "--model", "m", "--mask", "s.safetensors", "--out"], "small"),
    "structured-masks": (["structured-masks", "--scores", "s.safetensors", "--out"], "masks"),
    "stability --plot": (["stability", "a.safetensors", "--plot"], "x.png"),
    "pretrain-loss --save-head": (["pretrain-loss", "--model", "m", "--save-head"], "head"),
}


@pytest.fixture
def notes(tmp_path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("my notes\n")
    return path


@pytest.mark.parametrize("verb", sorted(WRITERS))
def test_an_output_under_a_regular_file_is_one_line(capsys, notes, verb):
    argv, name = WRITERS[verb]
    line = assert_one_line_error(
        capsys, *argv, notes / name, contains=("is a file, not a folder", str(notes))
    )
    assert line.startswith(f"ticketlab {argv[0]}: error: --")
    assert notes.read_text() == "my notes\n"


@pytest.mark.parametrize("verb", ["finetune", "imp", "grid", "report", "shrink", "structured-masks"])
def test_a_file_where_a_folder_is_wanted_is_one_line(capsys, notes, verb):
    argv, _ = WRITERS[verb]
    assert_one_line_error(capsys, *argv, notes, contains=("a folder is wanted", str(notes)))
    assert notes.read_text() == "my notes\n"


@pytest.mark.parametrize("verb", ["prune", "import-mask", "tamt", "importance", "stability --plot"])
def test_an_unrelated_file_is_replaced_only_with_force(capsys, tmp_path, verb):
    argv, name = WRITERS[verb]
    notes = tmp_path / f"notes{Path(name).suffix}"
    notes.write_text("my notes\n")
    assert_one_line_error(capsys, *argv, notes, contains=("is not a", "--force", str(notes)))
    assert notes.read_text() == "my notes\n"


def test_prune_force_replaces_an_unrelated_file(capsys, bert_dir, notes):
    argv, _ = WRITERS["prune"]
    argv = [a if a != "m" else str(bert_dir) for a in argv]
    assert run_cli(capsys, *argv, notes, "--force")[0] == 0
    assert notes.read_bytes()[8:9] == b"{"  # now a safetensors file


def test_a_mask_replaces_a_mask_without_force(capsys, bert_dir, omp_mask):
    before = omp_mask.read_bytes()
    code, _, err = run_cli(
        capsys, "prune", "--model", bert_dir, "--method", "random", "--sparsity", 0.3, "--out", omp_mask
    )
    assert code == 0, err and omp_mask.read_bytes() != before


def test_an_input_is_never_the_output(capsys, bert_dir, omp_mask, tmp_path):
    before = snapshot(omp_mask)
    for argv in (
        ["import-mask", omp_mask, "--model", bert_dir, "--out", omp_mask, "--force"],
        ["prune", "--model", bert_dir, "--method", "random", "--sparsity", 0.5, "--reference", omp_mask]
        + ["--out", omp_mask],
        ["stability", omp_mask, "--plot", omp_mask],
    ):
        assert_one_line_error(capsys, *argv, contains="is also an input of this command")
    assert_one_line_error(
        capsys,
        "shrink",
        "--model",
        bert_dir,
        "--mask",
        omp_mask,
        "--out",
        bert_dir,
        contains="is also an input",
    )
    assert snapshot(omp_mask) == before


def test_report_never_writes_into_an_input_or_an_unrelated_folder(capsys, tmp_path, notes):
    run = tmp_path / "run"
    run.mkdir()
    (run / "spec.json").write_text("{}")
    assert_one_line_error(capsys, "report", run, "--out", run, contains="is also an input")
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.md").write_text("mine")
    assert_one_line_error(
        capsys, "report", run, "--out", other, contains=("is not a report folder", "--force")
    )
    assert (other / "results.md").read_text() == "mine"
    assert_one_line_error(capsys, "report", notes, contains=("is a file", "run directory"))


def test_an_unwritable_place_is_one_line(capsys, monkeypatch, tmp_path):
    import os

    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real_access(p, mode)
    )
    for verb in ("prune", "finetune", "report", "tamt"):
        argv, name = WRITERS[verb]
        assert_one_line_error(capsys, *argv, tmp_path / name, contains="permission denied")
    assert list(tmp_path.iterdir()) == []


def test_atomic_writes_under_a_file_are_ticketlab_errors(notes):
    from ticketlab.errors import TicketlabError
    from ticketlab.io import write_directory, write_json

    with pytest.raises(TicketlabError, match="cannot write"):
        write_json(notes / "x.json", {})
    with pytest.raises(TicketlabError, match="a file of that name is in the way"):
        write_directory(notes, lambda tmp: None)
    assert notes.read_text() == "my notes\n"
