"""Reading SQuAD v1.1 files and rows, clear errors for malformed input, and the split by article."""

from __future__ import annotations

import copy
import json

import pytest

from tests.squad_fixtures import make_document
from ticketlab.data import squad as squad_data
from ticketlab.data.squad import (
    SquadFormatError,
    load_squad,
    read_squad_json,
    split_by_article,
)
from ticketlab.errors import TicketlabError


def _write(path, document):
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def test_reads_official_layout(tmp_path):
    document = make_document(num_articles=2, paragraphs_per_article=2, questions_per_paragraph=2)
    first_paragraph = document["data"][0]["paragraphs"][0]
    first_paragraph["qas"][0]["answers"].append(dict(first_paragraph["qas"][0]["answers"][0]))
    examples = read_squad_json(_write(tmp_path / "dev.json", document))
    assert len(examples) == 2 * 2 * 2
    first = examples[0]
    assert first.id == "q0-0-0" and first.title == "Article_0"
    assert first.context == first_paragraph["context"]
    assert len(first.answer_texts) == 2 and len(first.answer_starts) == 2
    for example in examples:
        for text, start in zip(example.answer_texts, example.answer_starts):
            assert example.context[start : start + len(text)] == text


def test_load_squad_from_folder_and_file(tmp_path):
    document = make_document()
    _write(tmp_path / "dev-v1.1.json", document)
    assert len(load_squad(tmp_path, "dev")) == len(load_squad(tmp_path / "dev-v1.1.json", "validation"))
    with pytest.raises(TicketlabError, match="train-v1.1.json does not exist"):
        load_squad(tmp_path, "train")
    with pytest.raises(TicketlabError, match="unknown SQuAD split"):
        load_squad(tmp_path, "test")
    with pytest.raises(TicketlabError, match="does not exist"):
        load_squad(tmp_path / "missing.json")


def _break(document, how):
    broken = copy.deepcopy(document)
    qa = broken["data"][1]["paragraphs"][0]["qas"][0]
    how(broken, qa)
    return broken


@pytest.mark.parametrize(
    ("how", "message"),
    [
        (
            lambda d, qa: qa["answers"][0].__setitem__("answer_start", qa["answers"][0]["answer_start"] + 1),
            r"data\[1\]\.paragraphs\[0\]\.qas\[0\] \(id q1-0-0\): answer_start \d+ does not match the answer text",
        ),
        (lambda d, qa: qa.pop("question"), r"qas\[0\] \(id q1-0-0\): missing key 'question'"),
        (lambda d, qa: qa["answers"][0].pop("text"), r"answers\[0\]: missing key 'text'"),
        (
            lambda d, qa: qa["answers"][0].__setitem__("answer_start", "12"),
            "'answer_start' should be int, found str",
        ),
        (lambda d, qa: qa.__setitem__("answers", []), "no answers"),
        (lambda d, qa: qa["answers"][0].__setitem__("answer_start", 10**6), "does not match"),
        (lambda d, qa: d["data"][1].pop("title"), r"data\[1\]: missing key 'title'"),
        (lambda d, qa: d.pop("data"), "top level: missing key 'data'"),
        (lambda d, qa: qa.__setitem__("id", d["data"][0]["paragraphs"][0]["qas"][0]["id"]), "more than once"),
        (
            lambda d, qa: d["data"][1]["paragraphs"].__setitem__(0, ["not", "an", "object"]),
            "expected an object",
        ),
    ],
)
def test_malformed_file_names_file_and_problem(tmp_path, how, message):
    path = _write(tmp_path / "broken.json", _break(make_document(), how))
    with pytest.raises(SquadFormatError, match=message) as error:
        read_squad_json(path)
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)


def test_invalid_json_and_empty_data(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": [', encoding="utf-8")
    with pytest.raises(SquadFormatError, match="bad.json: not valid JSON"):
        read_squad_json(bad)
    with pytest.raises(SquadFormatError, match="no questions"):
        read_squad_json(_write(tmp_path / "empty.json", {"data": []}))


def _hub_rows(document):
    for article in document["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                yield {
                    "id": qa["id"],
                    "title": article["title"],
                    "context": paragraph["context"],
                    "question": qa["question"],
                    "answers": {
                        "text": [answer["text"] for answer in qa["answers"]],
                        "answer_start": [answer["answer_start"] for answer in qa["answers"]],
                    },
                }


def test_hub_is_the_default_and_matches_the_file_reader(tmp_path, monkeypatch):
    import datasets

    document = make_document()
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return list(_hub_rows(document))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    from_hub = load_squad(None, "dev")
    assert calls == [("rajpurkar/squad", "validation")]
    assert from_hub == read_squad_json(_write(tmp_path / "dev.json", document))


def test_hub_failure_and_bad_rows_are_clear(monkeypatch):
    import datasets

    def offline(name, split):
        raise ConnectionError("no network\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(
        TicketlabError, match="could not load rajpurkar/squad .*: no network; pass a local folder"
    ):
        squad_data.load_squad_hub("train")
    rows = list(_hub_rows(make_document()))
    rows[2]["answers"]["answer_start"][0] += 3
    with pytest.raises(SquadFormatError, match=r"row 2 \(id .*\): answer_start"):
        squad_data.examples_from_rows(rows)


def test_split_by_article_is_disjoint_deterministic_and_complete(tmp_path):
    examples = read_squad_json(_write(tmp_path / "d.json", make_document(num_articles=10)))
    train, evaluation = split_by_article(examples, eval_fraction=0.3, seed=1)
    train_titles = {example.title for example in train}
    eval_titles = {example.title for example in evaluation}
    assert not train_titles & eval_titles
    assert len(eval_titles) == 3 and len(train_titles) == 7
    assert sorted(e.id for e in train + evaluation) == sorted(e.id for e in examples)
    # order preserved within each side; same split for a shuffled input and the same seed
    assert [e.id for e in train] == [e.id for e in examples if e.title in train_titles]
    again = split_by_article(list(reversed(examples)), eval_fraction=0.3, seed=1)
    assert {e.title for e in again[1]} == eval_titles
    others = [{e.title for e in split_by_article(examples, 0.3, seed)[1]} for seed in range(2, 8)]
    assert any(titles != eval_titles for titles in others)


def test_split_by_article_rejects_impossible_requests(tmp_path):
    examples = read_squad_json(_write(tmp_path / "d.json", make_document(num_articles=2)))
    assert len({e.title for e in split_by_article(examples, 0.01)[1]}) == 1  # at least one article each side
    assert len({e.title for e in split_by_article(examples, 0.99)[0]}) == 1
    for fraction in (0.0, 1.0, -0.5):
        with pytest.raises(TicketlabError, match="eval_fraction"):
            split_by_article(examples, fraction)
    one_article = [e for e in examples if e.title == "Article_0"]
    with pytest.raises(TicketlabError, match="1 article"):
        split_by_article(one_article, 0.5)
