"""A study's findings quote its data exactly: every Δ, interval and q in a findings README is traced, in the README's
own table "Where the numbers come from", to the configuration, reading and cell it is, and checked against the
study's summary.csv (a slope against summary.md's slope table, a difference over some of the units against
seeds.csv), to the precision it is written with. The findings may quote no Δ, interval or q the table does not
trace, and the table nothing the findings do not quote.

What counts as quoted (in the Findings section): "Δ X" and "Δ X [L, H]" (a difference from the baseline),
"slope X [L, H]", "q X", and "X [L, H]" (a mean with its interval). Every study with a seeds.csv (the paired
design) must carry the table; reports/loss-ablations predates it."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

REPORTS = Path(__file__).resolve().parents[1] / "reports"
PROVENANCE = "## Where the numbers come from"
NUMBER = r"[+-]?\d+(?:\.\d+)?"
QUOTED = re.compile(rf"(?<![\w.])(?:(?:Δ|slope) {NUMBER}(?: \[{NUMBER}, {NUMBER}\])?|q {NUMBER}"
                    rf"|{NUMBER} \[{NUMBER}, {NUMBER}\])")
# cell -> the summary.csv columns its numbers are, in the order they are written (value, then the interval)
SUMMARY_CELLS = {"Δ": ("diff", "diff_low", "diff_high"), "mean": ("mean", "ci_low", "ci_high"), "q": ("p_bh",)}
PREFIX = {"Δ": "Δ ", "q": "q ", "slope": "slope ", "slope q": "q "}
STUDIES = sorted(path.parent.name for path in REPORTS.glob("*/seeds.csv"))


def findings_and_tables(text: str) -> tuple[str, list[list[str]]]:
    """The Findings section's text and the rows (cells stripped) of the tables under PROVENANCE."""
    if PROVENANCE not in text:
        raise AssertionError(f"no section {PROVENANCE!r}")
    body, provenance = text.split(PROVENANCE, 1)
    findings = body.split("## Findings", 1)[-1]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in provenance.splitlines()
            if line.startswith("|") and not set(line) <= set("|- ")]
    return findings, rows


def numbers(quoted: str) -> list[str]:
    return re.findall(NUMBER, quoted.split(" ", 1)[1] if quoted.startswith(("Δ", "q ", "slope")) else quoted)


def matches(written: str, value: float) -> bool:
    """Whether `written` is `value` rounded to the decimals it shows."""
    decimals = len(written.split(".")[1]) if "." in written else 0
    return math.isfinite(value) and abs(float(written) - value) <= 0.5 * 10**-decimals + 1e-9


def slope_table(markdown: str) -> dict[tuple[str, str], dict[str, str]]:
    """summary.md's dose-response slopes: (param, metric) -> {"slope": "+402.1 [+172.3, +631.9]", "q": "0.0057"}."""
    rows = {}
    for line in markdown.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 8 and cells[0].startswith("`") and cells[1].startswith("`"):
            rows[(cells[0].strip("`"), cells[1].strip("`"))] = {"slope": cells[4], "q": cells[6]}
    return rows


def configuration_rows(rows: list[list[str]], summary: pd.DataFrame) -> dict[str, pd.Series]:
    """The configurations table (label | params, e.g. `loss.entropy_weight=-0.2`, `train.steps=500`): each label's
    one summary.csv row."""
    chosen = {}
    for label, params in (row for row in rows if len(row) == 2 and row[0] != "configuration"):
        selected = np.ones(len(summary), dtype=bool)
        for key, value in re.findall(r"`([\w.]+)=([^`]*)`", params):
            column = summary[key]
            if value == "None":
                selected &= column.isna().to_numpy()
            else:
                try:
                    selected &= (pd.to_numeric(column, errors="coerce") == float(value)).to_numpy()
                except ValueError:
                    selected &= (column.astype(str) == value).to_numpy()
        if selected.sum() != 1:
            raise AssertionError(f"configuration {label!r} ({params}) selects {selected.sum()} rows of summary.csv")
        chosen[label] = summary[selected].iloc[0]
    return chosen


def unit_difference(seeds: pd.DataFrame, config: pd.Series, reading: str, units: list[str]) -> list[float]:
    """The mean per-unit difference from the baseline over `units`, and its 95% t interval when there are 3 or more."""
    def by_unit(name: str) -> pd.Series:
        rows = seeds[seeds["config"] == name]
        units = [str(int(unit)) if isinstance(unit, float) else str(unit) for unit in rows["seed"]]  # 5.0 -> "5"
        return pd.Series(rows[reading].to_numpy(dtype=float), index=units)
    differences = (by_unit(config["config"]) - by_unit(config["baseline_config"]))[units].to_numpy()
    mean = float(differences.mean())
    if len(differences) < 3:
        return [mean]
    half = stats.t.ppf(0.975, len(differences) - 1) * differences.std(ddof=1) / math.sqrt(len(differences))
    return [mean, mean - half, mean + half]


def check_findings(text: str, summary: pd.DataFrame, seeds: pd.DataFrame, summary_md: str) -> list[str]:
    """Every problem with the findings' quoted numbers, one line each (empty when every one is traced and right)."""
    findings, rows = findings_and_tables(text)
    configurations = configuration_rows(rows, summary)
    quotes = [row for row in rows if len(row) == 4 and row[0] != "quoted"]
    traced = {row[0] for row in quotes}
    problems = [f"quoted in the findings but not traced: {q!r}" for q in dict.fromkeys(QUOTED.findall(findings))
                if q not in traced]
    problems += [f"traced but not quoted in the findings: {q!r}" for q in sorted(traced) if q not in findings]
    slopes = slope_table(summary_md)
    for quoted, label, reading, cell in quotes:
        where = f"{quoted!r} ({label}, {reading}, {cell})"
        kind = "Δ" if cell.startswith("Δ over ") else cell
        if kind not in PREFIX and kind != "mean":
            problems.append(f"{where}: unknown cell {cell!r}")
            continue
        if kind in PREFIX and not quoted.startswith(PREFIX[kind]):
            problems.append(f"{where}: a {cell} is written {PREFIX[kind]!r}...")
            continue
        if cell in ("slope", "slope q"):
            entry = slopes.get((label, reading))
            if entry is None:
                problems.append(f"{where}: summary.md has no slope of {reading} on {label}")
                continue
            values = [float(x) for x in re.findall(NUMBER, entry["slope" if cell == "slope" else "q"])]
        elif label not in configurations:
            problems.append(f"{where}: no configuration {label!r} in the configurations table")
            continue
        elif cell.startswith("Δ over "):
            units = [unit.strip() for unit in cell.removeprefix("Δ over ").split(",")]
            values = unit_difference(seeds, configurations[label], reading, units)
        else:
            row = configurations[label]
            values = [float(row.get(f"{reading}.{column}", math.nan)) for column in SUMMARY_CELLS[kind]]
        written = numbers(quoted)
        if len(written) > len(values) or not all(matches(w, v) for w, v in zip(written, values, strict=False)):
            shown = ", ".join(f"{v:.4g}" for v in values[:len(written)])
            problems.append(f"{where}: the data say {shown}")
    return problems


def study_files(study: str) -> tuple[str, pd.DataFrame, pd.DataFrame, str]:
    folder = REPORTS / study
    return ((folder / "README.md").read_text(), pd.read_csv(folder / "summary.csv"), pd.read_csv(folder / "seeds.csv"),
            (folder / "summary.md").read_text())


@pytest.mark.parametrize("study", STUDIES)
def test_every_number_a_findings_readme_quotes_is_its_data(study):
    assert check_findings(*study_files(study)) == []


def test_the_check_finds_a_wrong_number_an_untraced_one_and_a_stale_trace():
    assert "loss-ablations-paired" in STUDIES and "rl-entropy" in STUDIES
    text, summary, seeds, summary_md = study_files("loss-ablations-paired")
    right = "Δ +0.056 [+0.018, +0.094]"
    assert text.count(right) >= 2  # in the findings and in the table
    wrong = text.replace(right, "Δ +0.065 [+0.018, +0.094]")
    assert check_findings(wrong, summary, seeds, summary_md) == [
        "'Δ +0.065 [+0.018, +0.094]' (bonus-500, test_ood.exact_match, Δ): the data say 0.056, 0.0177, 0.0943"]
    findings_end = text.index(PROVENANCE)
    untraced = text[:findings_end] + "\n- An extra claim: Δ +0.5 [+0.1, +0.9].\n\n" + text[findings_end:]
    assert check_findings(untraced, summary, seeds, summary_md) == [
        "quoted in the findings but not traced: 'Δ +0.5 [+0.1, +0.9]'"]
    stale = text[:findings_end].replace("(q 0.0057", "(q 0.006") + text[findings_end:]
    assert "traced but not quoted in the findings: 'q 0.0057'" in check_findings(stale, summary, seeds, summary_md)


# --- reports/defaults: its summary.csv is one number a row (section, config, reading, statistic) ---------------

DEFAULTS = REPORTS / "defaults"
INTERVAL = re.compile(rf"{NUMBER}%? \[{NUMBER}%?, {NUMBER}%?\]")


def check_defaults_findings(text: str, summary: pd.DataFrame) -> list[str]:
    """The defaults README's provenance table has rows | quoted | section | config | reading | statistic | scale |:
    the quoted text must appear in the Findings, and its numbers (value, then low and high when it has an
    interval) are that summary.csv row's times scale (100 for percent and points), at the precision written.
    Every "X [L, H]" of the Findings must be quoted by some row."""
    findings, rows = findings_and_tables(text)
    problems, traced = [], []
    for row in (r for r in rows if len(r) == 6 and r[0] != "quoted"):
        quoted, section, config, reading, statistic, scale = (cell.strip("`") for cell in row)
        traced.append(quoted)
        if quoted not in findings:
            problems.append(f"{quoted!r} is traced but not in the findings")
        hit = summary[(summary["section"] == section) & (summary["config"] == config)
                      & (summary["reading"] == reading) & (summary["statistic"] == statistic)]
        if len(hit) != 1:
            problems.append(f"{quoted!r}: ({section}, {config}, {reading}, {statistic}) is {len(hit)} rows")
            continue
        written = re.findall(NUMBER, quoted)
        data = [hit.iloc[0][column] * float(scale) for column in ("value", "low", "high")][:len(written)]
        if not all(matches(w, v) for w, v in zip(written, data, strict=True)):
            problems.append(f"{quoted!r} ({config}, {reading}, {statistic}): the data say "
                            + ", ".join(f"{v:.4g}" for v in data))
    untraced = [m for m in INTERVAL.findall(findings) if not any(m in quoted for quoted in traced)]
    problems += [f"{m!r} is quoted in the findings but not traced" for m in untraced]
    return problems


def test_the_defaults_findings_quote_their_summary():
    text = (DEFAULTS / "README.md").read_text()
    assert check_defaults_findings(text, pd.read_csv(DEFAULTS / "summary.csv")) == []


def test_the_defaults_check_finds_a_wrong_number_and_an_untraced_one():
    text, summary = (DEFAULTS / "README.md").read_text(), pd.read_csv(DEFAULTS / "summary.csv")
    findings, rows = findings_and_tables(text)
    quoted = next(r[0] for r in rows if len(r) == 6 and r[0] != "quoted" and re.search(r"\[", r[0]))
    first = re.findall(NUMBER, quoted)[0]
    wrong = quoted.replace(first, f"{float(first) + 3:.{len(first.split('.')[-1]) if '.' in first else 0}f}", 1)
    assert any("the data say" in p for p in check_defaults_findings(text.replace(quoted, wrong), summary))
    extra = text.replace("## Findings\n", "## Findings\n\n12.3 [4.5, 67.8] untraced.\n", 1)
    assert any("not traced" in p for p in check_defaults_findings(extra, summary))
