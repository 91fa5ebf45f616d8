"""How library functions report progress and notes without knowing about terminals.

A long function takes `reporter: Reporter | None` and calls `task`, `advance` and `note`; the CLI passes
a rich-backed Reporter, tests and other callers pass nothing (silent) or a recording one.
"""

from __future__ import annotations


class Reporter:
    """Silent by default; subclass to show progress (the CLI) or to record it (tests)."""

    def task(self, name: str, total: int | None = None) -> None:
        """A new phase begins; `total` units of work follow (None: unknown)."""

    def advance(self, n: int = 1) -> None:
        """n more units of the current phase are done."""

    def update(self, done: int, total: int | None = None) -> None:
        """Cumulative progress of the current phase: `done` of `total` units (callbacks of that shape plug in)."""

    def note(self, text: str) -> None:
        """A one-line message the user should read (a skipped format, a small calibration set)."""


SILENT = Reporter()


def or_silent(reporter: Reporter | None) -> Reporter:
    return reporter if reporter is not None else SILENT
