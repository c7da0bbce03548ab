"""Run a Python snippet as a user would: a fresh interpreter of this venv whose cwd (and so
sys.path[0]) is the repository root. For import-time checks that a test process, with its
own imports already done, cannot make."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_python_in_repo(script: str, timeout_s: float = 180) -> str:
    """The snippet's stdout; fails the calling test with the end of stderr if it fails."""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=timeout_s
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout
