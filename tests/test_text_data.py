"""Raw text -> token blocks: cleaning, packing, line endings, determinism and the cache."""

import pytest
import torch

from tests.pretrain_fixtures import tiny_tokenizer, wikitext_like
from ticketlab.data import text as text_data
from ticketlab.data.text import (
    blocks_from_lines,
    clean_wikitext_line,
    load_text_blocks,
    pack_blocks,
    read_text_lines,
)
from ticketlab.errors import TicketlabError


def test_pack_blocks_wraps_every_block_and_pads_only_the_last():
    ids, attention = pack_blocks(list(range(10, 23)), max_length=6, cls_id=2, sep_id=3, pad_id=0)
    # 13 tokens, 4 per block -> 4 blocks, the last with one token
    assert ids.tolist() == [
        [2, 10, 11, 12, 13, 3],
        [2, 14, 15, 16, 17, 3],
        [2, 18, 19, 20, 21, 3],
        [2, 22, 3, 0, 0, 0],
    ]
    assert attention.tolist()[-1] == [1, 1, 1, 0, 0, 0] and attention[:3].all()


def test_clean_wikitext_line_glues_joiners_and_maps_unk():
    assert (
        clean_wikitext_line(" 0 @.@ 7 kg , guest @-@ starring <unk> ", "[UNK]")
        == "0.7 kg , guest-starring [UNK]"
    )


def test_crlf_raw_variant_reads_like_lf(tmp_path):
    lf = tmp_path / "lf.txt"
    wikitext_like(lf)
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(lf.read_bytes().replace(b"\n", b"\r\n"))
    assert read_text_lines(lf) == read_text_lines(crlf)
    assert all(line and line == line.strip() for line in read_text_lines(lf))


def test_blocks_deterministic_cached_and_all_text_used(tmp_path, monkeypatch):
    monkeypatch.setenv("TICKETLAB_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "t.txt"
    wikitext_like(path)
    tokenizer = tiny_tokenizer()
    blocks = load_text_blocks(tokenizer, path, max_length=16, progress=False)
    stream = []
    for line in read_text_lines(path):
        stream += tokenizer(clean_wikitext_line(line, "[UNK]"), add_special_tokens=False)["input_ids"]
    # every text token appears once, in order, between the [CLS]/[SEP] of its block
    real = [t for t in blocks.input_ids[blocks.attention_mask.bool()].tolist() if t not in (2, 3)]
    assert real == stream
    assert len(blocks) == -(-len(stream) // 14)
    assert (blocks.input_ids[:, 0] == tokenizer.cls_token_id).all()
    assert tokenizer.unk_token_id in stream  # "<unk>" became the unk token, not "<", "unk", ">"
    limited = blocks_from_lines(tokenizer, ["the cat sat"] * 50, source="x", max_length=8, max_sequences=3)
    assert len(limited) == 3 and limited.attention_mask.all()
    files = list((tmp_path / "cache" / "text-blocks").glob("*.safetensors"))
    assert len(files) == 1  # the limited blocks were not cached (no cache_dir)

    def no_tokenising(*args, **kwargs):
        raise AssertionError("tokenised again despite the cache")

    monkeypatch.setattr(text_data, "tokenize_lines", no_tokenising)
    again = load_text_blocks(tokenizer, path, max_length=16, progress=False)
    assert torch.equal(again.input_ids, blocks.input_ids) and again.digest == blocks.digest


def test_hub_text_is_the_default(monkeypatch):
    calls = {}

    def fake_load_dataset(name, config, split):
        calls.update(name=name, config=config, split=split)

        class Data:
            column_names = ["text"]

            def __getitem__(self, key):
                return ["", " = T = ", " the cat sat on the mat . ", ""]

        return Data()

    import datasets

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    blocks = load_text_blocks(tiny_tokenizer(), None, max_length=8, cache=False, progress=False)
    assert calls == {"name": "Salesforce/wikitext", "config": "wikitext-103-raw-v1", "split": "validation"}
    assert len(blocks) >= 1 and "Salesforce/wikitext" in blocks.source


def test_bad_text_inputs_fail_clearly(tmp_path):
    with pytest.raises(TicketlabError, match="does not exist"):
        read_text_lines(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n\n")
    with pytest.raises(TicketlabError, match="no text"):
        read_text_lines(empty)
    with pytest.raises(TicketlabError, match="at least 3"):
        pack_blocks([1, 2], 2, 2, 3, 0)
