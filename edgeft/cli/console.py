"""Terminal output for every command: one console style, markup-safe messages, progress through a Reporter.

Library functions never print; they take a `Reporter` (edgeft.core.progress). Commands pass `RichReporter`,
which shows a transient progress bar on stderr, so stdout stays clean for tables and JSON lines.
Every piece of text that comes from data (paths, class names, messages) is escaped: rich markup must never
swallow `[train]` or `[default: ...]`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from edgeft.core.progress import Reporter

_OUT: Console | None = None
_ERR: Console | None = None


def out() -> Console:
    """stdout console: tables and results."""
    global _OUT
    if _OUT is None:
        _OUT = Console(highlight=False)
    return _OUT


def err() -> Console:
    """stderr console: progress, notes, warnings, errors."""
    global _ERR
    if _ERR is None:
        _ERR = Console(stderr=True, highlight=False)
    return _ERR


def say(text: str, style: str | None = None, *, stderr: bool = False) -> None:
    """Print plain text (never interpreted as markup), optionally in one style."""
    (err() if stderr else out()).print(escape(text), style=style, soft_wrap=True)


def labelled(label: str, text: str, style: str = "bold", *, stderr: bool = False) -> None:
    """'Label: text' with the label styled and the text escaped."""
    (err() if stderr else out()).print(f"[{style}]{escape(label)}:[/] {escape(text)}", soft_wrap=True)


def note(text: str) -> None:
    labelled("note", text, "yellow", stderr=True)


def warn(text: str) -> None:
    labelled("warning", text, "bold yellow", stderr=True)


def error(text: str) -> None:
    labelled("error", text, "bold red", stderr=True)


def outputs(label: str, path: Any, *, stderr: bool = False) -> None:
    """The closing line of every command: where its outputs are."""
    labelled(label, str(path), "bold green", stderr=stderr)


class RichReporter(Reporter):
    """A Reporter that draws one transient progress bar per phase on stderr and prints notes above it."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.current: Any = None

    def task(self, name: str, total: int | None = None) -> None:
        if self.current is not None:
            self.progress.update(self.current, visible=False)
        self.current = self.progress.add_task(escape(name), total=total)

    def advance(self, n: int = 1) -> None:
        if self.current is not None:
            self.progress.advance(self.current, n)

    def update(self, done: int, total: int | None = None) -> None:
        if self.current is not None:
            self.progress.update(self.current, completed=done, total=total)

    def note(self, text: str) -> None:
        self.progress.console.print(f"[yellow]note:[/] {escape(text)}", soft_wrap=True)


@contextlib.contextmanager
def reporting() -> Iterator[RichReporter]:
    """Progress on stderr for the duration of a library call."""
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(bar_width=None),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err(), transient=True, expand=False) as progress:
        yield RichReporter(progress)
