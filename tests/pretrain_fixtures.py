"""Fixtures for the pre-training tests: a tiny tokenizer and text it can read, built in the test."""

from __future__ import annotations

import random

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "bird",
    "fish",
    "sat",
    "ran",
    "flew",
    "swam",
    "on",
    "under",
    "over",
    "near",
    "mat",
    "rug",
    "tree",
    "pond",
    "and",
    "then",
    "it",
    "was",
    "big",
    "small",
    "red",
    "blue",
    "green",
    "old",
    "new",
    "happy",
    "sad",
    ",",
    ".",
    "=",
    "@",
]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_tokenizer():
    """A word-level BERT tokenizer over :data:`WORDS` (vocabulary well under the tiny model's 128)."""
    from transformers import BertTokenizer

    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    return BertTokenizer(vocab=vocab)


def wikitext_like(path, paragraphs: int = 30, seed: int = 0) -> str:
    """Write WikiText-style text (headings, blank lines, ``<unk>``, ``@-@`` joiners); return it."""
    rng = random.Random(seed)
    content_words = [w for w in WORDS if w not in {",", ".", "=", "@"}]
    lines = ["", " = A Title = ", ""]
    for i in range(paragraphs):
        if i % 7 == 3:
            lines += [" = = Section = = ", ""]
        sentence = " ".join(rng.choice(content_words) for _ in range(rng.randint(8, 30)))
        lines.append(f" {sentence} <unk> big @-@ red , then . ")
        lines.append("")
    text = "\n".join(lines) + "\n"
    path.write_text(text, encoding="utf-8")
    return text


def tiny_pretraining_setup(tmp_path, paragraphs: int = 10):
    """A tiny BERT with its pre-training heads and tokenizer saved in ``tmp_path/model``, and a
    WikiText-style text file: what a TAMT run needs. Returns ``(model_dir, text_path)``."""
    from transformers import BertForPreTraining

    from ticketlab.models.tiny import tiny_model

    model_dir = tmp_path / "model"
    tiny_model("bert", seed=0, model_class=BertForPreTraining).save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    text = tmp_path / "t.txt"
    wikitext_like(text, paragraphs=paragraphs)
    return model_dir, text
