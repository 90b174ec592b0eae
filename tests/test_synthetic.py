from ticketlab.data.synthetic import (
    LEXICON,
    SyntheticLanguage,
    build_tokenizer,
    pretraining_corpus,
    write_glue_tasks,
)


def _subject_is_plural(words):
    return next(w for w in words if w.startswith(("ns", "np"))).startswith("np")


def _main_verb_is_plural(words):
    return [w for w in words if w.startswith(("vs", "vp"))][-1].startswith("vp")


def test_grammatical_sentences_agree_and_corrupted_ones_do_not():
    language = SyntheticLanguage(seed=3)
    for _ in range(200):
        good = language.sentence(topic=1)
        assert _subject_is_plural(good) == _main_verb_is_plural(good)
        bad = language.sentence(topic=1, grammatical=False)
        assert _subject_is_plural(bad) != _main_verb_is_plural(bad)


def test_topics_skew_the_nouns():
    language = SyntheticLanguage(seed=0)
    words = [w for _ in range(300) for w in language.sentence(topic=2) if w.startswith("ns")]
    own = {f"ns{i}" for i in range(8, 12)}
    assert sum(w in own for w in words) / len(words) > 0.7


def test_corpus_is_seeded_and_tokenizes_without_unknowns(tmp_path):
    assert pretraining_corpus(5, seed=1) == pretraining_corpus(5, seed=1)
    assert pretraining_corpus(5, seed=1) != pretraining_corpus(5, seed=2)
    tokenizer = build_tokenizer(tmp_path)
    ids = tokenizer(pretraining_corpus(20))["input_ids"]
    assert tokenizer.unk_token_id not in {i for row in ids for i in row}
    assert len(tokenizer) == len(LEXICON.vocabulary())


def test_tasks_are_written_in_glue_layouts(tmp_path):
    write_glue_tasks(tmp_path, num_train=10, num_dev=4)
    cola = (tmp_path / "CoLA" / "train.tsv").read_text().splitlines()
    assert len(cola) == 10 and all(len(row.split("\t")) == 4 for row in cola)
    sst = (tmp_path / "SST-2" / "dev.tsv").read_text().splitlines()
    assert sst[0] == "sentence\tlabel" and len(sst) == 5
    assert {row.split("\t")[1] for row in sst[1:]} <= {"0", "1"}
