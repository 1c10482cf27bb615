"""Time `make test` from a fresh clone (venv and installs included) and record it in docs/results.md.

Run: python bench/test_suite.py
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import update_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="crossflow-test-"))
    subprocess.run(["git", "clone", "-q", str(ROOT), str(work)], check=True)
    t0 = time.perf_counter()
    proc = subprocess.run(["make", "test"], cwd=work, capture_output=True, text=True)
    minutes = (time.perf_counter() - t0) / 60
    summary = next((line for line in reversed(proc.stdout.splitlines()) if re.search(r"\d+ passed", line)), "no summary")
    pytest_s = re.search(r"in ([\d.]+)s", summary)
    if proc.returncode != 0:
        sys.exit(f"make test failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    body = (
        f"`make test` from a fresh clone of {sha}: **{minutes:.1f} minutes** wall clock including the venv and "
        f"package installs; pytest itself: {pytest_s.group(1) if pytest_s else '?'} s.\n\n`{summary.strip('= ')}`"
    )
    update_section("test_suite", "`make test`: time", "python bench/test_suite.py", body)
    print(body)


if __name__ == "__main__":
    main()
