"""compute-theoretical-entropy stage: the entropy the data itself leaves at each answer step.

Reads the data (operations, digit ranges, answer order), entropy, train.threads and paths.metrics; writes
<paths.metrics>/theoretical_entropy.csv (marginal and conditional bits per step, for every bucket and
both mixtures) and <paths.metrics>/theoretical_entropy.json (total answer bits per scope and operation).
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, also in a queued copy

from language_entropy.pipeline.cli import run_stage, stage_params, stage_parser


def main() -> None:
    params = stage_params(stage_parser(__doc__).parse_args())
    from language_entropy.pipeline.outputs import check_outputs, output_set  # after the thread count is fixed
    from language_entropy.theory import CSV_NAME, JSON_NAME, summary_metrics, theoretical_entropy_table

    metrics = Path(params.paths.metrics)
    check_outputs(files=[("paths.metrics", metrics / name) for name in (CSV_NAME, JSON_NAME)])
    table = theoretical_entropy_table(params.data, params.entropy,
                                      progress=lambda line: print(f"theoretical entropy: {line}", file=sys.stderr))
    summary = summary_metrics(table)
    texts = {metrics / CSV_NAME: table.to_csv(index=False), metrics / JSON_NAME: json.dumps(summary, indent=2) + "\n"}
    with output_set(texts) as staged:  # both files replace the previous pair together
        for path, text in texts.items():
            staged(path).write_text(text)


if __name__ == "__main__":
    run_stage(main)
