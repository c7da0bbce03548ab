"""Compiles a C kernel source from serve_kernels/csrc/ into a shared library on first use, caches it
by content, and loads it with ctypes.

The library is built for this machine's CPU (`-march=native`) with OpenMP. It links
libgomp.so.1; torch is imported first so that name resolves to the OpenMP runtime torch
has already loaded, and the kernels share torch's thread pool instead of starting a second
one. The cache key covers the source and csrc/'s headers, the flags, the compiler's
version and the CPU's feature flags, so a cache directory shared between machines never
hands one CPU another's build. Builds go to a temporary file renamed into place: processes
that build at the same time (tensor-parallel workers, test workers) each end with a
complete library.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch  # imported first: loads torch's libgomp.so.1 before any kernel library

SOURCE_DIR = Path(__file__).parent / "csrc"
COMPILE_FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11")
BUILD_TIMEOUT_S = 120


# Below this many elements of work a kernel runs on the calling thread alone, as torch's own
# CPU ops do (its GRAIN_SIZE): a parallel region wakes (or keeps spinning) a worker thread,
# which on a small model costs more than it saves and takes a core from the serving threads.
PARALLEL_GRAIN = 32768


def threads_for(work: int) -> int:
    """OpenMP threads for a kernel call doing `work` elements' worth of work."""
    return torch.get_num_threads() if work >= PARALLEL_GRAIN else 1


class NativeBuildError(RuntimeError):
    """The kernel could not be compiled or loaded here; the message says why."""


@dataclass(frozen=True)
class NativeLibrary:
    library: ctypes.CDLL
    path: Path


def compiler() -> str:
    """`$CC`, else `cc`."""
    return os.environ.get("CC", "cc")


def load_native_library(
    name: str, cache_dir: Path, extra_flags: tuple[str, ...] = ()
) -> NativeLibrary:
    """Build (once per content) and load serve_kernels/csrc/<name>.c; raises NativeBuildError.

    `extra_flags` go after the standard ones (tests build the portable paths with
    `-mno-avx512f` on a machine that has AVX-512)."""
    source = SOURCE_DIR / f"{name}.c"
    cc = shutil.which(compiler())
    if cc is None:
        raise NativeBuildError(
            f"no C compiler: {compiler()!r} is not on PATH (set CC, or install gcc)"
        )
    # Headers count too: a source may include any file of csrc/.
    headers = b"".join(path.read_bytes() for path in sorted(SOURCE_DIR.glob("*.h")))
    flags = (*COMPILE_FLAGS, *extra_flags)
    key = _cache_key(source.read_bytes() + headers, cc, flags)
    target = cache_dir / f"{name}-{key[:20]}.so"
    if not target.exists():
        try:
            _build(cc, flags, source, target)
        except OSError as error:  # an unwritable cache directory, a full disk
            raise NativeBuildError(f"cannot build into {cache_dir}: {error}") from error
    try:
        return NativeLibrary(ctypes.CDLL(str(target)), target)
    except OSError as error:
        raise NativeBuildError(f"cannot load {target}: {error}") from error


def _cache_key(source: bytes, cc: str, flags: tuple[str, ...]) -> str:
    digest = hashlib.sha256(source)
    digest.update(" ".join(flags).encode())
    digest.update(_compiler_version(cc).encode())
    digest.update(platform.machine().encode())
    digest.update(_cpu_flags().encode())
    return digest.hexdigest()


def _compiler_version(cc: str) -> str:
    try:
        return subprocess.run(
            [cc, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except OSError as error:
        raise NativeBuildError(f"cannot run the C compiler {cc}: {error}") from error


def _cpu_flags() -> str:
    """The feature flags -march=native compiles for (Linux); empty elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return ""


def _build(cc: str, flags: tuple[str, ...], source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=target.stem, suffix=".tmp")
    os.close(fd)
    command = [cc, *flags, "-o", temporary, str(source), "-lm"]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
        )
        if result.returncode != 0:
            raise NativeBuildError(
                f"compiling {source.name} failed ({' '.join(command)}):\n{result.stderr[-2000:]}"
            )
        os.replace(temporary, target)
    except subprocess.TimeoutExpired as error:
        raise NativeBuildError(f"compiling {source.name} took over {BUILD_TIMEOUT_S} s") from error
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
