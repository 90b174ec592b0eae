import json
import math

import pytest
import torch
from safetensors.torch import save_file

from ticketlab import __version__
from ticketlab.errors import MaskFormatError
from ticketlab.masks import StructuredMask, UnstructuredMask, load_mask, read_header, save_mask
from ticketlab.pruning import prune


def test_round_trip_is_bit_exact_for_odd_shapes(tmp_path):
    generator = torch.Generator().manual_seed(0)
    bits = {
        "a.weight": torch.rand(7, 13, generator=generator) > 0.3,
        "b.weight": torch.rand(5, generator=generator) > 0.5,
    }
    mask = UnstructuredMask(bits)
    path = save_mask(mask, tmp_path / "m.safetensors")
    loaded = load_mask(path)
    assert loaded == mask
    assert list(loaded.tensors) == ["a.weight", "b.weight"]


def test_header_carries_provenance_and_fingerprint(tmp_path, bert):
    mask = prune(bert, "omp", 0.5, scope="encoder", scheme="per-matrix", seed=7, source_model="tiny")
    path = save_mask(mask, tmp_path / "m.safetensors")
    header = read_header(path)
    assert header["format"] == "ticketlab-mask" and header["format_version"] == 1
    assert header["kind"] == "unstructured" and header["ticketlab_version"] == __version__
    prov = header["provenance"]
    assert (prov["method"], prov["scope"], prov["scheme"], prov["seed"], prov["source_model"]) == (
        "omp",
        "encoder",
        "per-matrix",
        7,
        "tiny",
    )
    assert set(prov["fingerprint"]["kept"]) == set(mask.tensors)
    assert header["tensors"]["encoder.layer.1.output.dense.weight"] == {
        "shape": [32, 64],
        "role": "ffn_out",
        "layer": 1,
    }
    assert load_mask(path).provenance.fingerprint == mask.provenance.fingerprint


def test_file_is_bit_packed(tmp_path, bert):
    mask = prune(bert, "omp", 0.5)
    path = save_mask(mask, tmp_path / "m.safetensors")
    payload = sum(math.ceil(t.numel() / 8) for t in mask.tensors.values())
    header_bytes = len(json.dumps(read_header(path))) + 200 * len(mask.tensors)
    assert payload <= path.stat().st_size <= payload + header_bytes


def test_same_seed_gives_the_same_file(tmp_path, bert):
    a = save_mask(prune(bert, "random", 0.5, seed=4), tmp_path / "a.safetensors")
    b = save_mask(prune(bert, "random", 0.5, seed=4), tmp_path / "b.safetensors")
    assert a.read_bytes() == b.read_bytes()


def test_structured_round_trip(tmp_path):
    heads = torch.tensor([[True, False, True], [False, False, True]])
    for ffn in (torch.tensor([True, False]), torch.rand(2, 11) > 0.5):
        mask = StructuredMask(heads, ffn)
        loaded = load_mask(save_mask(mask, tmp_path / "s.safetensors"))
        assert isinstance(loaded, StructuredMask) and loaded == mask


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(MaskFormatError, match="does not exist"):
        load_mask(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file at all")
    with pytest.raises(MaskFormatError, match="not a readable safetensors"):
        load_mask(garbage)
    foreign = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(3)}, foreign)
    with pytest.raises(MaskFormatError, match="not a ticketlab mask"):
        load_mask(foreign)


def test_truncated_file_is_refused(tmp_path, bert):
    path = save_mask(prune(bert, "omp", 0.5), tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MaskFormatError):
        load_mask(path)


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    import ticketlab.masks.io as mask_io

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(mask_io, "save_file", explode)
    with pytest.raises(RuntimeError):
        save_mask(UnstructuredMask({"w": torch.ones(4, dtype=torch.bool)}), tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_written_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    from ticketlab.io import write_json

    path = save_mask(UnstructuredMask({"w": torch.ones(4, dtype=torch.bool)}), tmp_path / "m.safetensors")
    write_json(tmp_path / "r.json", {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    for written in (path, tmp_path / "r.json"):
        assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~umask
