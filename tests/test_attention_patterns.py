"""Attention-pattern classification: generated maps, the labels file, the CNN (a real accuracy
check with a control that must fail it), attention maps of a tiny BERT, and the shares of kept and
pruned heads, end to end through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.glue_fixtures import one_thread  # noqa: F401 (autouse fixture)
from ticketlab.analysis.attention_patterns import (
    head_patterns,
    pattern_changes,
    pattern_grid,
    ticket_pattern_shares,
)
from ticketlab.cli import main
from ticketlab.data.attention_maps import (
    PATTERN_CLASSES,
    AttentionMaps,
    MapCollection,
    format_labels,
    load_map_collection,
    read_labels,
)
from ticketlab.data.synthetic_attention import generate_maps
from ticketlab.errors import TicketlabError
from ticketlab.training.attention_classifier import (
    ClassifierSettings,
    PatternClassifier,
    PatternCNN,
    fit_map,
    train_pattern_classifier,
)


def test_generated_maps_are_softmax_rows_of_every_class_and_varying_lengths():
    maps, labels = generate_maps(6, lengths=(10, 20), seed=3)
    assert sorted(set(labels)) == sorted(PATTERN_CLASSES) and all(
        labels.count(c) == 6 for c in PATTERN_CLASSES
    )
    for array in maps.maps:
        assert array.shape[0] == array.shape[1] and 10 <= array.shape[0] <= 20
        np.testing.assert_allclose(array.sum(axis=1), 1.0, atol=1e-5)
        assert (array >= 0).all()
    assert len({m.shape[0] for m in maps.maps}) > 3
    again, _ = generate_maps(6, lengths=(10, 20), seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(maps.maps, again.maps))
    diagonal = next(m for m, label in zip(maps.maps, labels) if label == "diagonal")
    assert np.mean([np.abs(np.arange(len(diagonal)) - row.argmax()).min() <= 1 for row in diagonal]) > 0.0


def test_labels_file_merges_verticals_and_names_the_bad_line(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text(
        "single_vertical = a, b\ndouble_vertical = c\n# a comment\n\nblock = d\nvertical+diagonal = e,\n"
    )
    assert read_labels(path) == {
        "a": "vertical",
        "b": "vertical",
        "c": "vertical",
        "d": "block",
        "e": "vertical+diagonal",
    }
    assert read_labels_roundtrip(read_labels(path), tmp_path) == read_labels(path)
    for text, message in [
        ("vertical = a\nthis line has no equals\n", "line 2: expected 'label = name1"),
        ("stripes = a\n", "line 1: unknown class 'stripes'"),
        ("vertical = a\nblock = a\n", "line 2: a is already labelled 'vertical'"),
    ]:
        path.write_text(text)
        with pytest.raises(TicketlabError, match=message) as error:
            read_labels(path)
        assert str(path) in str(error.value) and "\n" not in str(error.value)


def read_labels_roundtrip(labels, tmp_path):
    path = tmp_path / "again.txt"
    path.write_text(format_labels(labels))
    return read_labels(path)


def test_npy_folders_load_without_pickles(tmp_path):
    np.save(tmp_path / "0001.npy", np.eye(5, dtype=np.float32))
    np.save(tmp_path / "0002.npy", np.full((7, 7), 1 / 7))
    loaded = load_map_collection(tmp_path)
    assert loaded.names == ["0001", "0002"] and loaded.maps[1].shape == (7, 7)
    np.save(tmp_path / "0003.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(TicketlabError, match="0003.npy: not a plain numeric"):
        load_map_collection(tmp_path)


def test_the_cnn_has_the_originals_shape_and_maps_are_centred():
    model = PatternCNN(5)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0]) for c in convs] == [
        (16, 3), (16, 3), (32, 3), (32, 3), (64, 3), (64, 3), (16, 1), (5, 1)
    ]  # fmt: skip
    assert all(torch.count_nonzero(c.bias) == 0 for c in convs)
    relus = sum(isinstance(m, torch.nn.ReLU) for m in model.modules())
    assert relus == len(convs) - 1 and not isinstance(list(model.net)[-1], torch.nn.ReLU)
    assert model(torch.zeros(3, 1, 32, 32)).shape == (3, 5)
    fitted = fit_map(np.ones((4, 4)), 8)
    assert fitted[2:6, 2:6].sum() == 16 and fitted.sum() == 16
    assert (
        fit_map(np.arange(100).reshape(10, 10), 6)[0, 0] == 0
        and fit_map(np.arange(100).reshape(10, 10), 6)[5, 5] == 55
    )


@pytest.fixture(scope="module")
def generated():
    train = generate_maps(40, lengths=(10, 24), seed=0)
    held_out = generate_maps(20, lengths=(10, 24), seed=1)
    return train, held_out


def accuracy(classifier: PatternClassifier, collection: MapCollection, labels: list[str]) -> float:
    return float(np.mean([p == t for p, t in zip(classifier.predict(collection.maps), labels)]))


@pytest.mark.parametrize("normalised", [False, True])
def test_trained_on_generated_maps_it_classifies_held_out_ones(generated, normalised, tmp_path):
    (maps, labels), (test_maps, test_labels) = generated
    classifier = train_pattern_classifier(
        maps, labels, ClassifierSettings(epochs=30, normalised=normalised), quiet=True
    )
    assert accuracy(classifier, test_maps, test_labels) >= 0.9
    info = classifier.info
    assert info["train_maps"] == 160 and info["validation_maps"] == 40
    assert set(PATTERN_CLASSES) <= set(info["validation"]["report"])
    assert np.array(info["validation"]["confusion_matrix"]).sum() == 40
    # A stratified split: every class has 8 validation maps.
    assert [info["validation"]["report"][c]["support"] for c in PATTERN_CLASSES] == [8] * 5
    best = max(r["metrics"]["accuracy"] for r in info["history"])
    assert info["validation"]["accuracy"] == pytest.approx(best)  # the best epoch's weights were kept
    classifier.save(tmp_path / "clf")
    again = PatternClassifier.load(tmp_path / "clf")
    assert again.normalised == normalised and again.size == 32
    np.testing.assert_allclose(again.probabilities(test_maps.maps), classifier.probabilities(test_maps.maps))


def test_a_classifier_that_cannot_see_the_pattern_fails_the_check(generated):
    (maps, labels), (test_maps, test_labels) = generated
    shuffled = list(np.random.default_rng(0).permutation(labels))
    blind = train_pattern_classifier(maps, shuffled, ClassifierSettings(epochs=15), quiet=True)
    assert accuracy(blind, test_maps, test_labels) < 0.5
    constant = MapCollection(maps.names, [np.full_like(m, 1.0 / len(m)) for m in maps.maps])
    flat = train_pattern_classifier(constant, labels, ClassifierSettings(epochs=5), quiet=True)
    assert (
        accuracy(
            flat,
            MapCollection(test_maps.names, [np.full_like(m, 1.0 / len(m)) for m in test_maps.maps]),
            test_labels,
        )
        < 0.5
    )


def test_a_class_with_one_map_cannot_be_split_for_validation():
    maps, labels = generate_maps(2, seed=0)
    keep = [i for i, label in enumerate(labels) if label != "block"] + [labels.index("block")]
    subset = maps.select([maps.names[i] for i in keep])
    with pytest.raises(TicketlabError, match="class 'block' has 1 labelled map"):
        train_pattern_classifier(subset, [labels[i] for i in keep], ClassifierSettings(epochs=1), quiet=True)


def test_head_classes_shares_of_kept_and_pruned_heads_and_changes():
    predictions = {
        "e0-l0-h0": "vertical", "e1-l0-h0": "vertical", "e2-l0-h0": "block",
        "e0-l0-h1": "diagonal", "e1-l0-h1": "block",  # a tie: the class listed first wins
        "e0-l1-h0": "block", "e1-l1-h0": "block",
        "e0-l1-h1": "heterogeneous", "e1-l1-h1": "heterogeneous",
    }  # fmt: skip
    patterns = head_patterns(predictions)
    assert patterns[0, 0].pattern == "vertical" and patterns[0, 0].agreement == pytest.approx(2 / 3)
    assert patterns[0, 1].pattern == "diagonal"
    grid = pattern_grid(patterns)
    seed0 = np.array([[True, True], [False, False]])
    seed1 = np.array([[True, False], [True, False]])
    rows = {(r.ticket, r.group): r for r in ticket_pattern_shares(grid, {"good": [seed0, seed1]})}
    assert rows["all heads", "all"].mean["block"] == pytest.approx(0.25)
    kept = rows["good", "kept"]
    # seed 0 keeps vertical + diagonal; seed 1 keeps vertical + block: mean 1/2 vertical, 1/4 each other.
    assert kept.mean["vertical"] == pytest.approx(0.5) and kept.std["vertical"] == pytest.approx(0.0)
    assert kept.mean["diagonal"] == pytest.approx(0.25) and kept.std["diagonal"] == pytest.approx(
        np.std([0.5, 0], ddof=1)
    )
    pruned = rows["good", "pruned"]
    assert pruned.mean["heterogeneous"] == pytest.approx(0.5) and pruned.heads == 2
    after = head_patterns({**predictions, "e2-l1-h1": "block", "e3-l1-h1": "block", "e4-l1-h1": "block"})
    changes = pattern_changes(patterns, after)
    assert [(c.layer, c.head, c.before, c.after) for c in changes] == [(1, 1, "heterogeneous", "block")]
    with pytest.raises(TicketlabError, match="does not fit"):
        ticket_pattern_shares(grid, {"bad": [np.ones((3, 2), dtype=bool)]})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from ticketlab.data.synthetic import LEXICON, build_tokenizer, write_glue_tasks
    from ticketlab.masks import StructuredMask, save_mask
    from ticketlab.models.tiny import tiny_model

    root = tmp_path_factory.mktemp("attention")
    tiny_model("bert", seed=0, vocab_size=len(LEXICON.vocabulary()), num_hidden_layers=3).save_pretrained(
        root / "m"
    )
    build_tokenizer(root / "m")
    write_glue_tasks(root / "glue", num_train=8, num_dev=16)
    heads = torch.ones(3, 4, dtype=torch.bool)
    heads[0, :2] = False
    save_mask(StructuredMask(heads, torch.tensor([True, True, True])), root / "mask.safetensors")
    return root


def maps_command(tiny, out, *extra):
    return main(
        ["attention-maps", "--model", str(tiny / "m"), "--task", "sst2", "--data-dir", str(tiny / "glue"),
         "--num-examples", "6", "--out", str(out), "--quiet", *extra]
    )  # fmt: skip


def test_attention_maps_of_every_head_cut_to_length_and_through_a_mask(tiny, tmp_path):
    assert maps_command(tiny, tmp_path / "plain") == 0
    maps = AttentionMaps.load(tmp_path / "plain")
    assert len(maps.maps) == 6 and (maps.num_layers, maps.num_heads) == (3, 4)
    for array, example in zip(maps.maps, maps.examples):
        n = len(example["tokens"])
        assert (
            array.shape == (3, 4, n, n)
            and example["tokens"][0] == "[CLS]"
            and example["tokens"][-1] == "[SEP]"
        )
        np.testing.assert_allclose(array.sum(axis=-1), 1.0, atol=1e-5)
    assert len({m.shape[-1] for m in maps.maps}) > 1  # inputs of different lengths, each its own size
    rows = (tmp_path / "plain" / "index.csv").read_text().splitlines()
    assert len(rows) == 1 + 6 * 12 and rows[1].startswith("e0-l0-h0,0,0,0,")
    # The same seed draws the same inputs; the maps of a batch equal those computed one by one.
    from ticketlab.experiments.attention_maps import extract_attention_maps, sample_inputs

    inputs = sample_inputs(task="sst2", data_dir=tiny / "glue", num_examples=6, seed=0)
    assert [i[0] for i in inputs] == [e["text"] for e in maps.examples]
    single = extract_attention_maps(str(tiny / "m"), inputs[:2], batch_size=1)
    np.testing.assert_allclose(single.maps[1], maps.maps[1], atol=1e-5)
    # Through a mask gating two heads of layer 0: layer 0's maps are unchanged, later ones differ.
    assert maps_command(tiny, tmp_path / "masked", "--mask", str(tiny / "mask.safetensors")) == 0
    masked = AttentionMaps.load(tmp_path / "masked")
    np.testing.assert_allclose(masked.maps[0][0], maps.maps[0][0], atol=1e-6)
    # (a random tiny model attends almost uniformly, so the change is small, but it is there)
    assert np.abs(masked.maps[0][1] - maps.maps[0][1]).max() > 1e-6
    assert json.loads((tmp_path / "masked" / "index.json").read_text())["mask"].endswith("mask.safetensors")


def test_generate_train_classify_analyse_and_label_through_the_cli(tiny, tmp_path, capsys):
    assert maps_command(tiny, tmp_path / "maps") == 0
    gen = tmp_path / "gen"
    assert (
        main(
            [
                "attention-patterns",
                "generate",
                "--per-class",
                "10",
                "--max-length",
                "20",
                "--out",
                str(gen),
                "--quiet",
            ]
        )
        == 0
    )
    assert len(list(gen.glob("*.npy"))) == 50 and "block = " in (gen / "labels.txt").read_text()
    clf = tmp_path / "clf"
    train = ["attention-patterns", "train", "--maps", str(gen), "--labels", str(gen / "labels.txt")]
    assert main([*train, "--out", str(clf), "--epochs", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "validation maps: 10" in out and "precision" in out and "true \\ predicted" in out
    info = json.loads((clf / "classifier.json").read_text())
    assert info["classes"] == list(PATTERN_CLASSES) and (clf / "model.safetensors").exists()
    assert main(["attention-patterns", "classify", "--classifier", str(clf), "--maps", str(tmp_path / "maps"),
                 "--out", str(tmp_path / "cls"), "--quiet"]) == 0  # fmt: skip
    heads = json.loads((tmp_path / "cls" / "heads.json").read_text())
    assert len(heads["heads"]) == 12 and sum(heads["head_shares"].values()) == pytest.approx(1.0)
    assert all(sum(h["votes"].values()) == 6 for h in heads["heads"])
    assert len((tmp_path / "cls" / "predictions.csv").read_text().splitlines()) == 1 + 72
    assert (tmp_path / "cls" / "examples.png").stat().st_size > 1000
    capsys.readouterr()
    mask = str(tiny / "mask.safetensors")
    analyse = [
        "attention-patterns",
        "analyse",
        "--classified",
        str(tmp_path / "cls"),
        "--ticket",
        f"good={mask},{mask}",
    ]
    assert main([*analyse, "--before", str(tmp_path / "cls"), "--out", str(tmp_path / "an"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = {(r["ticket"], r["group"]): r for r in summary["rows"]}
    assert rows["good", "kept"]["heads"] == 10 and rows["good", "pruned"]["heads"] == 2
    assert summary["changed"] == [] and (tmp_path / "an" / "shares.png").exists()
    assert "| good (kept) | 10 | 2 |" in (tmp_path / "an" / "shares.md").read_text()
    # Labelling: a sheet and a template; then the user's assignments become the labels file.
    assert main(["attention-patterns", "label", "--maps", str(tmp_path / "maps"), "--sheet", str(tmp_path / "s.png"),
                 "--limit", "8", "--out", str(tmp_path / "template.txt"), "--quiet"]) == 0  # fmt: skip
    template = (tmp_path / "template.txt").read_text()
    assert template.count("e") and "# unlabelled = " in template and (tmp_path / "s.png").exists()
    (tmp_path / "mine.csv").write_text("name,label\ne0-l0-h0,single_vertical\ne0-l0-h1,block\n")
    assert main(["attention-patterns", "label", "--maps", str(tmp_path / "maps"), "--assignments",
                 str(tmp_path / "mine.csv"), "--out", str(tmp_path / "labels.txt"), "--quiet"]) == 0  # fmt: skip
    assert read_labels(tmp_path / "labels.txt") == {"e0-l0-h0": "vertical", "e0-l0-h1": "block"}
    # Expected errors are one line.
    (tmp_path / "bad.txt").write_text("vertical = nosuchmap\n")
    assert (
        main([*train[:4], "--labels", str(tmp_path / "bad.txt"), "--out", str(tmp_path / "x"), "--quiet"])
        == 2
    )
    assert "not in the maps folder" in capsys.readouterr().err
