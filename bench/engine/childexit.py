"""How a child process's end is put into one line: shared by profile workers, sweep children and Ray tasks."""

from __future__ import annotations

import signal


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (its type's name when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def is_user_error(exc: BaseException) -> bool:
    """A BenchError: already worded for users (by name, so a child need not import bench.errors)."""
    return "BenchError" in {c.__name__ for c in type(exc).__mro__}


def one_line_typed(exc: BaseException) -> str:
    """As one_line, prefixed with the exception's type unless it is a BenchError."""
    text = one_line(exc)
    return text if is_user_error(exc) else f"{type(exc).__name__}: {text}"


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def exit_text(rc: int | None, who: str) -> str:
    """Why `who` ended, from its exit status alone (negative = killed by that signal)."""
    if rc is None:
        return f"the {who} did not run"
    if rc < 0:
        return f"the {who} died of {signal_name(-rc)}"
    return f"the {who} exited with code {rc} without saying why"
