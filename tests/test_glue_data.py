"""GLUE task table and TSV/hub reading: each original layout, and clear errors on bad input."""

from __future__ import annotations

import pytest

from tests.conftest import shared_path
from tests.glue_fixtures import write_glue_task
from ticketlab.data.glue import GLUE_TASKS, glue_task, load_glue_examples, read_glue_tsv
from ticketlab.data.tsv import read_tsv
from ticketlab.errors import TicketlabError


@pytest.mark.parametrize(
    "spelling, name",
    [
        ("SST-2", "sst2"),
        ("sst2", "sst2"),
        ("STS-B", "stsb"),
        ("CoLA", "cola"),
        ("MNLI", "mnli"),
        ("rte", "rte"),
    ],
)
def test_task_spellings(spelling, name):
    assert glue_task(spelling).name == name


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(TicketlabError, match="unknown GLUE task 'sst5'.*cola"):
        glue_task("sst5")


def test_table_covers_glue():
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}
    assert glue_task("stsb").is_regression and glue_task("stsb").num_labels == 1
    assert glue_task("mnli").labels == ("entailment", "neutral", "contradiction")  # the hub's order


def test_cola_headerless_keeps_first_row(tmp_path):
    write_glue_task(tmp_path, "cola", {"train": 5})
    lines = (tmp_path / "CoLA" / "train.tsv").read_text().splitlines()
    examples = load_glue_examples("cola", "train", tmp_path)
    assert len(examples) == 5 == len(lines)
    assert examples.text_a[0] == lines[0].split("\t")[3]
    assert examples.labels[0] == int(lines[0].split("\t")[1])
    assert examples.text_b is None and examples.index == list(range(5))
    test = load_glue_examples("cola", "test", tmp_path)  # the test file has a header
    assert test.labels is None and test.index == list(range(16))


def test_mrpc_byte_order_mark(tmp_path):
    write_glue_task(tmp_path, "mrpc", {"dev": 4})
    assert (tmp_path / "MRPC" / "dev.tsv").read_bytes().startswith(b"\xef\xbb\xbf")
    table = read_tsv(tmp_path / "MRPC" / "dev.tsv")
    assert table.columns[0] == "Quality"
    examples = load_glue_examples("MRPC", "dev", tmp_path)
    assert len(examples) == 4 and examples.text_b is not None
    assert set(examples.labels) <= {0, 1}


def test_mnli_matched_and_mismatched(tmp_path):
    write_glue_task(tmp_path, "mnli", {"dev": 6, "test": 3})
    matched = load_glue_examples("mnli", "dev_matched", tmp_path)
    mismatched = load_glue_examples("mnli", "dev_mismatched", tmp_path)
    assert len(matched) == len(mismatched) == 6
    assert set(matched.labels) <= {0, 2}  # entailment / contradiction ids in the hub's order
    assert load_glue_examples("mnli", "test_mismatched", tmp_path).labels is None
    with pytest.raises(TicketlabError, match="no split 'dev'"):
        load_glue_examples("mnli", "dev", tmp_path)


def test_stsb_float_labels(tmp_path):
    write_glue_task(tmp_path, "stsb", {"train": 8})
    examples = load_glue_examples("STS-B", "train", tmp_path)
    lines = (tmp_path / "STS-B" / "train.tsv").read_text().splitlines()[1:]
    assert examples.labels == [float(line.split("\t")[-1]) for line in lines]
    assert all(isinstance(label, float) for label in examples.labels)


def test_qqp_index_column_is_id(tmp_path):
    write_glue_task(tmp_path, "qqp", {"test": 3})
    assert load_glue_examples("qqp", "test", tmp_path).index == [100, 101, 102]


def test_data_dir_may_be_the_task_folder(tmp_path):
    write_glue_task(tmp_path, "rte", {"dev": 3})
    assert len(load_glue_examples("rte", "dev", tmp_path / "RTE")) == 3


def test_malformed_row_names_file_and_line(tmp_path):
    write_glue_task(tmp_path, "rte", {"dev": 4})
    path = tmp_path / "RTE" / "dev.tsv"
    lines = path.read_text().splitlines()
    lines[2] = lines[2] + "\textra"  # line 3 of the file
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TicketlabError, match=r"dev\.tsv, line 3: expected 4 tab-separated fields, found 5"):
        load_glue_examples("rte", "dev", tmp_path)


def test_quotes_are_not_csv_quoting(tmp_path):
    path = tmp_path / "SST-2" / "dev.tsv"
    path.parent.mkdir()
    path.write_text('sentence\tlabel\nhe said "hi\t1\nok " then\t0\n')
    examples = load_glue_examples("sst2", "dev", tmp_path)
    assert examples.text_a == ['he said "hi', 'ok " then'] and examples.labels == [1, 0]


def test_unknown_label_names_file_and_line(tmp_path):
    write_glue_task(tmp_path, "rte", {"dev": 3})
    path = tmp_path / "RTE" / "dev.tsv"
    path.write_text(path.read_text().replace("not_entailment", "maybe", 1))
    with pytest.raises(TicketlabError, match=r"line \d+: unknown rte label 'maybe'"):
        load_glue_examples("rte", "dev", tmp_path)


def test_bad_score_and_empty_split(tmp_path):
    write_glue_task(tmp_path, "stsb", {"dev": 2})
    path = tmp_path / "STS-B" / "dev.tsv"
    header = path.read_text().splitlines()[0]
    path.write_text(header + "\n")
    with pytest.raises(TicketlabError, match="has no examples"):
        load_glue_examples("stsb", "dev", tmp_path)
    path.write_text(header + "\n" + "\t".join(["0"] * 9 + ["high"]) + "\n")
    with pytest.raises(TicketlabError, match="line 2: score 'high' is not a number"):
        read_glue_tsv(glue_task("stsb"), "dev", path)


def test_missing_data_dir_folder_and_file(tmp_path):
    with pytest.raises(TicketlabError, match="does not exist"):
        load_glue_examples("rte", "dev", tmp_path / "nowhere")
    with pytest.raises(TicketlabError, match="has no RTE/ folder"):
        load_glue_examples("rte", "dev", tmp_path)
    (tmp_path / "RTE").mkdir()
    with pytest.raises(TicketlabError, match=r"RTE/dev\.tsv' does not exist"):
        load_glue_examples("rte", "dev", tmp_path)


def test_hub_loading(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name, split):
        calls.append((path, name, split))
        label = [-1, -1] if split.startswith("test") else [0, 2]
        return datasets.Dataset.from_dict(
            {"premise": ["p0", "p1"], "hypothesis": ["h0", "h1"], "label": label, "idx": [7, 8]}
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    dev = load_glue_examples("MNLI", "dev_mismatched")
    assert calls[-1] == ("nyu-mll/glue", "mnli", "validation_mismatched")
    assert dev.text_a == ["p0", "p1"] and dev.text_b == ["h0", "h1"]
    assert dev.labels == [0, 2] and dev.index == [7, 8]
    test = load_glue_examples("mnli", "test_matched")
    assert calls[-1][2] == "test_matched" and test.labels is None


def test_hub_failure_is_one_clear_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(TicketlabError, match=r"could not load GLUE rte validation from the hub.*--data-dir"):
        load_glue_examples("rte", "dev")


@pytest.mark.real_data
@pytest.mark.parametrize(
    "task, split, count",
    [
        ("cola", "train", 8551),
        ("cola", "dev", 1043),
        ("cola", "test", 1063),
        ("mrpc", "train", 3668),
        ("mrpc", "dev", 408),
        ("mrpc", "test", 1725),
        ("rte", "dev", 277),
        ("sst2", "dev", 872),
        ("stsb", "dev", 1500),
        ("stsb", "test", 1379),
        ("qnli", "dev", 5463),
        ("wnli", "train", 635),
    ],
)
def test_real_glue_files(task, split, count):
    root = shared_path("data", "glue")
    examples = load_glue_examples(task, split, root)
    assert len(examples) == count
    info = glue_task(task)
    if examples.labels is not None and info.labels is not None:
        assert set(examples.labels) == set(range(info.num_labels))
    if task == "stsb" and split == "dev":
        assert min(examples.labels) >= 0.0 and max(examples.labels) <= 5.0


def test_crlf_endings_and_blank_trailing_lines(tmp_path):
    path = tmp_path / "RTE" / "dev.tsv"
    path.parent.mkdir()
    path.write_bytes(
        b"index\tsentence1\tsentence2\tlabel\r\n0\ta\tb\tentailment\r\n1\tc\td\tnot_entailment\r\n\r\n"
    )
    examples = load_glue_examples("rte", "dev", tmp_path)
    assert examples.text_b == ["b", "d"] and examples.labels == [0, 1]
