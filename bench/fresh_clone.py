"""How long a newcomer waits: a clean clone of this repository to a healthy `make run` (the
app answering a completion) and to the first test result of `make test`, as the README's
two commands do it on a fresh machine. Prints one table.

    .venv/bin/python -m bench.fresh_clone [--cold-cache] [--keep]

`--cold-cache` gives uv and pip empty caches, as on a new machine (every wheel is
downloaded); without it their caches on this machine are reused. It needs the ports of
`make run` (8000, 6379, 8265, 8080) free.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 600
API = "http://127.0.0.1:8000/v1"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run(command, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def stop(process: subprocess.Popen) -> None:
    """Ctrl-C to the process group, as a terminal sends it; then make sure."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=90)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def seconds_to_first_completion(clone: Path, env: dict[str, str]) -> float:
    """`make run` until the API answers a completion."""
    started = time.monotonic()
    process = subprocess.Popen(
        ["make", "run"],
        cwd=clone,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while time.monotonic() - started < RUN_TIMEOUT_S:
            if process.poll() is not None:
                raise RuntimeError(f"make run exited with {process.returncode}")
            try:
                response = httpx.post(
                    f"{API}/completions",
                    json={"model": "tiny", "prompt": "hello", "max_tokens": 4},
                    timeout=30,
                )
                if response.status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"no completion within {RUN_TIMEOUT_S} s")
    finally:
        stop(process)


def seconds_to_first_test(clone: Path, env: dict[str, str]) -> float:
    """`make test` (lint, collection, then the suite) until pytest reports its first test:
    the first result character after a test file's name (`tests/... .`)."""
    started = time.monotonic()
    process = subprocess.Popen(
        ["make", "test", "PYTEST_ARGS=-p no:cacheprovider"],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        line = ""
        while char := process.stdout.read(1):
            line = "" if char == "\n" else line + char
            if re.fullmatch(r"tests/\S+\.py [.FEsx]", line):
                return time.monotonic() - started
        raise RuntimeError(f"make test ended ({process.wait()}) before any test ran")
    finally:
        stop(process)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cold-cache", action="store_true", help="empty uv and pip caches")
    parser.add_argument("--keep", action="store_true", help="keep the clone (path printed)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fresh-clone-"))
    clone = work / "serve-app"
    env = {key: value for key, value in os.environ.items() if not key.startswith("VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join(
        part for part in env["PATH"].split(os.pathsep) if ".venv" not in part
    )
    if args.cold_cache:
        env["UV_CACHE_DIR"] = str(work / "uv-cache")
        env["PIP_NO_CACHE_DIR"] = "1"
    try:
        started = time.monotonic()
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
        setup_s = timed(["make", "setup"], clone, env)
        clone_and_setup_s = time.monotonic() - started
        run_s = seconds_to_first_completion(clone, env)
        test_s = seconds_to_first_test(clone, env)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores), Python {sys.version.split()[0]}")
    print(f"caches: {'empty (as on a new machine)' if args.cold_cache else 'this machine'}")
    print("| step | seconds |")
    print("|---|---|")
    print(f"| clone + `make setup` (.venv from the lock) | {clone_and_setup_s:.0f} |")
    print(f"| of which `make setup` | {setup_s:.0f} |")
    print(f"| `make run` in the set-up clone, to a completion answered | {run_s:.0f} |")
    print(f"| `make test` in the set-up clone, to its first test result | {test_s:.0f} |")
    print(f"| clean clone to a healthy `make run` | {clone_and_setup_s + run_s:.0f} |")
    print(f"| clean clone to the first test of `make test` | {clone_and_setup_s + test_s:.0f} |")
    if args.keep:
        print(f"clone kept at {clone}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
