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
    assert mask.num_weights() == math.prod(data["tensors"]["w"]["shape"])


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
