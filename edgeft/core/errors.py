"""User-facing errors: the CLI prints them as one paragraph, without a traceback, and exits with `exit_code`.

Exit codes (the same for every command): 0 ok, 1 a gate failed (the outputs were written and say why),
2 bad usage or bad data (nothing useful was written), 130 interrupted.
"""

from __future__ import annotations

from pathlib import Path

EXIT_OK = 0
EXIT_GATE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class EdgeftError(Exception):
    """An error a user can fix: it names the file at fault and the fix."""

    exit_code = EXIT_USAGE

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


class GateFailed(EdgeftError):
    """A gate (parity, export acceptance) decided against: the report was written; exit code 1."""

    exit_code = EXIT_GATE


class ImageDecodeError(EdgeftError):
    """An input that is not a readable image; `reason` is a short machine-friendly tag."""

    def __init__(self, message: str, *, reason: str, path: str | Path | None = None):
        self.reason = reason
        super().__init__(message, path=path, fix="replace or remove the file; it is skipped")
