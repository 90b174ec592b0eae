"""N:M magnitude pruning: exact N kept in every group of M consecutive inputs."""

import pytest
import torch

from ticketlab.cli import main
from ticketlab.errors import TicketlabError
from ticketlab.models import EncoderAdapter
from ticketlab.pruning import NMPruning, prune


@pytest.mark.parametrize(("sparsity", "m", "kept"), [(0.5, 4, 2), (0.75, 4, 1), (0.5, 8, 4), (0.25, 4, 3)])
def test_every_group_keeps_exactly_n_of_its_largest(bert, sparsity, m, kept):
    mask = prune(bert, "nm", sparsity, m=m)
    assert mask.provenance.method_params["n"] == kept and mask.provenance.method_params["m"] == m
    assert mask.num_pruned() == mask.num_weights() * (m - kept) // m
    adapter = EncoderAdapter(bert)
    for name, bits in mask.tensors.items():
        groups = bits.reshape(-1, m)
        assert torch.all(groups.sum(dim=1) == kept), name
        magnitudes = adapter.parameter(name).detach().abs().reshape(-1, m)
        # Every kept weight is at least as large as every pruned one of its group.
        smallest_kept = magnitudes.masked_fill(~groups, float("inf")).min(dim=1).values
        largest_pruned = magnitudes.masked_fill(groups, -1.0).max(dim=1).values
        assert torch.all(smallest_kept >= largest_pruned), name


def test_the_scheme_is_moot_and_the_groups_run_along_the_inputs(bert):
    global_mask = prune(bert, "nm", 0.5, scheme="global")
    assert global_mask == prune(bert, "nm", 0.5, scheme="per-matrix")
    weight = torch.tensor([[0.1, -0.9, 0.5, 0.2, 3.0, 2.0, -1.0, 0.0]])
    keep = NMPruning().select({"w": weight}, 0.5, "global", 0)["w"]
    assert keep.tolist() == [[False, True, True, False, True, True, False, False]]


def test_ties_in_a_group_prune_the_first_ones_first():
    weight = torch.tensor([[1.0, -1.0, 1.0, 1.0, 0.5, 0.5, 2.0, 0.5]])
    keep = NMPruning().select({"w": weight}, 0.5, "global", 0)["w"]
    assert keep.tolist() == [[False, False, True, True, False, False, True, True]]


def test_impossible_settings_are_refused_in_one_line(bert):
    with pytest.raises(TicketlabError, match=r"whole number of weights per group of 4.*0, 0.25, 0.5, 0.75"):
        prune(bert, "nm", 0.7)
    with pytest.raises(TicketlabError, match=r"'w'.*multiple of the group size 4"):
        NMPruning().select({"w": torch.randn(4, 6)}, 0.5, "global", 0)
    with pytest.raises(TicketlabError, match="NaN"):
        NMPruning().select({"w": torch.tensor([[float("nan"), 1.0, 2.0, 3.0]])}, 0.5, "global", 0)


def test_cli_prunes_n_m(tmp_path, bert_dir, capsys):
    out = tmp_path / "nm.safetensors"

    def prune_cli(method: str, sparsity: str, *extra: str) -> int:
        flags = ["--model", str(bert_dir), "--method", method, "--sparsity", sparsity]
        return main(["prune", *flags, *extra, "--out", str(out)])

    assert prune_cli("nm", "0.75") == 0
    assert main(["inspect", str(out), "--json"]) == 0
    assert '"m": 4' in capsys.readouterr().out
    assert prune_cli("omp", "0.5", "--group-size", "4") == 2
    assert "--group-size is for --method nm" in capsys.readouterr().err
