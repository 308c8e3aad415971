"""Every figure builds from small synthetic inputs into a PNG of figsize * dpi pixels; PCA matches SVD."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from language_entropy import plots

DPI = 40  # small, so the figures render fast; every figsize below times 40 is a whole number of pixels


def _assert_png(path, width_in: float, height_in: float, dpi: int = DPI) -> None:
    assert path.is_file() and path.stat().st_size > 0
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (round(height_in * dpi), round(width_in * dpi))
    assert image[..., :3].std() > 0  # something was drawn


def _train_curve(n_answer_steps: int = 11) -> pd.DataFrame:
    steps = np.arange(0, 1001, 50)
    evaluated = steps % 250 == 0
    decay = np.exp(-steps / 300)
    frame = pd.DataFrame({
        "step": steps, "wall_time_s": steps * 0.05, "tokens_per_s": 5e4, "lr": 1e-3, "loss": 2.5 * decay + 0.01,
        "ce_loss": 2.5 * decay + 0.01, "continuity_loss": 0.0, "entropy_loss": -0.3 * decay, "entropy_coef": 0.0,
        "val_loss": np.where(evaluated, 2.5 * decay + 0.02, np.nan),
        "val_exact_match": np.where(evaluated, 1 - decay, np.nan),
    })
    for k in range(n_answer_steps):
        frame[f"entropy_step_{k}"] = np.where(evaluated, 3 * decay + 0.05 * k, np.nan)
    return frame


def test_pca_matches_numpy_svd():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)) @ rng.normal(size=(6, 6)) + 5.0
    projection, components, ratio = plots.pca(x, n_components=3)

    centred = x - x.mean(axis=0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    expected = u[:, :3] * s[:3]
    signs = np.sign(np.sum(projection * expected, axis=0))  # each component is defined up to its sign
    assert set(signs) <= {-1.0, 1.0}
    np.testing.assert_allclose(projection, expected * signs, atol=1e-9)
    np.testing.assert_allclose(components, vt[:3] * signs[:, None], atol=1e-9)
    np.testing.assert_allclose(ratio, s[:3] ** 2 / np.sum(s**2))
    assert projection.shape == (40, 3) and components.shape == (3, 6)


def test_pca_beyond_rank_pads_with_zeros():
    projection, components, ratio = plots.pca(np.array([[1.0, 2.0, 3.0]]), n_components=2)
    assert projection.shape == (1, 2) and components.shape == (2, 3)
    np.testing.assert_array_equal(ratio, [0.0, 0.0])
    with pytest.raises(ValueError, match="2-D"):
        plots.pca(np.zeros(5))


def test_trajectories(tmp_path):
    rng = np.random.default_rng(1)
    trajectories = []
    for i, correct in enumerate([True, False, True]):
        n = 2 + i
        trajectories.append(plots.Trajectory(f"{i}+7={i + 7}", correct, [str(d) for d in rng.integers(0, 10, n)],
                                             {0: rng.normal(size=(n, 8)), 3: rng.normal(size=(n, 8))}))
    path = plots.plot_trajectories(trajectories, (0, 3), tmp_path / "trajectories.png", dpi=DPI)
    _assert_png(path, 5.0 * 2 + 2.5, 5.0)


def test_trajectories_reject_mismatched_states(tmp_path):
    bad = plots.Trajectory("1+1=2", True, ["2", "$"], {0: np.zeros((3, 4))})
    with pytest.raises(ValueError, match="3 states at layer 0 but 2 tokens"):
        plots.plot_trajectories([bad], (0,), tmp_path / "t.png", dpi=DPI)
    with pytest.raises(ValueError, match="no states for layer 2"):
        plots.plot_trajectories([bad], (2,), tmp_path / "t.png", dpi=DPI)


def test_digit_geometry(tmp_path):
    embeddings = np.cumsum(np.random.default_rng(2).normal(size=(10, 12)), axis=0)
    _assert_png(plots.plot_digit_geometry(embeddings, tmp_path / "digits.png", dpi=DPI), 11.0, 5.0)
    with pytest.raises(ValueError, match=r"\(10, C\)"):
        plots.plot_digit_geometry(np.zeros((9, 4)), tmp_path / "bad.png", dpi=DPI)


def test_entropy_by_step(tmp_path):
    rows = [{"split": split, "operation": op, "step": step, "model_entropy_bits": 0.5 / (step + 1),
             "digit_blind_running_bits": 3.3 - 0.2 * step, "digit_blind_all_bits": 3.2 - 0.2 * step,
             "running_fraction": 1.0, "accuracy": 0.9}
            for split in ("test_ood", "test") for op in ("add", "sub") for step in range(4)]
    _assert_png(plots.plot_entropy_by_step(pd.DataFrame(rows), tmp_path / "by_step.png", dpi=DPI), 11.0, 4.5)


def test_entropy_during_training(tmp_path):
    reference = pd.DataFrame({"step": range(11), "digit_blind_running_bits": np.linspace(0, 1, 11)})
    path = plots.plot_entropy_during_training(_train_curve(), reference, tmp_path / "during.png", dpi=DPI)
    _assert_png(path, 9.0, 5.0)
    _assert_png(plots.plot_entropy_during_training(_train_curve(), None, tmp_path / "none.png", dpi=DPI), 9.0, 5.0)


def test_entropy_step_columns_sort_numerically():
    columns = [k for k, _ in plots.entropy_step_columns(_train_curve(11))]
    assert columns == list(range(11))


def test_training_curves(tmp_path):
    _assert_png(plots.plot_training_curves(_train_curve(), tmp_path / "curves.png", dpi=DPI), 12.0, 4.5)


def test_reliability(tmp_path):
    edges = np.linspace(0, 1, 6)
    rows = [{"split": split, "operation": op, "decoding": decoding, "bin": b, "bin_lower": edges[b],
             "bin_upper": edges[b + 1], "count": 0 if b == 0 else 50, "confidence": edges[b] + 0.1,
             "accuracy": edges[b] + 0.05, "gap": 0.05}
            for split in ("test", "test_ood") for op in ("all", "add") for decoding in ("greedy", "sampled_t1")
            for b in range(5)]
    path = plots.plot_reliability(pd.DataFrame(rows), tmp_path / "reliability.png", dpi=DPI,
                                  ece={"test": {"greedy": 0.05, "sampled_t1": 0.02}, "test_ood": {"greedy": 0.1}})
    _assert_png(path, 10.0, 5.0)


def test_temperature(tmp_path):
    rows = [{"split": split, "temperature": t, "exact_match": 0.9 - 0.3 * t, "mean_entropy_bits": 0.1 + t}
            for split in ("test", "test_ood") for t in (0.0, 0.5, 1.0)]
    _assert_png(plots.plot_temperature(pd.DataFrame(rows), tmp_path / "temperature.png", dpi=DPI), 11.0, 4.5)


def test_missing_column_is_named(tmp_path):
    with pytest.raises(ValueError, match="mean_entropy_bits"):
        plots.plot_temperature(pd.DataFrame({"split": ["test"], "temperature": [0.0], "exact_match": [1.0]}),
                               tmp_path / "t.png", dpi=DPI)


def _rl_curve() -> pd.DataFrame:
    steps = np.arange(0, 101, 5)
    validated = steps % 25 == 0
    frame = pd.DataFrame({"step": steps, "reward": 0.5 + steps / 400, "sample_exact_match": 0.5 + steps / 400,
                          "val_exact_match": np.where(validated, 0.55 + steps / 500, np.nan),
                          "entropy_bits": 0.3 - steps / 1000, "covariance": 0.1 - steps / 2000})
    for k in range(6):
        frame[f"entropy_step_{k}"] = 0.3 - steps / 1000 + 0.01 * k
    return frame


@pytest.mark.parametrize("fit", [{"a": 0.3, "b": 1.1}, {"a": None, "b": None}])  # None: no fit (rl_fit.json)
def test_rl_entropy_accuracy(tmp_path, fit):
    _assert_png(plots.plot_rl_entropy_accuracy(_rl_curve(), fit, tmp_path / "rl.png", DPI), 7.5, 5.0)


def test_rl_entropy_by_step_and_curves(tmp_path):
    by_step = pd.DataFrame({"step": range(6), "before_bits": 0.1, "after_bits": 0.05,
                            "digit_blind_running_bits": [3.0, 3.2, 3.2, 3.1, 1.0, np.nan]})
    _assert_png(plots.plot_rl_entropy_by_step(by_step, tmp_path / "by_step.png", DPI), 7.5, 4.5)
    _assert_png(plots.plot_rl_curves(_rl_curve(), tmp_path / "curves.png", DPI), 15.0, 4.2)
