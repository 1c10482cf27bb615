"""Where a result came from: the source tree's commit (no Lightning import, so every CLI can record it)."""

from __future__ import annotations

import os
import subprocess


def git_sha() -> str | None:
    """The source tree's commit (``-dirty`` with local changes); None outside a git checkout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
