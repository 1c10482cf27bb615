"""Write a measured section into docs/results.md (each bench script owns one section, rewritten in place)."""

from __future__ import annotations

import datetime
import os
import platform
import re
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results.md"
HEADER = "# Measured results\n\nEvery section below is written by a script in `bench/`; its command regenerates it.\n"


def machine() -> str:
    """One line describing where the numbers were measured."""
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def update_section(name: str, title: str, command: str, body: str) -> None:
    """Replace (or append) the section ``name`` in docs/results.md."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    stamp = datetime.date.today().isoformat()
    block = (
        f"<!-- BEGIN {name} -->\n## {title}\n\n"
        f"Regenerate: `{command}`  \nMeasured {stamp} on {machine()}.\n\n{body.strip()}\n<!-- END {name} -->"
    )
    pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)
    print(f"updated section '{name}' of {RESULTS}")


_PART_BLOCK = re.compile(r"<!-- part (\w+) -->\n(.*?)\n<!-- /part \1 -->", re.S)


def section_parts(name: str) -> dict[str, str]:
    """The ``<!-- part X -->`` blocks of section ``name`` as docs/results.md holds it now.

    Benches whose parts run separately (``--parts``, ``--kinds``) keep the parts not run now from here.
    """
    if not RESULTS.exists():
        return {}
    found = re.search(rf"<!-- BEGIN {re.escape(name)} -->(.*?)<!-- END {re.escape(name)} -->", RESULTS.read_text(), re.S)
    return dict(_PART_BLOCK.findall(found.group(1))) if found else {}


def join_parts(order: list[str], parts: dict[str, str]) -> str:
    """The parts in ``order`` (those present), each wrapped in its markers for :func:`section_parts`."""
    return "\n\n".join(f"<!-- part {k} -->\n{parts[k].strip()}\n<!-- /part {k} -->" for k in order if k in parts)


def table(header: list[str], rows: list[list[object]]) -> str:
    """A markdown table."""
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
