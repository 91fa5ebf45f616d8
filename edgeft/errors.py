"""User-facing errors: the CLI prints them as one paragraph, without a traceback."""

from __future__ import annotations

from pathlib import Path


class EdgeftError(Exception):
    """An error a user can fix: it names the file at fault and the fix."""

    def __init__(self, message: str, *, path: str | Path | None = None, fix: str | None = None):
        self.message = message
        self.path = str(path) if path is not None else None
        self.fix = fix
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.fix:
            text += f"\nFix: {self.fix}"
        return text
