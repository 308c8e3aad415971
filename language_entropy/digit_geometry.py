"""Numbers for the geometry of the digit embeddings: do they reflect numeric relations?

The design notes ask whether a continuity loss makes the embeddings of the digits 0-9 reflect their
numeric order. `plots.plot_digit_geometry` draws one model's picture; `digit_geometry` reads it as
numbers that can be averaged over seeds and compared:

- ``line_rank_correlation``: Spearman rank correlation, over the 45 pairs i < j, between the Euclidean
  distance of the two embeddings and the numeric distance |i - j|. 1 when distance grows with numeric
  distance (digits on a line, in order), about 0 for unrelated embeddings.
- ``ring_rank_correlation``: the same against the circular distance min(|i - j|, 10 - |i - j|), which puts
  9 next to 0 (as a units digit wraps: 9 + 1 ends in 0). 1, its maximum, when the digits lie in order on
  a circle; a line scores below 1 here (its 0 and 9 are far apart), a ring below 1 on the line measure.
- ``neighbour_cosine``: mean cosine similarity of the 9 pairs with |i - j| = 1; ``other_cosine``: of the
  36 pairs with |i - j| >= 2; ``neighbour_cosine_gap``: the first minus the second (> 0: numeric
  neighbours point in more similar directions than other digits do).

Distances equal to within 1e-9 of the largest count as tied before ranking: a line or circle built
from floats gives equal distances that differ in the last bits, and those must tie as |i - j| does.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.spatial.distance import pdist
from scipy.stats import spearmanr

from language_entropy.tokenizer import DIGIT_IDS

N_DIGITS = 10
TIE_DECIMALS = 9  # distances are compared after rounding d / max(d) to this many decimals


def digit_embeddings(model) -> np.ndarray:
    """The token embeddings of the digits 0-9 of an `ArithmeticDecoder`, (10, C) float64: row d is digit d."""
    return model.tok_emb.weight[list(DIGIT_IDS)].detach().double().cpu().numpy()


def numeric_distances() -> tuple[np.ndarray, np.ndarray]:
    """|i - j| and the circular distance min(|i - j|, 10 - |i - j|) of the 45 pairs i < j, in `pdist` order."""
    i, j = np.triu_indices(N_DIGITS, k=1)  # row-major i < j: the order of scipy's condensed distances
    line = (j - i).astype(float)
    return line, np.minimum(line, N_DIGITS - line)


def digit_geometry(embeddings: ArrayLike) -> dict[str, float]:
    """The geometry readings (module docstring) of the digit embeddings, an array (10, C) whose row d is
    the embedding of the digit d."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2 or embeddings.shape[0] != N_DIGITS or not np.isfinite(embeddings).all():
        raise ValueError(f"digit embeddings must be a finite array of shape (10, C) (got {embeddings.shape})")
    distance = pdist(embeddings)  # (45,) Euclidean, pairs i < j
    if distance.max() == 0:
        raise ValueError("digit embeddings are all equal: no geometry to read")
    distance = np.round(distance / distance.max(), TIE_DECIMALS)
    line, ring = numeric_distances()
    cosine = 1.0 - pdist(embeddings, metric="cosine")  # (45,) cosine similarity, same pairs
    neighbour, other = cosine[line == 1].mean(), cosine[line >= 2].mean()
    return {"line_rank_correlation": float(spearmanr(distance, line).statistic),
            "ring_rank_correlation": float(spearmanr(distance, ring).statistic),
            "neighbour_cosine": float(neighbour), "other_cosine": float(other),
            "neighbour_cosine_gap": float(neighbour - other)}
