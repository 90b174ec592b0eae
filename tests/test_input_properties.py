"""Property-based checks of the parsers of what users hand the tool: any input gives either a
valid object or a one-line ``TicketlabError``, never another exception.

Examples are limited so that the module runs in seconds.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from ticketlab.errors import TicketlabError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_scalars = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

VALID_HEADER = {
    "format": "ticketlab-mask",
    "format_version": 1,
    "kind": "unstructured",
    "tensors": {"w": {"shape": [3, 4], "role": "query", "layer": 0}},
    "sparsity": 0.5,
    "provenance": {"method": "omp", "seed": 0, "fingerprint": {"algorithm": "a", "kept": {"w": "x"}}},
    "ticketlab_version": "0.1.0",
}


def _mutations(base):
    """The valid header with one field (at any depth) replaced by an arbitrary JSON value, or removed."""
    paths = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                paths.append((*path, key))
                walk(value, (*path, key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                paths.append((*path, i))
                walk(value, (*path, i))

    walk(base, ())

    def apply(path, value, remove):
        header = json.loads(json.dumps(base))
        node = header
        for key in path[:-1]:
            node = node[key]
        if remove and isinstance(node, dict):
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return header

    return st.builds(apply, st.sampled_from(paths), json_values, st.booleans())


@FAST
@given(st.one_of(json_values, _mutations(VALID_HEADER)))
def test_mask_header_parser_accepts_or_refuses_in_one_line(data):
    from ticketlab.masks.header import MaskHeader, check_header

    try:
        header = check_header(data, "m.safetensors")
    except TicketlabError as error:
        assert "\n" not in str(error)
        return
    assert isinstance(header, MaskHeader)
    assert all(s >= 0 for entry in header.tensors.values() for s in entry.shape)


@FAST
@given(_mutations(VALID_HEADER))
def test_loading_a_mask_file_with_any_header_gives_a_mask_or_one_line(tmp_path_factory, data):
    from ticketlab.masks import load_mask

    path = tmp_path_factory.mktemp("h") / "m.safetensors"
    save_file(
        {"w": torch.full((2,), 255, dtype=torch.uint8)}, str(path), metadata={"ticketlab": json.dumps(data)}
    )
    try:
        mask = load_mask(path)
    except TicketlabError as error:
        assert "\n" not in str(error)
        return
    shapes = [entry["shape"] for entry in data["tensors"].values()]
    assert mask.num_weights() == sum(math.prod(shape) for shape in shapes)


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])


VALID_GRID = {
    "model": "m",
    "tasks": ["sst2", "stsb"],
    "methods": ["full", "omp", "random", "imp"],
    "sparsities": [0.5],
    "seeds": [0, 1],
    "imp_levels": [0.5],
    "recipe": {"epochs": 1, "lr": 1e-4},
    "task_recipes": {"stsb": {"max_train_samples": 100}},
    "transfer_from": ["sst2"],
}


@FAST
@given(st.one_of(_mutations(VALID_GRID), json_values))
def test_grid_spec_parser_accepts_or_refuses_in_one_line(tmp_path_factory, data):
    from ticketlab.experiments.grid import GridSpec

    path = tmp_path_factory.mktemp("g") / "grid.json"
    path.write_text(json.dumps(data))
    try:
        spec = GridSpec.from_file(path)
    except TicketlabError as error:
        assert "\n" not in str(error) and str(path) in str(error)
        return
    assert all(isinstance(s, int) and s >= 0 for s in spec.seeds)
    assert len(set(spec.seeds)) == len(spec.seeds) and len(set(spec.sparsities)) == len(spec.sparsities)
    assert all(isinstance(t, str) for t in spec.tasks) and isinstance(spec.recipe, dict)


@FAST
@given(st.text(alphabet=st.sampled_from("abc: -[]{},'\"\n0.5#&*!|>?"), max_size=60))
def test_any_yaml_text_gives_a_grid_spec_or_one_line(tmp_path_factory, text):
    from ticketlab.experiments.grid import GridSpec

    path = tmp_path_factory.mktemp("g") / "grid.yaml"
    path.write_text("model: m\ntasks: [sst2]\n" + text)
    try:
        GridSpec.from_file(path)
    except TicketlabError as error:
        assert "\n" not in str(error).strip() or "cannot parse" in str(error)


@FAST
@given(
    st.binary(max_size=200)
    | st.lists(
        st.tuples(
            st.text(alphabet=st.sampled_from("ab \"'\t\r"), max_size=5),
            st.text(alphabet=st.sampled_from("ab \"'"), max_size=5),
            st.sampled_from(["0", "1", "4.5", "5", "nan", "inf", "-inf", "37.5", "-1", "abc", "", "1e1"]),
        ).map("\t".join),
        max_size=6,
    ).map(lambda lines: "\n".join(["HEADER", *lines]).encode()),
    st.sampled_from(["stsb", "sst2", "cola"]),
)
def test_tsv_reader_gives_examples_or_one_line(tmp_path_factory, content, task):
    from ticketlab.data.glue import glue_task, read_glue_tsv

    path = tmp_path_factory.mktemp("t") / "dev.tsv"
    header = {"stsb": "sentence1\tsentence2\tscore", "sst2": "sentence\tother\tlabel", "cola": "a\tb\tc"}
    path.write_bytes(content.replace(b"HEADER", header[task].encode(), 1))
    try:
        examples = read_glue_tsv(glue_task(task), "dev", path)
    except TicketlabError as error:
        assert "\n" not in str(error)
        return
    assert len(examples.text_a) == len(examples.labels) > 0
    if task == "stsb":
        assert all(math.isfinite(s) and 0 <= s <= 5 for s in examples.labels)
