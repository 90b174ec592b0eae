"""Overlap between masks, and what chance alone would give."""

from __future__ import annotations

from dataclasses import dataclass

from ticketlab.masks.unstructured import UnstructuredMask


def expected_random_jaccard(a: UnstructuredMask, b: UnstructuredMask) -> float:
    """Jaccard of kept weights expected between two uniformly random masks with a's and b's per-matrix counts.

    For a matrix of n weights keeping k_a and k_b at random, E[|A and B|] = k_a k_b / n. The result is
    E[intersection] / E[union] summed over matrices (the ratio of expectations; with millions of
    weights it equals the expected ratio to many digits).
    """
    a._check_same_matrices(b)
    inter = union = 0.0
    for name, bits_a in a.tensors.items():
        n = bits_a.numel()
        k_a, k_b = int(bits_a.sum()), int(b.tensors[name].sum())
        shared = k_a * k_b / n if n else 0.0
        inter += shared
        union += k_a + k_b - shared
    return inter / union if union else 1.0


@dataclass
class PairOverlap:
    """Overlap of two masks' kept weights."""

    a: str
    b: str
    jaccard: float
    jaccard_random: float
    shared_kept: int

    @property
    def ratio_to_random(self) -> float:
        return self.jaccard / self.jaccard_random if self.jaccard_random else float("nan")

    def to_dict(self) -> dict:
        return {
            "a": self.a,
            "b": self.b,
            "jaccard": self.jaccard,
            "jaccard_random": self.jaccard_random,
            "ratio_to_random": self.ratio_to_random,
            "shared_kept": self.shared_kept,
        }


def pairwise_overlap(masks: dict[str, UnstructuredMask]) -> list[PairOverlap]:
    """Every unordered pair of the named masks."""
    names = list(masks)
    pairs = []
    for i, name_a in enumerate(names):
        for name_b in names[i + 1 :]:
            a, b = masks[name_a], masks[name_b]
            pairs.append(
                PairOverlap(
                    name_a, name_b, a.jaccard(b), expected_random_jaccard(a, b), a.intersection_size(b)
                )
            )
    return pairs
