"""Host memory settings of CPU engine processes (serve_app/engine/host_memory.py): the kernel's
transparent-huge-page mode as read from sysfs, whether this process's malloc uses huge
pages, the one-time hint, and that the glibc tunable the Makefile sets really gives a
process huge pages on this machine."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from serve_app.engine import host_memory


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        ("always [madvise] never\n", "madvise"),
        ("[always] madvise never\n", "always"),
        ("always madvise [never]\n", "never"),
        ("garbled\n", None),
    ],
)
def test_thp_mode_is_the_bracketed_word(text, mode, tmp_path, monkeypatch):
    path = tmp_path / "enabled"
    path.write_text(text)
    monkeypatch.setattr(host_memory, "THP_MODE_FILE", path)
    assert host_memory.transparent_huge_page_mode() == mode


def test_unreadable_thp_mode_is_none(tmp_path, monkeypatch):
    monkeypatch.setattr(host_memory, "THP_MODE_FILE", tmp_path / "missing")
    assert host_memory.transparent_huge_page_mode() is None


@pytest.mark.parametrize(
    ("mode", "tunables", "expected"),
    [
        ("always", None, True),
        ("madvise", None, False),
        ("madvise", "glibc.malloc.hugetlb=1", True),
        ("madvise", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", True),
        ("madvise", "glibc.malloc.hugetlb=0", False),
        ("never", "glibc.malloc.hugetlb=1", False),
    ],
)
def test_malloc_uses_huge_pages(mode, tunables, expected, monkeypatch):
    monkeypatch.setattr(host_memory, "transparent_huge_page_mode", lambda: mode)
    if tunables is None:
        monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    else:
        monkeypatch.setenv("GLIBC_TUNABLES", tunables)
    assert host_memory.malloc_uses_huge_pages() is expected


def test_hint_names_the_tunable_only_where_it_would_help(monkeypatch):
    monkeypatch.setattr(host_memory, "transparent_huge_page_mode", lambda: "madvise")
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    host_memory.huge_pages_hint.cache_clear()
    try:
        assert "GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in host_memory.huge_pages_hint()
        monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
        host_memory.huge_pages_hint.cache_clear()
        assert host_memory.huge_pages_hint() is None
        monkeypatch.setattr(host_memory, "transparent_huge_page_mode", lambda: "never")
        host_memory.huge_pages_hint.cache_clear()
        assert host_memory.huge_pages_hint() is None, "nothing to gain: THP is off"
    finally:
        host_memory.huge_pages_hint.cache_clear()


ALLOCATE_AND_REPORT = """
import ctypes
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
size = 64 << 20
pointer = libc.malloc(size)
ctypes.memset(pointer, 1, size)
for line in open("/proc/self/smaps_rollup"):
    if line.startswith("AnonHugePages:"):
        print(int(line.split()[1]))
"""


def python_with(env: dict[str, str], code: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter of this venv with environment `env`."""
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )


@pytest.mark.skipif(
    host_memory.transparent_huge_page_mode() not in ("always", "madvise")
    or not os.path.exists("/proc/self/smaps_rollup"),
    reason="needs Linux with transparent huge pages in 'always' or 'madvise' mode",
)
def test_the_tunable_gives_a_process_huge_pages():
    """What the Makefile's `run` and `bench` targets rely on, on this machine."""

    def huge_kib(tunables: str | None) -> int:
        env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
        if tunables is not None:
            env["GLIBC_TUNABLES"] = tunables
        return int(python_with(env, ALLOCATE_AND_REPORT).stdout.split()[-1])

    assert huge_kib(host_memory.HUGE_PAGE_TUNABLE) >= 32 << 10, "most of 64 MiB in huge pages"
    if host_memory.transparent_huge_page_mode() == "madvise":
        assert huge_kib(None) == 0, "without the tunable, no huge pages in 'madvise' mode"


SHOW_HINT = "from serve_app.engine.host_memory import huge_pages_hint; huge_pages_hint()"


@pytest.mark.skipif(
    host_memory.transparent_huge_page_mode() != "madvise",
    reason="the hint exists only where THP is in 'madvise' mode",
)
def test_the_huge_pages_note_is_shown_once_per_machine_not_by_every_command(tmp_path):
    """Before: every engine command (engine.cli, bench scripts) printed it."""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env["SERVE_APP_CACHE"] = str(tmp_path)  # this test's "machine"

    def stderr_of_an_engine_process() -> str:
        return python_with(env, SHOW_HINT).stderr

    first = stderr_of_an_engine_process()
    assert "note (shown once)" in first and host_memory.HUGE_PAGE_TUNABLE in first
    assert len(first.splitlines()) == 1
    assert stderr_of_an_engine_process() == ""
    assert stderr_of_an_engine_process() == ""
