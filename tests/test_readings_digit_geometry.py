"""Digit-geometry readings (language_entropy/digit_geometry.py) on hand-built embeddings: a line, a ring, noise."""

import itertools
import math

import numpy as np
import pytest

from language_entropy.digit_geometry import digit_geometry, numeric_distances


def on_a_line(dims: int = 96, seed: int = 0) -> np.ndarray:
    """Digit d at o + d v: an offset line in a random direction."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=dims) + np.arange(10)[:, None] * rng.normal(size=dims)


def on_a_ring(radius: float = 3.0) -> np.ndarray:
    """Digit d at angle 2 pi d / 10 on a circle in two of 96 dimensions, so 9 sits next to 0."""
    angle = 2 * math.pi * np.arange(10) / 10
    embeddings = np.zeros((10, 96))
    embeddings[:, 0], embeddings[:, 1] = radius * np.cos(angle), radius * np.sin(angle)
    return embeddings


def test_numeric_distances_of_the_45_pairs():
    line, ring = numeric_distances()
    pairs = list(itertools.combinations(range(10), 2))  # the order of scipy's condensed distances
    assert line.tolist() == [j - i for i, j in pairs]
    assert ring.tolist() == [min(j - i, 10 - (j - i)) for i, j in pairs]
    assert ring[pairs.index((0, 9))] == 1 and ring.max() == 5


def test_a_line_has_rank_correlation_one():
    got = digit_geometry(on_a_line())
    assert got["line_rank_correlation"] == pytest.approx(1.0, abs=1e-12)
    assert got["ring_rank_correlation"] < 0.9  # 0 and 9 far apart: not a ring
    rotated = digit_geometry(5.0 * on_a_line() @ np.linalg.qr(np.random.default_rng(1).normal(size=(96, 96)))[0])
    assert rotated["line_rank_correlation"] == pytest.approx(1.0, abs=1e-12)  # rotation and scale do not matter


def test_a_ring_gives_the_ring_measure_its_maximum():
    got = digit_geometry(on_a_ring())
    assert got["ring_rank_correlation"] == pytest.approx(1.0, abs=1e-12)  # a Spearman correlation is at most 1
    assert got["line_rank_correlation"] < 0.9
    # cosines on the circle through the origin: neighbours cos 36 deg; the 36 others by hand
    others = [math.cos(2 * math.pi * (j - i) / 10) for i, j in itertools.combinations(range(10), 2) if j - i >= 2]
    assert got["neighbour_cosine"] == pytest.approx(math.cos(math.pi / 5), abs=1e-12)
    assert got["other_cosine"] == pytest.approx(np.mean(others), abs=1e-12)
    assert got["neighbour_cosine_gap"] == pytest.approx(math.cos(math.pi / 5) - np.mean(others), abs=1e-12)


def test_random_embeddings_score_near_zero():
    rng = np.random.default_rng(0)
    readings = [digit_geometry(rng.normal(size=(10, 96))) for _ in range(200)]
    for name in ("line_rank_correlation", "ring_rank_correlation", "neighbour_cosine_gap"):
        values = np.array([r[name] for r in readings])
        assert abs(values.mean()) < 0.03, name  # no relation on average
        assert values.std() > 0.02, name  # and not a constant
    with pytest.raises(ValueError, match=r"shape \(10, C\)"):
        digit_geometry(np.zeros((9, 4)))
    with pytest.raises(ValueError, match="all equal"):
        digit_geometry(np.ones((10, 4)))
