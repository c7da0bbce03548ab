"""What our commands print when they stop on an error the user can fix: one line naming the
field and the fix, where Python would print a ~20-line traceback that ends in it. The
traceback is one setting away: SERVE_APP_DEBUG=1 (serve_app/config.py).

`report` serves a command's own main() (preflight, the preemption watcher,
dashboards.push). `one_line_on_exit` serves `serve run serve_app.app:build_app ...`: Ray's
CLI calls build_app and catches nothing, so the error ends the process through
sys.excepthook.
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass
from types import TracebackType

from serve_app.config import debug_enabled


def one_line(error: BaseException) -> str:
    """The error's message on one line (its type's name when it has none)."""
    return " ".join(str(error).split()) or type(error).__name__


def report(prog: str, error: BaseException) -> int:
    """Print `prog: message` to stderr (after the traceback with SERVE_APP_DEBUG=1); returns
    the exit status, 1."""
    if debug_enabled():
        traceback.print_exception(error)
    print(f"{prog}: {one_line(error)}", file=sys.stderr)
    return 1


@dataclass(frozen=True)
class _OneLineHook:
    prog: str
    types: tuple[type[BaseException], ...]
    previous: object  # the hook there was, for every other error

    def __call__(
        self, kind: type[BaseException], error: BaseException, tb: TracebackType | None
    ) -> None:
        if issubclass(kind, self.types):
            report(self.prog, error.with_traceback(tb))
        else:
            self.previous(kind, error, tb)  # type: ignore[operator]


def one_line_on_exit(prog: str, *types: type[BaseException]) -> None:
    """An uncaught error of `types` ends this process with `report`'s line instead of a
    traceback; any other error keeps the hook there was. Once per process."""
    if not isinstance(sys.excepthook, _OneLineHook):
        sys.excepthook = _OneLineHook(prog, types, sys.excepthook)
