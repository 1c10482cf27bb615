"""The research benches still run end to end: each ``bench/*.py --smoke`` on a random demo-shaped model at toy sizes.

The benches regenerate docs/results.md and take minutes to hours, so nothing else would notice when a library change
breaks one of them. ``--smoke`` prints its section instead of writing docs/ (checked below: docs/ is untouched).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# prepare_throughput.py --smoke is left out: it trains six short runs in subprocesses (~2-5 min on 2 cores), and
# tests/data covers what it times.
SMOKE_BENCHES = ["attention_edit.py", "blend_training.py", "latent_navigation.py", "position_spread.py", "weight_space.py"]


def _docs_digest() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((ROOT / "docs").iterdir()) if p.is_file()}


@pytest.mark.parametrize("script", SMOKE_BENCHES)
def test_bench_smoke_runs_and_leaves_docs_alone(script: str, tmp_path: Path) -> None:
    before = _docs_digest()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--smoke"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{script} --smoke failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "|" in proc.stdout, f"{script} --smoke printed no result table:\n{proc.stdout[-2000:]}"
    assert _docs_digest() == before, f"{script} --smoke changed files in docs/"
