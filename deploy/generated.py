"""Write generated files, or check that the committed ones are what the generator renders.

Used by deploy/prometheus/render_rules.py and deploy/grafana/build_dashboards.py (``--check`` is what the
tests run).
"""

from __future__ import annotations

import sys
from pathlib import Path


def write_or_check(files: dict[str, str], out: Path, *, check: bool, tool: str, command: str) -> int:
    """``files``: file name -> text. With ``check`` print every stale file of ``out`` and return 1 if any (0
    otherwise); else write them all and return 0. ``tool`` prefixes messages, ``command`` regenerates."""
    stale = [name for name, text in files.items() if not (out / name).is_file() or (out / name).read_text() != text]
    if check:
        for name in stale:
            print(f"{tool}: {out / name} is out of date: run {command}", file=sys.stderr)
        return 1 if stale else 0
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text)
    print(f"{tool}: wrote {len(files)} files to {out}")
    return 0
