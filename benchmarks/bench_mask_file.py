"""Mask file size against n/8 bytes, and save/load time.

For a BERT-base-sized model (``BertModel(BertConfig())``, random weights) and, when
``$TICKETLAB_SHARED`` holds it, MiniLM-L6, under both protocols (chen2020: encoder/global;
liu2022: encoder+embeddings/per-matrix): the file's size against the floor of one bit per weight
(n/8 bytes), split into the packed bits and the rest (safetensors and ticketlab headers), and the
median time of ``save_mask`` and ``load_mask``.

    TICKETLAB_SHARED=../shared PYTHONPATH=$PWD/src python benchmarks/bench_mask_file.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import tempfile
from pathlib import Path

import torch

from bench_common import markdown_table, shared_dir, summary, timed, write_results
from ticketlab.masks import load_mask, save_mask
from ticketlab.pruning import PROTOCOLS, prune

MINILM = "models/all-MiniLM-L6-v2"


def models() -> dict[str, torch.nn.Module]:
    from transformers import AutoModel, BertConfig, BertModel

    torch.manual_seed(0)
    found = {"BERT-base-sized (random)": BertModel(BertConfig()).eval()}
    shared = shared_dir()
    if shared is not None and (shared / MINILM).is_dir():
        found["MiniLM-L6"] = AutoModel.from_pretrained(shared / MINILM).eval()
    else:
        print("MiniLM-L6 skipped: set TICKETLAB_SHARED to the folder holding models/all-MiniLM-L6-v2")
    return found


def header_bytes(path: Path) -> tuple[int, int]:
    """(safetensors header length incl. its 8-byte size field, bytes of the ticketlab JSON)."""
    with open(path, "rb") as handle:
        length = struct.unpack("<Q", handle.read(8))[0]
        header = json.loads(handle.read(length))
    return 8 + length, len(header["__metadata__"]["ticketlab"].encode())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the machine has two cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import logging as hf_logging

    hf_logging.set_verbosity_error()
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for model_name, model in models().items():
            for protocol, setting in PROTOCOLS.items():
                mask = prune(model, "omp", args.sparsity, **setting)
                path = Path(tmp, f"{protocol}.safetensors")
                saves, loads = [], []
                for _ in range(args.repeats):
                    saves.append(timed(lambda mask=mask, path=path: save_mask(mask, path))[0])
                    seconds, loaded = timed(lambda path=path: load_mask(path))
                    loads.append(seconds)
                assert loaded == mask, "round trip changed the mask"
                n = mask.num_weights()
                size = os.path.getsize(path)
                packed = sum(math.ceil(t.numel() / 8) for t in mask.tensors.values())
                safetensors_header, ticketlab_json = header_bytes(path)
                entry = {
                    "model": model_name,
                    "protocol": protocol,
                    **setting,
                    "matrices": len(mask.tensors),
                    "num_weights": n,
                    "n_over_8_bytes": n / 8,
                    "file_bytes": size,
                    "packed_bits_bytes": packed,
                    "header_bytes": safetensors_header,
                    "ticketlab_json_bytes": ticketlab_json,
                    "file_over_n_over_8": size / (n / 8),
                    "bool_tensor_bytes": n,
                    "save": summary(saves),
                    "load": summary(loads),
                }
                results.append(entry)
                rows.append(
                    [
                        model_name,
                        f"{protocol} ({setting['scope']}, {setting['scheme']})",
                        f"{n:,}",
                        f"{n / 8 / 1e6:.3f}",
                        f"{size / 1e6:.3f}",
                        f"{size / (n / 8):.4f}",
                        f"{safetensors_header / 1e3:.1f}",
                        f"{1e3 * entry['save']['median_s']:.0f}",
                        f"{1e3 * entry['load']['median_s']:.0f}",
                    ]
                )
                print(f"{model_name} {protocol}: {size:,} bytes, n/8 = {n / 8:,.0f}", flush=True)
    path = write_results(
        "mask_file",
        {"sparsity": args.sparsity, "repeats": args.repeats, "torch_threads": args.threads, "masks": results},
    )
    print()
    print(
        markdown_table(
            rows,
            [
                "model",
                "protocol",
                "weights n",
                "n/8 MB",
                "file MB",
                "file / (n/8)",
                "header KB",
                "save ms (median)",
                "load ms (median)",
            ],
        )
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
