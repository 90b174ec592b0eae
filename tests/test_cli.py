"""The command line as a user runs it: exit codes, tables, --json, one-line errors."""

import json

import pytest
import torch

from ticketlab.cli import main
from ticketlab.masks import load_mask


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_prune_inspect_compare_round_trip(capsys, bert_dir, tmp_path):
    omp = tmp_path / "omp.safetensors"
    code, out, _ = run_cli(
        capsys, "prune", "--model", bert_dir, "--method", "omp", "--sparsity", 0.5, "--out", omp
    )
    assert code == 0 and "50.00%" in out
    rnd = tmp_path / "rnd.safetensors"
    code, out, _ = run_cli(
        capsys,
        "prune",
        "--model",
        bert_dir,
        "--method",
        "random",
        "--sparsity",
        0.5,
        "--scheme",
        "per-matrix",
        "--seed",
        3,
        "--out",
        rnd,
        "--json",
    )
    summary = json.loads(out)
    assert summary["scheme"] == "per-matrix" and summary["sparsity"] == pytest.approx(0.5, abs=1e-3)

    code, out, _ = run_cli(capsys, "inspect", omp, "--json")
    data = json.loads(out)
    assert code == 0 and data["sparsity"] == 0.5
    assert set(data["per_layer"]) == {"0", "1", "other"}
    assert data["provenance"]["method"] == "omp" and "fingerprint" not in data["provenance"]
    assert len(data["per_matrix"]) == 13

    code, out, _ = run_cli(capsys, "inspect", omp, "--matrices")
    assert code == 0 and "encoder.layer.1.output.dense.weight" in out and "| layer" in out

    code, out, _ = run_cli(capsys, "compare", omp, rnd, "--json")
    pair = json.loads(out)["pairs"][0]
    assert set(pair) >= {"jaccard", "jaccard_random"}
    assert abs(pair["jaccard"] - pair["jaccard_random"]) < 0.05  # magnitude vs random: about chance


def test_protocol_sets_scope_and_scheme(capsys, bert_dir, tmp_path):
    out_path = tmp_path / "m.safetensors"
    code, _, _ = run_cli(
        capsys,
        "prune",
        "--model",
        bert_dir,
        "--method",
        "omp",
        "--sparsity",
        0.5,
        "--protocol",
        "liu2022",
        "--out",
        out_path,
    )
    mask = load_mask(out_path)
    assert code == 0
    assert (mask.provenance.scope, mask.provenance.scheme) == ("encoder+embeddings", "per-matrix")


def test_matched_random_from_the_command_line(capsys, bert_dir, tmp_path):
    ref = tmp_path / "ref.safetensors"
    run_cli(capsys, "prune", "--model", bert_dir, "--method", "omp", "--sparsity", 0.8, "--out", ref)
    matched = tmp_path / "matched.safetensors"
    code, _, _ = run_cli(
        capsys,
        "prune",
        "--model",
        bert_dir,
        "--method",
        "random",
        "--sparsity",
        0.8,
        "--reference",
        ref,
        "--out",
        matched,
    )
    assert code == 0
    a, b = load_mask(ref), load_mask(matched)
    assert all(int(a.tensors[n].sum()) == int(b.tensors[n].sum()) for n in a.tensors)


def test_import_mask_command(capsys, bert_dir, tmp_path):
    from transformers import AutoModel

    from ticketlab.pruning import prune

    mask = prune(AutoModel.from_pretrained(bert_dir), "omp", 0.4)
    torch.save({f"bert.{n}_mask": b.float() for n, b in mask.tensors.items()}, tmp_path / "orig.pt")
    out_path = tmp_path / "imported.safetensors"
    code, out, _ = run_cli(
        capsys, "import-mask", tmp_path / "orig.pt", "--model", bert_dir, "--out", out_path, "--json"
    )
    assert code == 0 and json.loads(out)["source_format"] == "bert-tickets"
    assert load_mask(out_path) == mask


@pytest.mark.parametrize(
    "argv, message",
    [
        (["prune", "--method", "omp", "--sparsity", "1.0"], "sparsity must be in [0, 1)"),
        (
            ["prune", "--method", "omp", "--sparsity", "0.5", "--model", "/nonexistent/model"],
            "does not exist",
        ),
        (["inspect", "missing.safetensors"], "does not exist"),
    ],
)
def test_expected_errors_are_one_line_without_traceback(capsys, bert_dir, tmp_path, argv, message):
    if argv[0] == "prune" and "--model" not in argv:
        argv = argv + ["--model", str(bert_dir)]
    argv = argv + (["--out", str(tmp_path / "x.safetensors")] if argv[0] == "prune" else [])
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_mask_for_another_model_fails_on_import_or_compare(capsys, bert_dir, tmp_path):
    from ticketlab.masks import UnstructuredMask, save_mask

    other = save_mask(
        UnstructuredMask({"w": torch.ones(3, dtype=torch.bool)}), tmp_path / "other.safetensors"
    )
    run_cli(
        capsys,
        "prune",
        "--model",
        bert_dir,
        "--method",
        "omp",
        "--sparsity",
        0.5,
        "--out",
        tmp_path / "a.safetensors",
    )
    code, _, err = run_cli(capsys, "compare", tmp_path / "a.safetensors", other)
    assert code == 2 and "different matrices" in err


def test_unknown_choices_are_rejected_by_the_parser(capsys, bert_dir, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "prune",
                "--model",
                str(bert_dir),
                "--method",
                "omp",
                "--sparsity",
                "0.5",
                "--scope",
                "all",
                "--out",
                str(tmp_path / "x"),
            ]
        )
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_a_mask_that_empties_a_matrix_is_flagged(capsys, bert, tmp_path, caplog):
    """A global ranking empties a matrix of small weights (MiniLM-L6's untrained pooler): inspect
    says so, and a fine-tuning run warns and records it."""
    from ticketlab.experiments.finetune import FinetuneSpec, _load_ticket

    with torch.no_grad():
        bert.pooler.dense.weight.mul_(1e-3)
    model_dir = tmp_path / "small-pooler"
    bert.save_pretrained(model_dir)
    omp = tmp_path / "omp.safetensors"
    args = ["prune", "--model", model_dir, "--method", "omp", "--sparsity", 0.3, "--out", omp]
    assert run_cli(capsys, *args)[0] == 0
    mask = load_mask(omp)
    assert mask.fully_pruned() == ["pooler.dense.weight"]

    code, out, _ = run_cli(capsys, "inspect", omp)
    assert code == 0 and "warning: every weight of pooler.dense.weight is pruned" in out
    assert json.loads(run_cli(capsys, "inspect", omp, "--json")[1])["fully_pruned"] == ["pooler.dense.weight"]

    spec = FinetuneSpec(model=str(model_dir), task="sst2", mask=str(omp))
    with caplog.at_level("WARNING", logger="ticketlab"):
        _, _, facts = _load_ticket(spec, bert)
    assert facts["fully_pruned_matrices"] == ["pooler.dense.weight"]
    assert "prunes every weight of pooler.dense.weight" in caplog.text

    per_matrix = tmp_path / "pm.safetensors"
    args = ["prune", "--model", model_dir, "--method", "omp", "--sparsity", 0.3, "--scheme", "per-matrix"]
    assert run_cli(capsys, *args, "--out", per_matrix)[0] == 0
    assert load_mask(per_matrix).fully_pruned() == []


@pytest.mark.parametrize(
    "verb", [["prune", "--method", "omp", "--sparsity", "0.5"], ["imp", "--task", "rte"]]
)
def test_protocol_presets_scope_and_scheme_and_explicit_flags_win(verb):
    from ticketlab.cli import build_parser
    from ticketlab.cli.common import protocol_of

    parser = build_parser()
    base = [verb[0], "--model", "m", *verb[1:], "--out", "x"]
    assert protocol_of(parser.parse_args(base)) == ("encoder", "global")
    assert protocol_of(parser.parse_args([*base, "--protocol", "liu2022"])) == (
        "encoder+embeddings",
        "per-matrix",
    )
    liu_global = parser.parse_args([*base, "--protocol", "liu2022", "--scheme", "global"])
    assert protocol_of(liu_global) == ("encoder+embeddings", "global")
