"""Fail-fast errors of our commands are one line naming the field and the fix; the traceback
only with SERVE_APP_DEBUG=1 (serve_app/cli_errors.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from serve_app.cli_errors import one_line, report
from serve_app.config import DEBUG_ENV, AppConfigError

REPO = Path(__file__).resolve().parents[2]


def test_a_message_over_several_lines_is_printed_as_one(capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    error = AppConfigError("invalid app config:\n  engine.block_size: must be one of 8, 16")
    assert report("serve run", error) == 1
    assert capsys.readouterr().err == (
        "serve run: invalid app config: engine.block_size: must be one of 8, 16\n"
    )
    assert one_line(RuntimeError()) == "RuntimeError"  # a message-less error still says what


@pytest.mark.parametrize("value", ["1", "yes"])
def test_the_debug_setting_prints_the_traceback_before_the_line(capsys, monkeypatch, value):
    monkeypatch.setenv(DEBUG_ENV, value)
    try:
        raise AppConfigError("invalid app config: model: required")
    except AppConfigError as error:
        report("serve run", error)
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert err.splitlines()[-1] == "serve run: invalid app config: model: required"


RAISE = """
from serve_app.cli_errors import one_line_on_exit
from serve_app.config import AppConfigError
one_line_on_exit("serve run", AppConfigError)
one_line_on_exit("serve run", AppConfigError)  # again, as build_app does on each call
raise {error}
"""


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != DEBUG_ENV} | env
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=environment, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip


def test_an_uncaught_error_of_the_given_types_ends_the_process_in_one_line():
    """What `serve run serve_app.app:build_app ...` shows: Ray's CLI lets build_app's error
    reach the top of its process."""
    done = run_python(RAISE.format(error='AppConfigError("invalid app config: seed: x")'))
    assert done.returncode == 1
    assert done.stderr == "serve run: invalid app config: seed: x\n"
    debug = run_python(RAISE.format(error='AppConfigError("bad")'), **{DEBUG_ENV: "1"})
    assert "Traceback" in debug.stderr and debug.stderr.endswith("serve run: bad\n")


def test_any_other_error_keeps_its_traceback():
    done = run_python(RAISE.format(error='KeyError("a bug of ours")'))
    assert done.returncode == 1
    assert done.stderr.startswith("Traceback") and "KeyError: 'a bug of ours'" in done.stderr
