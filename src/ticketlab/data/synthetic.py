"""A generated language with structure, for the offline demo and tests.

Sentences follow a small grammar with two kinds of structure a model can learn by masked-language
modelling and then reuse downstream:

- **agreement**: a verb agrees in number with its subject noun, also across adjectives and a
  relative clause ("the adj ns3 that vp1 the np4 vs2 ...");
- **topic**: each document has one of four topics, which skews the choice of nouns and adjectives.

Downstream tasks are written in GLUE's original TSV layouts so the real fine-tuning pipeline reads
them unchanged: ``agreement`` in CoLA's layout (is the sentence grammatical? Matthews correlation)
and ``topic`` in SST-2's layout (is the topic in the first half? accuracy).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
NUM_TOPICS = 4


@dataclass(frozen=True)
class Lexicon:
    """The words of the language, by part of speech and number."""

    nouns_singular: tuple[str, ...] = tuple(f"ns{i}" for i in range(16))
    nouns_plural: tuple[str, ...] = tuple(f"np{i}" for i in range(16))
    verbs_singular: tuple[str, ...] = tuple(f"vs{i}" for i in range(12))
    verbs_plural: tuple[str, ...] = tuple(f"vp{i}" for i in range(12))
    adjectives: tuple[str, ...] = tuple(f"adj{i}" for i in range(16))
    determiners: tuple[str, ...] = ("the", "a", "some", "every")
    function_words: tuple[str, ...] = ("that", "and", ".")

    def vocabulary(self) -> list[str]:
        return (
            SPECIAL_TOKENS
            + list(self.determiners)
            + list(self.function_words)
            + list(self.nouns_singular + self.nouns_plural)
            + list(self.verbs_singular + self.verbs_plural)
            + list(self.adjectives)
        )


LEXICON = Lexicon()


class SyntheticLanguage:
    """Samples documents and sentences of the language from a seeded generator."""

    def __init__(self, seed: int = 0, lexicon: Lexicon = LEXICON, topic_bias: float = 0.8):
        self.rng = random.Random(seed)
        self.lexicon = lexicon
        self.topic_bias = topic_bias

    def _topical(self, words: tuple[str, ...], topic: int) -> str:
        # Each topic owns a quarter of every word list and draws from it with probability topic_bias.
        share = len(words) // NUM_TOPICS
        if self.rng.random() < self.topic_bias:
            return self.rng.choice(words[topic * share : (topic + 1) * share])
        return self.rng.choice(words)

    def _noun_phrase(self, topic: int) -> tuple[list[str], bool]:
        plural = self.rng.random() < 0.5
        words = [self.rng.choice(self.lexicon.determiners)]
        for _ in range(self.rng.choice((0, 0, 1, 2))):
            words.append(self._topical(self.lexicon.adjectives, topic))
        nouns = self.lexicon.nouns_plural if plural else self.lexicon.nouns_singular
        words.append(self._topical(nouns, topic))
        return words, plural

    def _verb(self, plural: bool) -> str:
        return self.rng.choice(self.lexicon.verbs_plural if plural else self.lexicon.verbs_singular)

    def sentence(self, topic: int, grammatical: bool = True) -> list[str]:
        """One sentence; ungrammatical ones have their main verb's number flipped."""
        subject, plural = self._noun_phrase(topic)
        words = list(subject)
        if self.rng.random() < 0.4:  # a relative clause between subject and verb: long-range agreement
            obj, _ = self._noun_phrase(topic)
            words += ["that", self._verb(plural)] + obj
        words.append(self._verb(plural if grammatical else not plural))
        obj, _ = self._noun_phrase(topic)
        return words + obj + ["."]

    def document(self, num_sentences: int = 4) -> tuple[int, list[str]]:
        topic = self.rng.randrange(NUM_TOPICS)
        words: list[str] = []
        for _ in range(num_sentences):
            words += self.sentence(topic)
        return topic, words


def build_tokenizer(directory: str | Path, lexicon: Lexicon = LEXICON):
    """A word-level BERT tokenizer for the language, saved into ``directory``."""
    from transformers import BertTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # transformers v5 takes the vocabulary itself (a dict), not a vocab_file path.
    vocab = {word: index for index, word in enumerate(lexicon.vocabulary())}
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=128)
    tokenizer.save_pretrained(directory)
    return tokenizer


def pretraining_corpus(num_documents: int, seed: int = 0) -> list[str]:
    """Documents as lines of text, for masked-language-model pre-training."""
    language = SyntheticLanguage(seed)
    return [" ".join(language.document()[1]) for _ in range(num_documents)]


def write_glue_tasks(directory: str | Path, num_train: int, num_dev: int, seed: int = 0) -> Path:
    """Write the two downstream tasks in GLUE layouts: ``CoLA/`` (agreement) and ``SST-2/`` (topic)."""
    directory = Path(directory)
    language = SyntheticLanguage(seed + 1000)  # disjoint from the pre-training stream
    for split, count in (("train", num_train), ("dev", num_dev)):
        cola, sst = [], ["sentence\tlabel"]
        for index in range(count):
            topic = language.rng.randrange(NUM_TOPICS)
            grammatical = index % 2 == 0
            cola.append(f"synth\t{int(grammatical)}\t\t{' '.join(language.sentence(topic, grammatical))}")
            sentence = " ".join(language.sentence(topic) + language.sentence(topic))
            sst.append(f"{sentence}\t{int(topic < NUM_TOPICS // 2)}")
        for task, rows in (("CoLA", cola), ("SST-2", sst)):
            (directory / task).mkdir(parents=True, exist_ok=True)
            (directory / task / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return directory
