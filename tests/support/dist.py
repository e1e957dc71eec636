"""The distribution built once per test process: `python -m build`'s sdist and wheel."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Dist:
    """The built sdist and wheel, and what the build printed."""

    sdist: Path
    wheel: Path
    log: str


_built: list[Dist] = []


def built_dist(outdir: Path) -> Dist:
    """Build the sdist, then the wheel from it (as `make dist` does), once per process.

    No build isolation: the build backend is the one pinned in constraints.txt, already
    installed, so the build needs no network.
    """
    if not _built:
        done = subprocess.run(
            [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(outdir), str(ROOT)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        [sdist] = outdir.glob("onceflow-*.tar.gz")
        [wheel] = outdir.glob("onceflow-*.whl")
        _built.append(Dist(sdist, wheel, done.stdout + done.stderr))
    return _built[0]
