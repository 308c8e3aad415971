"""compute-theoretical-entropy stage: the entropy the data itself leaves at each answer step.

Reads the data (operations, digit ranges, answer order), entropy, train.threads and paths.metrics; writes
<paths.metrics>/theoretical_entropy.csv (marginal and conditional bits per step, for every bucket and
both mixtures) and <paths.metrics>/theoretical_entropy.json (total answer bits per scope and operation).
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, also in a queued copy

from language_entropy.cli import run_stage, stage_params, stage_parser


def main() -> None:
    params = stage_params(stage_parser(__doc__).parse_args())
    from language_entropy.theory import CSV_NAME, JSON_NAME, summary_metrics, theoretical_entropy_table

    table = theoretical_entropy_table(params.data, params.entropy,
                                      progress=lambda line: print(f"theoretical entropy: {line}", file=sys.stderr))
    summary = summary_metrics(table)
    # Everything is computed before anything is written, and each file appears whole (written, then renamed).
    metrics = Path(params.paths.metrics)
    metrics.mkdir(parents=True, exist_ok=True)
    staged = {metrics / CSV_NAME: table.to_csv(index=False), metrics / JSON_NAME: json.dumps(summary, indent=2) + "\n"}
    for path, text in staged.items():
        path.with_name(path.name + ".tmp").write_text(text)
    for path in staged:
        os.replace(path.with_name(path.name + ".tmp"), path)


if __name__ == "__main__":
    run_stage(main)
