"""Helpers for the SQuAD tests: a tiny word-level BERT tokenizer and generated SQuAD documents."""

from __future__ import annotations

import random
from pathlib import Path

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Plain words for contexts and questions; "kappa" and "lambda" only ever appear as the first and
# last word of an answer, so a fake model can find answers by token id.
WORDS = [
    *[
        "alpha",
        "beta",
        "gamma",
        "delta",
        "epsilon",
        "zeta",
        "eta",
        "theta",
        "iota",
        "mu",
        "nu",
        "xi",
        "omicron",
        "pi",
        "rho",
        "sigma",
        "tau",
        "upsilon",
    ],
    *[
        "phi",
        "chi",
        "psi",
        "omega",
        "red",
        "green",
        "blue",
        "river",
        "mountain",
        "city",
        "king",
        "queen",
        "year",
        "war",
        "music",
    ],
    *["who", "what", "when", "where", "which", "did", "was", "is", "of", "in", "on", "to", "and"],
]
ANSWER_FIRST, ANSWER_LAST = "kappa", "lambda"
PUNCTUATION = list(".,?!'-")


def write_vocab(directory: Path) -> Path:
    """A vocab.txt where every word above is one token (ids stay below tiny_config's 128)."""
    vocab = SPECIAL_TOKENS + WORDS + [ANSWER_FIRST, ANSWER_LAST] + PUNCTUATION
    path = Path(directory) / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return path


def tiny_tokenizer(directory: Path):
    """A fast word-level BertTokenizer over :data:`WORDS` (lower-cases, splits punctuation)."""
    from transformers import BertTokenizer

    write_vocab(directory)
    tokenizer = BertTokenizer.from_pretrained(str(directory), do_lower_case=True)
    assert tokenizer.is_fast
    return tokenizer


def make_document(
    num_articles: int = 3,
    paragraphs_per_article: int = 2,
    questions_per_paragraph: int = 3,
    context_words: int = 60,
    seed: int = 0,
) -> dict:
    """An official-layout SQuAD v1.1 document; each answer is a "kappa ... lambda" span of the context."""
    rng = random.Random(seed)
    articles = []
    for a in range(num_articles):
        paragraphs = []
        for p in range(paragraphs_per_article):
            qas = []
            words = [rng.choice(WORDS) for _ in range(context_words)]
            for q in range(questions_per_paragraph):
                # answers of 2 to 4 words, placed anywhere (also across window boundaries)
                length = rng.randint(2, 4)
                position = rng.randrange(0, context_words - length)
                middle = [rng.choice(WORDS) for _ in range(length - 2)]
                qas.append((position, [ANSWER_FIRST, *middle, ANSWER_LAST], f"q{a}-{p}-{q}"))
            # one answer per paragraph version: rebuild the context for each question separately
            for position, answer_words, qid in qas:
                context_list = list(words)
                context_list[position : position + len(answer_words)] = answer_words
                context = " ".join(context_list)
                answer = " ".join(answer_words)
                start = context.index(answer)
                question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 6))) + "?"
                paragraphs.append(
                    {
                        "context": context,
                        "qas": [
                            {
                                "id": qid,
                                "question": question,
                                "answers": [{"text": answer, "answer_start": start}],
                            }
                        ],
                    }
                )
        articles.append({"title": f"Article_{a}", "paragraphs": paragraphs})
    return {"version": "1.1", "data": articles}
