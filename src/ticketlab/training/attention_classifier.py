"""The attention-pattern classifier of Kovaleva et al. 2019, as all tickets winning used it.

A small CNN over one-channel maps (SPECS.md section 4): conv 3x3 (16), conv 3x3 (16), max-pool 2;
conv 3x3 (32), conv 3x3 (32), max-pool 2; conv 3x3 (64), conv 3x3 (64); conv 1x1 (16); global
average pool; conv 1x1 (classes); ReLU after every conv but the last. Convolutions are unpadded
(as the original), so an input must be at least :data:`MIN_SIZE` wide. Xavier-normal weights,
zero biases; Adam (lr 1e-3, no weight decay, constant rate), batch 64, up to 200 epochs, a
stratified 20% validation split (scikit-learn), and the weights of the best validation epoch kept
(the earliest of equally good epochs; the original kept the latest).

Maps of different lengths are cropped to the training set's largest size (at least
:data:`MIN_SIZE`) from the top left and zero-padded, centred, to it. The *normalised* variant
divides each map by its largest value first, so every map spans [0, 1] whatever its length (a
row of a long input spreads its attention thinner).

Training runs through the one training loop (:func:`ticketlab.training.loop.train`) with the
:class:`~ticketlab.training.callbacks.KeepBestWeights` callback. A classifier is saved as a folder:
``model.safetensors`` (the weights) and ``classifier.json`` (classes, input size, variant,
settings and the validation report); never a pickle.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ticketlab.data.attention_maps import PATTERN_CLASSES, MapCollection, read_format_file
from ticketlab.errors import TicketlabError
from ticketlab.io import atomic_write
from ticketlab.training.settings import check_settings, setting

MIN_SIZE = 32  # the smallest input the unpadded convolutions and two poolings reduce to >= 1 pixel
WEIGHTS_FILE = "model.safetensors"
INFO_FILE = "classifier.json"
FORMAT_NAME = "ticketlab-attention-classifier"


class PatternCNN(nn.Module):
    """The CNN: ``[batch, 1, size, size]`` maps -> ``[batch, classes]`` logits."""

    def __init__(self, num_classes: int):
        super().__init__()

        def conv(cin: int, cout: int, k: int = 3) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, k), nn.ReLU()]

        self.net = nn.Sequential(
            *conv(1, 16),
            *conv(16, 16),
            nn.MaxPool2d(2),
            *conv(16, 32),
            *conv(32, 32),
            nn.MaxPool2d(2),
            *conv(32, 64),
            *conv(64, 64),
            *conv(64, 16, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(16, num_classes, 1),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_normal_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.net(maps).flatten(1)


def normalise_map(array: np.ndarray) -> np.ndarray:
    """The map divided by its largest value (an all-zero map stays zero)."""
    peak = float(np.max(array)) if array.size else 0.0
    return array / peak if peak > 0 else array


def fit_map(array: np.ndarray, size: int) -> np.ndarray:
    """Crop to ``size x size`` from the top left, then zero-pad centred to ``size x size``."""
    array = np.asarray(array, dtype=np.float32)[:size, :size]
    rows, cols = array.shape
    top, left = (size - rows) // 2, (size - cols) // 2
    out = np.zeros((size, size), dtype=np.float32)
    out[top : top + rows, left : left + cols] = array
    return out


def prepare_maps(maps: Sequence[np.ndarray], size: int, normalised: bool) -> torch.Tensor:
    """``[N, 1, size, size]`` float32: each map (normalised if asked) cropped and padded."""
    prepared = [fit_map(normalise_map(m) if normalised else m, size) for m in maps]
    return torch.from_numpy(np.stack(prepared)[:, None]) if prepared else torch.zeros(0, 1, size, size)


@dataclass
class ClassifierSettings:
    """How the CNN is trained (defaults: the original's)."""

    epochs: int = setting("epochs", 200, note="at most; fewer with --patience")
    batch_size: int = setting("batch_size", 64, note="maps per batch")
    lr: float = setting("lr", 1e-3, note="Adam's, constant")
    validation: float = field(default=0.2, metadata={"help": "stratified validation fraction (0: none)"})
    patience: int | None = field(
        default=None, metadata={"help": "stop after this many epochs without a better validation accuracy"}
    )
    normalised: bool = field(
        default=False, metadata={"help": "the normalised variant: train on maps divided by their maximum"}
    )
    seed: int = setting("seed", 0, note="the split, initialisation and batch order")

    def validate(self) -> None:
        check_settings(self)
        if not 0.0 <= self.validation < 1.0:
            raise TicketlabError(f"validation fraction must be in [0, 1), got {self.validation}")
        if self.patience is not None and self.patience < 1:
            raise TicketlabError(f"patience must be at least 1, got {self.patience}")


@dataclass
class PatternClassifier:
    """A trained CNN with what it needs to classify new maps the way it was trained."""

    model: PatternCNN
    classes: list[str]
    size: int
    normalised: bool
    info: dict[str, Any] = field(default_factory=dict)  # settings, reports, training history

    @torch.no_grad()
    def probabilities(self, maps: Sequence[np.ndarray], batch_size: int = 256) -> np.ndarray:
        """``[N, classes]`` class probabilities."""
        self.model.eval()
        inputs = prepare_maps(maps, self.size, self.normalised)
        chunks = [
            torch.softmax(self.model(inputs[i : i + batch_size]), dim=-1)
            for i in range(0, len(inputs), batch_size)
        ]
        return torch.cat(chunks).numpy() if chunks else np.zeros((0, len(self.classes)), dtype=np.float32)

    def predict(self, maps: Sequence[np.ndarray]) -> list[str]:
        return [self.classes[i] for i in self.probabilities(maps).argmax(axis=1)]

    def save(self, out: str | os.PathLike) -> Path:
        from safetensors.torch import save_file

        out = Path(out)
        if out.exists() and not out.is_dir():
            raise TicketlabError(f"{out} exists and is not a folder")
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in self.model.state_dict().items()}
        atomic_write(out / WEIGHTS_FILE, lambda tmp: save_file(state, tmp))
        info = {
            "format": FORMAT_NAME,
            "format_version": 1,
            "classes": self.classes,
            "size": self.size,
            "normalised": self.normalised,
            **self.info,
        }
        text = json.dumps(info, indent=2) + "\n"
        atomic_write(out / INFO_FILE, lambda tmp: Path(tmp).write_text(text))
        return out

    @classmethod
    def load(cls, folder: str | os.PathLike) -> PatternClassifier:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        info = read_format_file(folder / INFO_FILE, FORMAT_NAME, "an attention-pattern classifier")
        model = PatternCNN(len(info["classes"]))
        try:
            model.load_state_dict(load_file(folder / WEIGHTS_FILE))
        except (OSError, SafetensorError, RuntimeError) as error:
            raise TicketlabError(
                f"{folder / WEIGHTS_FILE}: cannot load the classifier's weights ({error})"
            ) from error
        model.eval()
        rest = {
            k: v
            for k, v in info.items()
            if k not in ("format", "format_version", "classes", "size", "normalised")
        }
        return cls(model, list(info["classes"]), int(info["size"]), bool(info["normalised"]), rest)


def classification_summary(
    true: Sequence[str], predicted: Sequence[str], classes: Sequence[str]
) -> dict[str, Any]:
    """scikit-learn's per-class report (as a dict and as text) and confusion matrix (rows: true)."""
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix

    labels = list(classes)
    return {
        "accuracy": float(accuracy_score(true, predicted)) if len(true) else float("nan"),
        "report": classification_report(true, predicted, labels=labels, output_dict=True, zero_division=0),
        "report_text": classification_report(true, predicted, labels=labels, zero_division=0),
        "confusion_matrix": confusion_matrix(true, predicted, labels=labels).tolist(),
        "confusion_labels": labels,
        "n": len(true),
    }


def train_pattern_classifier(
    collection: MapCollection,
    labels: Sequence[str],
    settings: ClassifierSettings | None = None,
    *,
    classes: Sequence[str] | None = None,
    quiet: bool = False,
) -> PatternClassifier:
    """Train the CNN on labelled maps; the validation report is in ``classifier.info``."""
    from sklearn.model_selection import train_test_split
    from torch.utils.data import DataLoader, TensorDataset

    from ticketlab.training.callbacks import EarlyStopping, KeepBestWeights
    from ticketlab.training.loop import TrainConfig, train

    settings = settings or ClassifierSettings()
    settings.validate()
    if len(collection) != len(labels) or not len(labels):
        raise TicketlabError(
            f"{len(collection)} maps and {len(labels)} labels: need one label per map, and some maps"
        )
    present = sorted(set(labels), key=lambda c: (list(PATTERN_CLASSES) + [c]).index(c))
    classes = list(classes) if classes is not None else present
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise TicketlabError(f"label {unknown[0]!r} is not one of the classes {classes}")
    size = max(MIN_SIZE, max(int(m.shape[0]) for m in collection.maps))
    indices = np.arange(len(labels))
    if settings.validation > 0:
        counts = {c: labels.count(c) for c in present}
        rare = [c for c, n in counts.items() if n < 2]
        if rare:
            raise TicketlabError(
                f"class {rare[0]!r} has {counts[rare[0]]} labelled map: a stratified validation split needs "
                "at least 2 per class (label more, or train with --validation 0)"
            )
        try:
            train_index, val_index = train_test_split(
                indices, test_size=settings.validation, stratify=labels, random_state=settings.seed
            )
        except ValueError as error:
            raise TicketlabError(f"cannot split {len(labels)} maps for validation: {error}") from error
    else:
        train_index, val_index = indices, np.array([], dtype=int)
    class_id = {c: i for i, c in enumerate(classes)}
    targets = torch.tensor([class_id[label] for label in labels])
    inputs = prepare_maps(collection.maps, size, settings.normalised)
    torch.manual_seed(settings.seed)  # the Xavier initialisation
    model = PatternCNN(len(classes))
    loader = DataLoader(
        TensorDataset(inputs[train_index], targets[train_index]),
        batch_size=settings.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(settings.seed),
    )
    evaluate_on = val_index if len(val_index) else train_index

    def evaluate(prepared: nn.Module, accelerator: Any) -> dict[str, float]:
        device = next(prepared.parameters()).device
        logits = prepared(inputs[evaluate_on].to(device)).cpu()
        gold = targets[evaluate_on]
        return {
            "accuracy": float((logits.argmax(-1) == gold).float().mean()),
            "loss": float(nn.functional.cross_entropy(logits, gold)),
        }

    def loss_fn(prepared: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(prepared(x), y)

    config = TrainConfig(
        lr=settings.lr,
        epochs=settings.epochs,
        weight_decay=0.0,
        lr_schedule="constant",
        max_grad_norm=None,
        seed=settings.seed,
        main_metric="accuracy",
        quiet=quiet,
    )
    callbacks = [KeepBestWeights()] + ([EarlyStopping(settings.patience)] if settings.patience else [])
    # Adam with the original's settings (torch's AdamW with weight decay 0 is the same update).
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    result = train(model, loader, evaluate, config, callbacks=callbacks, optimizer=optimizer, loss_fn=loss_fn)
    model = model.cpu().eval()
    classifier = PatternClassifier(model, classes, size, settings.normalised)

    def report(which: np.ndarray) -> dict[str, Any]:
        maps = [collection.maps[i] for i in which]
        return classification_summary([labels[i] for i in which], classifier.predict(maps), classes)

    classifier.info = {
        "settings": asdict(settings),
        "num_maps": len(labels),
        "train_maps": len(train_index),
        "validation_maps": len(val_index),
        "best_epoch": None if result.best is None else result.best.epoch,
        "epochs_run": result.epochs,
        "train": report(train_index),
        "validation": report(val_index) if len(val_index) else None,
        "history": [record.to_dict() for record in result.history],
    }
    return classifier
