"""Check two lmms-eval runs of the vlmforge_shapes task: both wrote results, and they agree.

    python scripts/engines/lmms_compare.py RESULTS_DIR_A RESULTS_DIR_B

Each directory is an lmms-eval `--output_path` (one `*_results.json` and one `*_samples_*.jsonl`
below it, written with --log_samples). Run A is the `llava_hf` model type on the folder, run B the
`openai_compatible` model type against `vlmforge serve` on the same folder: the prompts are the
folder's chat template in both and the images go as lossless PNG, so greedy answers must be equal
text, document by document. Prints OK or FAIL with the first difference; exit 0 only on OK.
Standard library only (runs in any env).
"""

import json
import sys
from pathlib import Path

TASK = "vlmforge_shapes"
EXPECTED_DOCS = 4


def read_run(folder: Path) -> tuple[dict, dict]:
    """The run's aggregated results and its answers by doc id; SystemExit when a file is missing."""
    results = sorted(folder.glob("*/*_results.json"))
    samples = sorted(folder.glob(f"*/*_samples_{TASK}.jsonl"))
    if not results or not samples:
        sys.exit(f"FAIL {folder}: no results/samples file (lmms-eval exits 0 on errors; see its log)")
    summary = json.loads(results[-1].read_text())
    answers = {}
    for line in samples[-1].read_text().splitlines():
        record = json.loads(line)
        answers[record["doc_id"]] = record["filtered_resps"]
    return summary, answers


def main() -> None:
    runs = [Path(argument) for argument in sys.argv[1:3]]
    (summary_a, answers_a), (summary_b, answers_b) = (read_run(folder) for folder in runs)
    for folder, summary, answers in ((runs[0], summary_a, answers_a), (runs[1], summary_b, answers_b)):
        score = summary["results"][TASK]["exact_match,none"]
        print(f"{folder}: {summary['model_name']} ({summary['config']['model']}), {len(answers)} docs, exact_match {score}")
        if len(answers) != EXPECTED_DOCS:
            sys.exit(f"FAIL {folder}: {len(answers)} docs answered, expected {EXPECTED_DOCS}")
    for doc_id in sorted(answers_a):
        if answers_a[doc_id] != answers_b.get(doc_id):
            sys.exit(f"FAIL doc {doc_id}: llava_hf answered {answers_a[doc_id]!r}, served {answers_b.get(doc_id)!r}")
    print(f"OK lmms-eval: llava_hf and openai_compatible (vlmforge serve) give the same {len(answers_a)} answers")


if __name__ == "__main__":
    main()
