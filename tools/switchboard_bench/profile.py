"""py-spy during the steady window: where the edge's and a worker's CPU goes.

Records collapsed stacks (`py-spy record --format raw --function --nonblocking`, so the
target is never paused) for the window, then ranks functions by *self* samples (the
function was on top of the stack) and by *inclusive* samples (anywhere in the stack).
The raw files stay next to the JSON; `inferno`/`flamegraph.pl` or speedscope render them.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from .stack import Proc

TOP = 15


def summarise(raw: str, top: int = TOP) -> dict[str, Any]:
    self_n: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f.split(" (", 1)[0] + " (" + f.split(" (", 1)[1].rsplit("/", 1)[-1] if " (" in f else f
                  for f in stack.split(";")]
        total += n
        self_n[frames[-1]] += n
        for frame in set(frames):
            incl[frame] += n
    pct = lambda n: round(100 * n / total, 1) if total else 0.0  # noqa: E731
    return {
        "samples": total,
        "self_pct": [[name, pct(n)] for name, n in self_n.most_common(top)],
        "inclusive_pct": [[name, pct(n)] for name, n in incl.most_common(top * 2)],
    }


class Profiler:
    """on_window hook for `runner.run_level`: `start(stack)` at window open, `finish()` after it."""

    def __init__(self, out_dir: Path, level: int, duration_s: float) -> None:
        self.out_dir, self.level, self.duration_s = out_dir, level, duration_s
        self._running: list[tuple[Proc, Path, subprocess.Popen]] = []

    def start(self, stack: Any) -> None:
        pyspy = Path(sys.executable).with_name("py-spy")
        roles = [p for p in stack.procs if p.role in ("edge", "relay")] + [p for p in stack.procs
                                                                           if p.role == "worker"][:1]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for proc in roles:
            path = self.out_dir / f"profile-{self.level}-{proc.role}.txt"
            argv = [str(pyspy), "record", "--nonblocking", "--function", "--format", "raw", "--rate", "100",
                    "--pid", str(proc.pid), "--duration", str(max(1, int(self.duration_s))), "-o", str(path)]
            self._running.append((proc, path, subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                                               stderr=subprocess.DEVNULL)))

    def finish(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for proc, path, popen in self._running:
            try:
                popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
            key = proc.role if proc.role not in out else proc.name
            out[key] = {"raw": str(path), **(summarise(path.read_text()) if path.exists() else {"samples": 0})}
        self._running.clear()
        return out
