"""The report of an RL study on a real temporary MLflow store: fine-tuning runs as units (seed, rl.seed), the
training runs left out, plain RL as the baseline (--baseline), the paired differences against a direct
computation, each run's fit and curves, the entropy per answer step, and the rebuild."""

from __future__ import annotations

import math

import mlflow
import numpy as np
import pandas as pd
import pytest

from language_entropy.errors import UserError
from language_entropy.pipeline.runs import load_curves, load_runs
from language_entropy.report import baseline_overrides, metric_range, rebuild_report, write_report
from language_entropy.statistics import bounded_interval, paired_interval, seed_interval

EXPERIMENT, STUDY = "rl-report-test", "rl-study"
HELD_OUT = "rl_val_exact_match"
PLAIN = {"rl.clip_high": 0.2}
# name -> (rl params besides PLAIN, {(seed, rl.seed): final RL validation exact match})
CONFIGS = {
    "plain": ({}, {(0, 0): 0.60, (0, 1): 0.62, (1, 0): 0.50, (1, 1): 0.54}),
    "bonus": ({"rl.entropy_weight": -0.01}, {(0, 0): 0.66, (0, 1): 0.65, (1, 0): 0.58, (1, 1): 0.60}),
    "top20": ({"rl.token_mask": "top"}, {(0, 0): 0.61, (0, 1): 0.60, (1, 0): 0.52, (1, 1): 0.53}),
}
STEP_ENTROPY = {"before_bits": [0.30, 0.20], "digit_blind_running_bits": [3.32, 2.10]}


def _after(name: str, seed: int) -> list[float]:
    """Entropy per answer step after RL: per configuration and trained model, hand-checkable means."""
    return {"plain": [0.10, 0.05], "bonus": [0.25, 0.15], "top20": [0.12, 0.07]}[name] if seed == 0 else \
        {"plain": [0.14, 0.09], "bonus": [0.35, 0.25], "top20": [0.16, 0.11]}[name]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        experiment = mlflow.create_experiment(EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
        trained = {}
        for seed in (0, 1):  # the training runs: a study's runs, but not an RL study's units
            with mlflow.start_run(experiment_id=experiment, tags={"study": STUDY}) as run:
                mlflow.log_params({"seed": seed, "rl.steps": 100})
                mlflow.log_metrics({"learning.area": 0.8})
            trained[seed] = run.info.run_id
        tuned = {}
        for name, (params, finals) in CONFIGS.items():
            for (seed, rl_seed), final in finals.items():
                tags = {"study": STUDY, "stage": "finetune", "train_run_id": trained[seed]}
                with mlflow.start_run(experiment_id=experiment, tags=tags) as run:
                    mlflow.log_params({"seed": seed, "rl.seed": rl_seed, "rl.steps": 100, "rl.eval_every": 10,
                                       **PLAIN, **params})
                    for step in range(0, 101, 10):  # entropy falls, accuracy rises to the final value
                        mlflow.log_metrics({"rl_entropy_bits": 0.3 - 0.002 * step,
                                            HELD_OUT: final - 0.001 * (100 - step)}, step=step)
                    mlflow.log_metric("rl_reward", 0.5, step=5)  # logged between validations
                    after = _after(name, seed)
                    mlflow.log_metrics({f"test_ood.per_operand_length.{n}.exact_match": final / n for n in (10, 4)})
                    mlflow.log_metrics({"rl_fit.a": 0.1 + rl_seed, "rl_fit.b": final + 0.2, "rl_fit.ceiling": 0.3,
                                        "rl_fit.early_ceiling_error_points": 2.0 * (seed + 1),
                                        **{f"rl_val.entropy_by_step.{k}.{kind}": values[k]
                                           for kind, values in (*STEP_ENTROPY.items(), ("after_bits", after))
                                           for k in range(2)}})
                tuned[name, seed, rl_seed] = run.info.run_id
        # evaluate again with other eval params: a run derived from a fine-tuning run, never a unit of its own
        with mlflow.start_run(experiment_id=experiment, tags={"study": STUDY, "train_run_id": tuned["plain", 0, 0]}):
            mlflow.log_params({"seed": 0, "rl.seed": 0, "rl.steps": 100, **PLAIN, "eval.samples": 10})
            mlflow.log_metrics({HELD_OUT: 0.0, "test.exact_match": 0.9})
        yield uri
        mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / STUDY
    runs = load_runs(EXPERIMENT, store, study=STUDY)
    paths = write_report(runs, out, dpi=30, title=STUDY, baseline_overrides={"rl.clip_high": "0.2"},
                         curves=load_curves(runs))
    return out, paths


def test_fine_tuning_runs_are_the_units_paired_on_trained_model_and_rl_seed(report):
    out, _ = report
    units = pd.read_csv(out / "seeds.csv", dtype={"seed": str})
    assert len(units) == 12  # 3 configurations x 2 trained models x 2 RL seeds; the training runs left out
    assert sorted(set(units["seed"])) == ["0/0", "0/1", "1/0", "1/1"]
    plain = units[units["run_id"].isin(units["run_id"])].set_index(["config", "seed"])
    assert plain[HELD_OUT].max() > 0  # the derived run's 0.0 never replaced its fine-tuning run's value
    derived = units.loc[units[HELD_OUT] == 0.60]
    assert derived["runs"].iloc[0] == 2 and derived["test.exact_match"].iloc[0] == 0.9  # folded in, gap filled


def test_the_ood_readings_expand_to_every_operand_length_logged(report):
    out, _ = report
    summary = pd.read_csv(out / "summary.csv")
    metrics = [c.removesuffix(".n") for c in summary.columns if c.endswith(".n")]
    lengths = [m for m in metrics if m.startswith("test_ood.per_operand_length.")]
    assert lengths == ["test_ood.per_operand_length.4.exact_match", "test_ood.per_operand_length.10.exact_match"]
    plain = summary[summary["baseline"]].iloc[0]
    assert plain["test_ood.per_operand_length.4.exact_match.mean"] == pytest.approx(np.mean(
        list(CONFIGS["plain"][1].values())) / 4)


def test_differences_from_plain_rl_are_paired_over_the_shared_units(report):
    out, _ = report
    summary = pd.read_csv(out / "summary.csv")
    plain = summary[summary["baseline"]]
    assert len(plain) == 1 and plain["rl.clip_high"].iloc[0] == 0.2 and plain["rl.token_mask"].iloc[0] == "none"
    bonus = summary[summary["rl.entropy_weight"] == -0.01].iloc[0]
    assert bonus["comparison"] == "paired" and bonus["seeds"] == 4
    order = [(0, 0), (0, 1), (1, 0), (1, 1)]
    direct = paired_interval(np.array([CONFIGS["bonus"][1][k] for k in order]),
                             np.array([CONFIGS["plain"][1][k] for k in order]))
    assert bonus[f"{HELD_OUT}.diff"] == pytest.approx(0.0575)  # (0.06 + 0.03 + 0.08 + 0.06) / 4
    for key in ("diff", "diff_low", "diff_high", "p"):
        assert bonus[f"{HELD_OUT}.{key}"] == pytest.approx(direct[key])
    assert 0 <= bonus[f"{HELD_OUT}.ci_low"] < bonus[f"{HELD_OUT}.mean"] < bonus[f"{HELD_OUT}.ci_high"] <= 1


def test_without_the_override_plain_rl_is_not_the_default_and_nothing_is_compared(store, tmp_path):
    runs = load_runs(EXPERIMENT, store, study=STUDY)
    write_report(runs, tmp_path, dpi=30, title=STUDY)  # rl.clip_high defaults to 0.28: no run has it
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert not summary["baseline"].any() and summary["comparison"].isna().all()


def test_the_rl_sections_figures_and_curves(report):
    out, paths = report
    assert {"rl_fits", "rl_curves", "curves", "seeds", "markdown"} <= set(paths)
    curves = pd.read_csv(out / "curves.csv")
    assert len(curves) == 12 * 12  # 11 validations and the reward's step 5 per run
    assert curves["rl_val_exact_match"].notna().sum() == 12 * 11 and curves["rl_reward"].notna().sum() == 12
    text = (out / "summary.md").read_text()
    assert "`rl.clip_high` = 0.2: plain RL" in text and "(`seed`, `rl.seed`)" in text
    assert "## Each run's entropy-accuracy fit" in text
    assert "| entropy_weight=-0.01 | 1/1 | 1.1 | 0.8 | 0.3 |" in text  # a = 0.1 + rl.seed, b = final + 0.2
    steps = text[text.index("## Entropy per answer step"):]
    assert "| digit-blind level | 3.32 | 2.1 |" in steps and "| before RL (every trained model) | 0.3 | 0.2 |" in steps
    assert "| after: plain | 0.12 | 0.07 |" in steps  # mean of seed 0's 0.10 and seed 1's 0.14 (two runs each)
    assert "| after: entropy_weight=-0.01 | 0.3 | 0.2 |" in steps


def test_the_rl_report_rebuilds_from_its_files(report):
    out, _ = report
    before = pd.read_csv(out / "summary.csv")
    text = (out / "summary.md").read_text()
    (out / "rl_fits.png").unlink()
    rebuild_report(out, dpi=30, title=STUDY, baseline_overrides={"rl.clip_high": "0.2"})
    after = pd.read_csv(out / "summary.csv")
    pd.testing.assert_frame_equal(before, after)
    assert (out / "rl_fits.png").is_file()
    rebuilt = (out / "summary.md").read_text()
    assert rebuilt.split("## Differences")[1] == text.split("## Differences")[1]


def test_baseline_overrides_name_what_is_wrong():
    assert baseline_overrides(["rl.clip_high=0.2", "loss.entropy_weight=0"]) == \
        {"rl.clip_high": "0.2", "loss.entropy_weight": "0"}
    with pytest.raises(UserError, match=r"--baseline rl\.lr: not a loss param or an RL entropy control"):
        baseline_overrides(["rl.lr=0.1"])
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        baseline_overrides(["rl.clip_high"])
    assert math.isfinite(float(baseline_overrides(["rl.kl_coef=0.05"])["rl.kl_coef"]))


def test_the_fit_r2_is_a_bounded_reading():
    # R^2 of a least-squares fit with an intercept lies in [0, 1]; six small R^2 (as the RL study's clip-higher runs)
    # give a t interval below 0, the bounded one stays inside and holds the mean
    assert metric_range("rl_fit.r2") == (0.0, 1.0)
    values = [0.0004, 0.046, 0.022, 0.029, 0.169, 0.76]
    assert seed_interval(values)["ci_low"] < 0
    bounded = bounded_interval(values, *metric_range("rl_fit.r2"))
    assert 0 < bounded["ci_low"] < bounded["mean"] < bounded["ci_high"] < 1
