"""The tokenisation cache: keyed by content, so a second load does not tokenise again."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.glue_fixtures import tiny_tokenizer, write_glue_task
from ticketlab.data.cache import cache_root, tokenizer_digest
from ticketlab.data.glue_features import tokenized_glue_split
from ticketlab.errors import TicketlabError


class CountingTokenizer:
    """Wraps a tokenizer and counts how many texts it was asked to encode."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.texts = 0

    def __call__(self, text, *args, **kwargs):
        self.texts += len(text)
        return self.tokenizer(text, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


@pytest.fixture
def glue_dir(tmp_path):
    return write_glue_task(tmp_path / "glue", "rte", {"train": 20, "dev": 10})


def test_second_load_does_not_tokenise(glue_dir, tmp_path):
    tokenizer = CountingTokenizer(tiny_tokenizer())
    cache = tmp_path / "cache"
    first = tokenized_glue_split("rte", "train", tokenizer, data_dir=glue_dir, cache_dir=cache, quiet=True)
    assert tokenizer.texts == 20
    second = tokenized_glue_split("rte", "train", tokenizer, data_dir=glue_dir, cache_dir=cache, quiet=True)
    assert tokenizer.texts == 20  # served from the cache
    assert second["input_ids"] == first["input_ids"] and second["labels"] == first["labels"]
    assert set(first.column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels", "index"}
    # The cached ids are what the tokenizer gives.
    direct = tiny_tokenizer()(
        first_pair(glue_dir)[0], first_pair(glue_dir)[1], truncation=True, max_length=128
    )
    assert first["input_ids"][0] == direct["input_ids"]


def first_pair(glue_dir: Path) -> tuple[str, str]:
    fields = (glue_dir / "RTE" / "train.tsv").read_text().splitlines()[1].split("\t")
    return fields[1], fields[2]


def test_cache_key_follows_content_length_and_samples(glue_dir, tmp_path):
    tokenizer = CountingTokenizer(tiny_tokenizer())
    cache = tmp_path / "cache"

    def load(**kwargs):
        return tokenized_glue_split(
            "rte", "dev", tokenizer, data_dir=glue_dir, cache_dir=cache, quiet=True, **kwargs
        )

    load()
    assert tokenizer.texts == 10
    short = load(max_length=8)  # another length: tokenised again, truncated
    assert tokenizer.texts == 20 and max(len(ids) for ids in short["input_ids"]) <= 8
    assert len(load(max_samples=4)) == 4 and tokenizer.texts == 24
    path = glue_dir / "RTE" / "dev.tsv"
    path.write_text(path.read_text().replace("cat", "dog"))  # new content: a miss
    load()
    assert tokenizer.texts == 34
    load()
    assert tokenizer.texts == 34


def test_tokenizer_digest_sees_the_vocabulary():
    from transformers import BertTokenizerFast

    from tests.glue_fixtures import VOCAB

    other = BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB + ["extra"])})
    assert tokenizer_digest(tiny_tokenizer()) == tokenizer_digest(tiny_tokenizer())
    assert tokenizer_digest(tiny_tokenizer()) != tokenizer_digest(other)


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.delenv("TICKETLAB_CACHE", raising=False)
    assert cache_root() == Path.home() / ".cache" / "ticketlab"
    monkeypatch.setenv("TICKETLAB_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "flag") == tmp_path / "flag"


def test_no_half_written_entries_and_bad_sample_count(glue_dir, tmp_path):
    cache = tmp_path / "cache"
    tokenized_glue_split("rte", "dev", tiny_tokenizer(), data_dir=glue_dir, cache_dir=cache, quiet=True)
    entries = list((cache / "datasets").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".")
    with pytest.raises(TicketlabError, match="at least 1"):
        tokenized_glue_split(
            "rte", "dev", tiny_tokenizer(), data_dir=glue_dir, cache_dir=cache, max_samples=0
        )


def test_unwritable_cache_is_a_clear_error(glue_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(TicketlabError, match="cannot write the tokenisation cache"):
        tokenized_glue_split("rte", "dev", tiny_tokenizer(), data_dir=glue_dir, cache_dir=blocker, quiet=True)


def test_random_training_subset_is_a_fixed_sorted_draw_and_cached_apart(glue_dir, tmp_path):
    from ticketlab.data.subset import subset_indices

    cache = tmp_path / "cache"
    tokenizer = tiny_tokenizer()

    def load(subset: str, count: int | None = 8):
        return tokenized_glue_split(
            "rte",
            "train",
            tokenizer,
            data_dir=glue_dir,
            cache_dir=cache,
            quiet=True,
            max_samples=count,
            subset=subset,
        )

    first, random = load("first"), load("random")
    assert first["index"] == list(range(8))
    assert len(random["index"]) == 8 and len(set(random["index"])) == 8
    assert random["index"] == sorted(random["index"]) and random["index"] != first["index"]
    assert all(0 <= i < 20 for i in random["index"])
    assert load("random")["index"] == random["index"]  # the same draw every time (not the run's seed)
    full = load("first", None)
    row = {i: n for n, i in enumerate(full["index"])}
    assert [full["input_ids"][row[i]] for i in random["index"]] == random["input_ids"]  # ids follow rows
    assert subset_indices(20, 25, "random") == list(range(20))  # N above the size: everything
    with pytest.raises(TicketlabError, match="train subset"):
        load("every-other")


def test_finetune_spec_refuses_an_unknown_train_subset(tmp_path):
    from ticketlab.experiments.finetune import FinetuneSpec

    with pytest.raises(TicketlabError, match="train subset"):
        FinetuneSpec(model="m", task="rte", train_subset="best").validate()
