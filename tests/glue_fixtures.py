"""Generated GLUE-layout data, a tiny tokenizer and a tiny model directory for the fine-tuning tests."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
GOOD = ["good", "great", "fine", "nice"]
BAD = ["bad", "awful", "poor", "sad"]
FILLER = ["the", "a", "cat", "dog", "sat", "ran", "on", "mat", "it", "was", "very", "quite"]
VOCAB = SPECIAL + GOOD + BAD + FILLER + [".", '"']


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run far faster on one thread, above all on a shared, busy machine.

    Autouse in every test module that imports it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_tokenizer():
    from transformers import BertTokenizerFast

    return BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)})


def tiny_model_dir(path: Path, seed: int = 0, **overrides) -> Path:
    """A tiny BERT saved with its tokenizer, loadable by ``--model path``."""
    from ticketlab.models.tiny import tiny_model

    tiny_model("bert", seed=seed, vocab_size=len(VOCAB), **overrides).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def sentence(rng: random.Random, positive: bool) -> str:
    """A generated sentence whose sentiment word decides the label (a separable task)."""
    words = [rng.choice(FILLER) for _ in range(rng.randint(2, 6))]
    words.insert(rng.randint(0, len(words)), rng.choice(GOOD if positive else BAD))
    return " ".join(words) + " ."


def _write(path: Path, lines: list[str], bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")


def write_glue_task(root: Path, task: str, sizes: dict[str, int] | None = None, seed: int = 0) -> Path:
    """Write one task's files in the original GLUE layout under ``root``; returns ``root``.

    Labels follow a keyword in the first sentence, so a small model can learn them.
    """
    rng = random.Random(seed)
    sizes = {"train": 64, "dev": 32, "test": 16, **(sizes or {})}

    def pairs(count: int):
        for i in range(count):
            positive = rng.random() < 0.5
            yield i, positive, sentence(rng, positive), sentence(rng, rng.random() < 0.5)

    folder = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP"}.get(
        task, task.upper()
    )
    out = root / folder
    if task == "cola":
        for split in ("train", "dev"):
            lines = [f"gj04\t{int(p)}\t{'' if p else '*'}\t{a}" for i, p, a, _ in pairs(sizes[split])]
            _write(out / f"{split}.tsv", lines)  # no header
        _write(out / "test.tsv", ["index\tsentence"] + [f"{i}\t{a}" for i, _, a, _ in pairs(sizes["test"])])
    elif task == "sst2":
        for split in ("train", "dev"):
            _write(
                out / f"{split}.tsv",
                ["sentence\tlabel"] + [f"{a}\t{int(p)}" for _, p, a, _ in pairs(sizes[split])],
            )
        _write(out / "test.tsv", ["index\tsentence"] + [f"{i}\t{a}" for i, _, a, _ in pairs(sizes["test"])])
    elif task == "mrpc":
        header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
        for split in ("train", "dev"):
            lines = [header] + [
                f"{int(p)}\t{1000 + i}\t{2000 + i}\t{a}\t{b}" for i, p, a, b in pairs(sizes[split])
            ]
            _write(out / f"{split}.tsv", lines, bom=True)
        lines = ["index\t#1 ID\t#2 ID\t#1 String\t#2 String"]
        lines += [f"{i}\t{1000 + i}\t{2000 + i}\t{a}\t{b}" for i, _, a, b in pairs(sizes["test"])]
        _write(out / "test.tsv", lines, bom=True)
    elif task == "stsb":
        header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2"
        for split in ("train", "dev"):
            lines = [header + "\tscore"]
            for i, p, a, b in pairs(sizes[split]):
                score = (4.0 if p else 1.0) + rng.random()
                lines.append(
                    f"{i}\tmain-captions\tMSRvid\t2012test\t{i:04d}\tnone\tnone\t{a}\t{b}\t{score:.3f}"
                )
            _write(out / f"{split}.tsv", lines)
        lines = [header] + [
            f"{i}\tmain-captions\tMSRvid\t2012test\t{i:04d}\tnone\tnone\t{a}\t{b}"
            for i, _, a, b in pairs(sizes["test"])
        ]
        _write(out / "test.tsv", lines)
    elif task == "qqp":
        for split in ("train", "dev"):
            lines = ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"]
            lines += [f"{100 + i}\t{i}\t{i + 1}\t{a}\t{b}\t{int(p)}" for i, p, a, b in pairs(sizes[split])]
            _write(out / f"{split}.tsv", lines)
        lines = ["id\tquestion1\tquestion2"] + [f"{100 + i}\t{a}\t{b}" for i, _, a, b in pairs(sizes["test"])]
        _write(out / "test.tsv", lines)
    elif task == "mnli":
        base = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2"
        names = ("entailment", "contradiction")

        def rows(count: int, votes: int | None):
            for i, p, a, b in pairs(count):
                label = names[0] if p else names[1]
                cells = [str(i), "1", f"{i}e", "fiction", "( a )", "( b )", "(ROOT a)", "(ROOT b)", a, b]
                if votes is not None:
                    cells += [label] * votes + [label]
                yield "\t".join(cells)

        _write(out / "train.tsv", [base + "\tlabel1\tgold_label", *rows(sizes["train"], 1)])
        dev_header = base + "\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label"
        for split in ("dev_matched", "dev_mismatched"):
            _write(out / f"{split}.tsv", [dev_header, *rows(sizes["dev"], 5)])
        for split in ("test_matched", "test_mismatched"):
            _write(out / f"{split}.tsv", [base, *rows(sizes["test"], None)])
    else:  # rte, qnli, wnli: index, two texts, label
        texts = ("question", "sentence") if task == "qnli" else ("sentence1", "sentence2")
        tokens = ("0", "1") if task == "wnli" else ("not_entailment", "entailment")
        for split in ("train", "dev"):
            lines = [f"index\t{texts[0]}\t{texts[1]}\tlabel"]
            lines += [f"{i}\t{a}\t{b}\t{tokens[int(p)]}" for i, p, a, b in pairs(sizes[split])]
            _write(out / f"{split}.tsv", lines)
        lines = [f"index\t{texts[0]}\t{texts[1]}"] + [f"{i}\t{a}\t{b}" for i, _, a, b in pairs(sizes["test"])]
        _write(out / "test.tsv", lines)
    return root


TINY_RECIPE = {"epochs": 1, "batch_size": 16, "lr": 1e-3, "log_every": 100}


def tiny_grid_spec(tmp_path: Path, methods: list[str], **fields) -> Path:
    """A one-seed grid spec on generated MRPC data and a tiny BERT (one short epoch), as JSON."""
    import json

    spec = {
        "model": str(tiny_model_dir(tmp_path / "model")),
        "tasks": ["mrpc"],
        "data_dir": str(write_glue_task(tmp_path / "glue", "mrpc", {"train": 32, "dev": 16})),
        "seeds": [0],
        "methods": methods,
        "recipe": TINY_RECIPE,
        **fields,
    }
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(spec))
    return path
