"""Time `make demo` from a fresh clone (set-up included) and record its accuracy in docs/results.md.

Clones the current commit into a temporary folder, runs `make demo` there exactly as a newcomer would,
then reads the evaluation it printed (runs/demo/eval/scores.json) and the training log.
Run: python bench/demo.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import table, update_section  # noqa: E402

from crossflow.eval.shapes import format_by_size  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("color", "position", "size", "shape", "all_correct")
BAR = {"color": 0.95, "position": 0.95, "size": 0.85, "shape": 0.85, "all_correct": 0.75}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", default=None, help="clone into this folder and keep it (default: a temp dir)")
    args = parser.parse_args()
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    work = Path(args.keep or tempfile.mkdtemp(prefix="crossflow-demo-"))
    subprocess.run(["git", "clone", "-q", str(ROOT), str(work)], check=True)
    log_path = work / "demo.log"
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(["make", "demo"], cwd=work, stdout=log, stderr=subprocess.STDOUT)
    minutes = (time.perf_counter() - t0) / 60
    if proc.returncode != 0:
        sys.exit(f"make demo failed (exit {proc.returncode}); see {log_path}")
    scores = json.loads((work / "runs/demo/eval/scores.json").read_text())
    rows = []
    for phrasing, s in scores["scores"].items():
        rows.append([phrasing, *(s[k] for k in KEYS), int(s["n"])])
    passed = all(scores["scores"]["train"][k] >= v for k, v in BAR.items())
    body = (
        f"`make demo` from a fresh clone of {sha} (venv, torch, package install, shards, training, evaluation, "
        f"sampling): **{minutes:.1f} minutes** wall clock.\n\n"
        f"Evaluation with sample.py's defaults ({scores['steps']} Euler steps, guidance {scores['cfg_scale']}), "
        f"{scores['num']} fresh prompts per phrasing, seed {scores['seed']} (training data uses seeds 0 and 1):\n\n"
        + table(["phrasing", *KEYS, "n"], rows)
        + "\n\nBar (train phrasing): colour ≥ 0.95, position ≥ 0.95, size ≥ 0.85, shape ≥ 0.85, all-correct ≥ 0.75 — "
        + ("**met**." if passed else "**not met**.")
        + " `heldout` prompts use 14 caption templates (and some synonyms) that never occur in the training data."
    )
    by_size = scores["scores"]["train"].get("shape_by_size")
    if by_size:
        body += f"\n\nTrain phrasing, {format_by_size(by_size)} (shape read correctly / stated)."
    update_section("demo", "`make demo`: time and accuracy", "python bench/demo.py", body)
    print(body)


if __name__ == "__main__":
    main()
