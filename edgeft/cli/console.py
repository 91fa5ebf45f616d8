"""Terminal output for every command: one console style, markup-safe messages, progress through a Reporter.

Library functions never print; they take a `Reporter` (edgeft.core.progress). Commands pass `RichReporter`,
which shows a transient progress bar on stderr, so stdout stays clean for tables and JSON lines.
Every piece of text that comes from data (paths, class names, messages) is escaped: rich markup must never
swallow `[train]` or `[default: ...]`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Column

from edgeft.core.progress import Reporter

_OUT: tuple[str | None, Console] | None = None
_ERR: tuple[str | None, Console] | None = None


def out() -> Console:
    """stdout console: tables and results (rebuilt when $COLUMNS changes, so a resized pane is honoured)."""
    global _OUT
    columns = os.environ.get("COLUMNS")
    if _OUT is None or _OUT[0] != columns:
        _OUT = (columns, Console(highlight=False))
    return _OUT[1]


def err() -> Console:
    """stderr console: progress, notes, warnings, errors."""
    global _ERR
    columns = os.environ.get("COLUMNS")
    if _ERR is None or _ERR[0] != columns:
        _ERR = (columns, Console(stderr=True, highlight=False))
    return _ERR[1]


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


@dataclass(frozen=True)
class Col:
    """A table column: `drop` ranks which columns go first when the terminal is narrow (0: never dropped);
    `split` is a character where a long cell may break onto a second line (e.g. backend/artifact at '/')."""

    header: str
    justify: str = "right"
    drop: int = 0
    split: str | None = None


def _stack(cell: str, at: str) -> str:
    head, sep, tail = cell.partition(at)
    return f"{head}{sep}\n{tail}" if sep and tail else cell


def fitted_table(title: str, columns: Sequence[Col], rows: Sequence[Sequence[str]], width: int | None = None) -> Any:
    """A table that fits `width` (default: the console's) without splitting a word: columns are dropped by rank
    first (rows stay one line), then long names break at their `split` character. Cells hold rich markup; the
    title is escaped."""
    from rich import box
    from rich.table import Table

    width = width or out().width
    keep = list(range(len(columns)))
    stacked = False

    def build() -> Table:
        table = Table(
            title=escape(title), box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False, padding=(0, 1, 0, 0)
        )
        for i in keep:
            c = columns[i]
            table.add_column(c.header, justify=c.justify, no_wrap=True)  # type: ignore[arg-type]
        for row in rows:
            cells = []
            for i in keep:
                split = columns[i].split
                cells.append(_stack(row[i], split) if stacked and split else row[i])
            table.add_row(*cells)
        return table

    def natural(table: Table) -> int:
        console = out()
        return table.__rich_measure__(console, console.options.update_width(10_000)).maximum

    table = build()
    while natural(table) > width:
        droppable = [i for i in keep if columns[i].drop > 0]
        if droppable:  # secondary columns go first, so rows stay one line
            keep.remove(max(droppable, key=lambda i: (columns[i].drop, i)))
        elif not stacked and any(columns[i].split for i in keep):
            stacked = True
        else:
            break
        table = build()
    return table


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
    # at 80 columns the counts and the time stay whole: a long description is cut with an ellipsis first
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}", table_column=Column(no_wrap=True, overflow="ellipsis", max_width=36)),
        BarColumn(bar_width=20),
        MofNCompleteColumn(table_column=Column(no_wrap=True)),
        TimeElapsedColumn(table_column=Column(no_wrap=True)),
    )
    with Progress(*columns, console=err(), transient=True, expand=False) as progress:
        yield RichReporter(progress)
