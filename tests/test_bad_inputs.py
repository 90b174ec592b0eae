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


# -- spec files ----------------------------------------------------------------------------------

GRID_BASE = "model: m\ntasks: [sst2]\nmethods: [full, omp]\nsparsities: [0.5]\nseeds: [0]\n"


@pytest.mark.parametrize(
    "field_line, message",
    [
        ("seeds: 3", "seeds: expected a list of integers, got 3"),
        ("sparsities: 0.5", "sparsities: expected a list of numbers"),
        ("sparsities: [abc]", "sparsities[0]: expected a number, got 'abc'"),
        ("recipe: 5", "recipe: expected a mapping"),
        ("recipe: {epochs: one}", "recipe.epochs: expected an integer"),
        ("recipe: {epochs: 0}", "epochs must be at least 1"),
        ("seeds: ['0']", "seeds[0]: expected an integer, got '0'"),
        ("tasks: sst2", "tasks: expected a list of strings, got 'sst2'"),
        ("seeds: [0, 0]", "seeds: 0 is given twice"),
        ("tasks: [sst2, SST-2]", "tasks: 'SST-2' is given twice"),
        ("seeds: [-1]", "seeds[0]: a seed is an integer from 0"),
        ("tamt: {steps: abc}", "tamt.steps: expected an integer"),
        ("task_recipes: {sst2: {lr: fast}}", "task_recipes.sst2.lr: expected a number"),
        ("super_ffn_ratio: .nan", "super_ffn_ratio: expected a finite number"),
    ],
)
def test_grid_spec_fields_are_type_checked_by_name(capsys, tmp_path, field_line, message):
    key = field_line.split(":")[0]
    lines = [line for line in GRID_BASE.splitlines() if not line.startswith(key + ":")]
    spec = tmp_path / "grid.yaml"
    spec.write_text("\n".join([*lines, field_line]) + "\n")
    assert_one_line_error(capsys, "grid", spec, "--out", tmp_path / "g", contains=(str(spec), message))
    assert not (tmp_path / "g").exists()


def test_json_spec_with_a_string_seed_is_refused(capsys, tmp_path):
    spec = tmp_path / "grid.json"
    spec.write_text(json.dumps({"model": "m", "tasks": ["sst2"], "seeds": "0"}))
    assert_one_line_error(capsys, "grid", spec, "--out", tmp_path / "g", contains="seeds: expected a list")


# -- data values ---------------------------------------------------------------------------------


@pytest.mark.parametrize("score", ["nan", "inf", "37.5", "-0.5"])
def test_stsb_scores_out_of_range_name_file_and_line(capsys, tmp_path, score):
    from tests.glue_fixtures import tiny_model_dir, write_glue_task

    data = write_glue_task(tmp_path / "glue", "stsb")
    train = data / "STS-B" / "train.tsv"
    lines = train.read_text().splitlines()
    fields = lines[3].split("\t")
    lines[3] = "\t".join([*fields[:-1], score])
    train.write_text("\n".join(lines) + "\n")
    model = tiny_model_dir(tmp_path / "model")
    assert_one_line_error(
        capsys,
        "finetune", "--model", model, "--task", "stsb", "--data-dir", data, "--out", tmp_path / "run",
        contains=(f"{train}, line 4", "not a number from 0 to 5"),
    )  # fmt: skip


# -- model directories and wording -----------------------------------------------------------------


def test_a_truncated_model_safetensors_is_one_line(capsys, bert_dir, tmp_path):
    weights = bert_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    assert_one_line_error(
        capsys,
        "prune", "--model", bert_dir, "--method", "omp", "--sparsity", 0.5, "--out", tmp_path / "m.safetensors",
        contains=(str(bert_dir), "truncated or corrupt"),
    )  # fmt: skip
    assert not (tmp_path / "m.safetensors").exists()


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("content", ["pickle", "truncated"])
def test_a_bin_the_safe_loader_refuses_is_one_line_without_unsafe_advice(capsys, bert, tmp_path, content):
    model_dir = tmp_path / "bin-model"
    bert.save_pretrained(model_dir)
    (model_dir / "model.safetensors").unlink()
    weights = model_dir / "pytorch_model.bin"
    if content == "pickle":
        torch.save({"x": _RunsCode()}, weights)
    else:
        torch.save(bert.state_dict(), weights)
        weights.write_bytes(weights.read_bytes()[:3000])
    line = assert_one_line_error(
        capsys,
        "prune", "--model", model_dir, "--method", "omp", "--sparsity", 0.5, "--out", tmp_path / "m.safetensors",
        contains=str(model_dir),
    )  # fmt: skip
    assert "weights_only" not in line and "this must never run" not in capsys.readouterr().out
    assert ("safe load refuses" if content == "pickle" else "truncated or corrupt") in line


def test_import_mask_of_an_unsafe_pickle_gives_no_unsafe_advice(capsys, bert_dir, tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"x": _RunsCode()}, evil)
    line = assert_one_line_error(
        capsys,
        "import-mask",
        evil,
        "--model",
        bert_dir,
        "--out",
        tmp_path / "m.safetensors",
        contains=str(evil),
    )
    assert "weights_only" not in line and "safe load refuses" in line


def test_error_lines_never_carry_terminal_escapes(capsys, monkeypatch):
    import ticketlab.cli.mask_commands as commands
    from ticketlab.errors import TicketlabError, first_line

    def bold_failure(args):
        raise TicketlabError("x.pt: \x1b[1mdo not\x1b[0m\nsecond line")

    monkeypatch.setattr(commands, "run_inspect", bold_failure)
    assert first_line("\x1b[31mred\x1b[0m text\nmore") == "red text"
    line = assert_one_line_error(capsys, "inspect", "x", contains="x.pt: do not second line")
    assert "\x1b" not in line


# -- values --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["prune", "--model", "m", "--method", "random", "--sparsity", "0.5", "--out", "x.safetensors"],
        ["finetune", "--model", "m", "--task", "sst2", "--out", "run"],
        ["imp", "--model", "m", "--task", "sst2", "--levels", "0.5", "--out", "run"],
        ["tamt", "--model", "m", "--objective", "kd", "--sparsity", "0.5", "--out", "x.safetensors"],
        ["structured-masks", "--scores", "s.safetensors", "--out", "masks"],
    ],
)
def test_a_negative_seed_is_refused_by_every_verb(capsys, tmp_path, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--seed", "-1"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "a seed is an integer from 0" in err and list(tmp_path.iterdir()) == []


def test_library_calls_refuse_a_negative_seed_too(bert):
    from ticketlab.errors import TicketlabError
    from ticketlab.experiments.finetune import FinetuneSpec
    from ticketlab.pruning import prune

    with pytest.raises(TicketlabError, match="a seed is an integer"):
        prune(bert, "random", 0.5, seed=-1)
    with pytest.raises(TicketlabError, match="a seed is an integer"):
        FinetuneSpec(model="m", task="sst2", seed=-1).validate()


def test_max_length_above_the_positions_is_refused_up_front(capsys, tmp_path):
    from tests.glue_fixtures import tiny_model_dir, write_glue_task

    model = tiny_model_dir(tmp_path / "model")  # 80 positions
    data = write_glue_task(tmp_path / "glue", "sst2")
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat .\n" * 20)
    assert_one_line_error(
        capsys,
        "finetune", "--model", model, "--task", "sst2", "--data-dir", data, "--max-length", 100000,
        "--out", tmp_path / "run",
        contains=("--max-length 100000", "80 position embeddings"),
    )  # fmt: skip
    assert_one_line_error(
        capsys,
        "pretrain-loss", "--model", model, "--text", text,  # default 128 > 80
        contains="--max-length 128 is longer than the model's 80 position embeddings",
    )  # fmt: skip
    assert_one_line_error(
        capsys,
        "tamt", "--model", model, "--objective", "kd", "--sparsity", 0.5, "--text", text,
        "--out", tmp_path / "t.safetensors",
        contains="--max-length 128",
    )  # fmt: skip
    assert not (tmp_path / "run").exists() and not (tmp_path / "t.safetensors").exists()


# -- references and comparisons --------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"hidden_size": 48, "intermediate_size": 96}, "has shape (48, 48), this model's has (32, 32)"),
        ({"num_hidden_layers": 3}, "has matrix 'encoder.layer.2."),
    ],
)
def test_matched_random_with_a_reference_of_another_model_is_refused(
    capsys, bert_dir, tmp_path, overrides, message
):
    from ticketlab.models.tiny import tiny_model

    other_dir = tmp_path / "other"
    tiny_model("bert", seed=0, **overrides).save_pretrained(other_dir)
    reference = tmp_path / "ref.safetensors"
    assert (
        run_cli(
            capsys, "prune", "--model", other_dir, "--method", "omp", "--sparsity", 0.5, "--out", reference
        )[0]
        == 0
    )
    out = tmp_path / "r.safetensors"
    assert_one_line_error(
        capsys,
        "prune", "--model", bert_dir, "--method", "random", "--sparsity", 0.5, "--reference", reference,
        "--out", out,
        contains=(f"--reference {reference}", message),
    )  # fmt: skip
    assert not out.exists()


def test_compare_warns_about_masks_of_different_models(capsys, bert_dir, tmp_path):
    from ticketlab.models.tiny import tiny_model

    other_dir = tmp_path / "other"
    tiny_model("bert", seed=1).save_pretrained(other_dir)
    a, b, c = (tmp_path / f"{n}.safetensors" for n in "abc")
    for model, out, method in ((bert_dir, a, "omp"), (other_dir, b, "omp"), (bert_dir, c, "random")):
        assert (
            run_cli(capsys, "prune", "--model", model, "--method", method, "--sparsity", 0.5, "--out", out)[0]
            == 0
        )
    code, out, err = run_cli(capsys, "compare", a, b, "--json")
    assert code == 0 and "different models" in err and len(json.loads(out)["warnings"]) == 1
    code, out, err = run_cli(capsys, "compare", a, c, "--json")
    assert code == 0 and err == "" and json.loads(out)["warnings"] == []


# -- shrunk models -------------------------------------------------------------------------------


def test_finetune_takes_a_shrunk_model_and_importance_says_what_it_is(capsys, tmp_path):
    from tests.glue_fixtures import tiny_model_dir, write_glue_task
    from ticketlab.masks import StructuredMask, save_mask

    model = tiny_model_dir(tmp_path / "model")
    data = write_glue_task(tmp_path / "glue", "sst2", sizes={"train": 16, "dev": 8, "test": 4})
    heads = torch.ones(2, 4, dtype=torch.bool)
    heads[0, :2] = False
    mask = save_mask(StructuredMask(heads, torch.ones(2, dtype=torch.bool)), tmp_path / "s.safetensors")
    small = tmp_path / "small"
    assert run_cli(capsys, "shrink", "--model", model, "--mask", mask, "--out", small)[0] == 0
    code, out, err = run_cli(
        capsys, "finetune", "--model", small, "--task", "sst2", "--data-dir", data, "--epochs", 1,
        "--out", tmp_path / "run", "--json", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["training_steps"] >= 1
    assert_one_line_error(
        capsys,
        "importance", "--model", small, "--task", "sst2", "--data-dir", data, "--out", tmp_path / "i.safetensors",
        contains=("is a ticketlab shrink output", "score the full fine-tuned model"),
    )  # fmt: skip


def test_a_nearly_empty_matrix_is_flagged_at_prune_and_inspect(capsys, bert, tmp_path):
    with torch.no_grad():
        bert.pooler.dense.weight.mul_(1e-3)
        bert.pooler.dense.weight[0, 0] = 1.0  # one large weight survives: 99.9% pruned, not 100%
    model_dir = tmp_path / "small-pooler"
    bert.save_pretrained(model_dir)
    omp = tmp_path / "omp.safetensors"
    code, out, err = run_cli(
        capsys, "prune", "--model", model_dir, "--method", "omp", "--sparsity", 0.3, "--out", omp, "--json"
    )
    assert code == 0 and "pooler.dense.weight (99.90%) pruned almost entirely" in err
    assert json.loads(out)["nearly_pruned"] == {"pooler.dense.weight": pytest.approx(1023 / 1024)}
    code, out, _ = run_cli(capsys, "inspect", omp)
    assert code == 0 and "warning: pooler.dense.weight (99.90%) pruned almost entirely" in out


def test_a_folder_where_a_file_is_wanted_and_the_reverse_are_named(capsys, bert_dir, notes, tmp_path):
    from ticketlab.errors import TicketlabError
    from ticketlab.experiments.finetune import FinetuneSpec

    with pytest.raises(TicketlabError, match="data directory .* is a file; a folder is wanted"):
        FinetuneSpec(model="m", task="sst2", data_dir=str(notes)).validate()
    with pytest.raises(TicketlabError, match="mask file .* is a folder; a file is wanted"):
        FinetuneSpec(model="m", task="sst2", mask=str(tmp_path)).validate()
    from ticketlab.data.text import read_text_lines

    with pytest.raises(TicketlabError, match="text file .* is a folder; a file is wanted"):
        read_text_lines(tmp_path)


def test_import_mask_of_a_text_file_says_a_safe_load_cannot_read_it(capsys, bert_dir, notes, tmp_path):
    line = assert_one_line_error(
        capsys,
        "import-mask",
        notes,
        "--model",
        bert_dir,
        "--out",
        tmp_path / "m.safetensors",
        contains=str(notes),
    )
    assert "a safe load cannot read it" in line and "pickled" not in line and "weights_only" not in line


@pytest.mark.parametrize("value", ["nan", "inf", "Infinity"])
def test_number_flags_refuse_nan_and_infinity(capsys, value):
    with pytest.raises(SystemExit) as stop:
        main(
            [
                "tamt",
                "--model",
                "m",
                "--objective",
                "kd",
                "--sparsity",
                "0.5",
                "--lr",
                value,
                "--out",
                "x.safetensors",
            ]
        )
    err = capsys.readouterr().err
    assert (
        stop.value.code == 2
        and "argument --lr: expected a finite number" in err
        and len(err.splitlines()) == 1
    )


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--head-steps", "-1", "head-steps must be at least 0"),
        ("--weight-decay", "-1", "weight-decay must be at least 0"),
        ("--lr", "0", "lr must be above 0"),
    ],
)
def test_tamt_refuses_negative_settings_before_loading_anything(capsys, tmp_path, flag, value, message):
    text = tmp_path / "text.txt"
    text.write_text("a line of text\n" * 4)
    out = tmp_path / "tamt"
    argv = ["tamt", "--model", str(tmp_path / "no-model"), "--objective", "kd", "--sparsity", "0.5"]
    assert_one_line_error(
        capsys, *argv, "--text", str(text), flag, value, "--out", str(out), contains=message
    )
    assert not out.exists()
