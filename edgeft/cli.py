"""The `edgeft` command line: thin typer wrappers that parse, call the library and print."""

from __future__ import annotations

import sys

import typer

from edgeft.errors import EdgeftError

app = typer.Typer(
    name="edgeft",
    help="Train, quantise and serve frozen-backbone fish-species classifiers on edge devices.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register_all() -> None:
    """Each stage owns a `commands.register(app)`; heavy imports stay inside the command bodies."""
    import importlib

    for mod in (
        "edgeft.data.commands",
        "edgeft.train.commands",
        "edgeft.export.commands",
        "edgeft.runtime.commands",
        "edgeft.runtime.serve_commands",
    ):
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name == mod:
                continue
            raise
        module.register(app)


_register_all()


def main() -> None:
    try:
        app()
    except EdgeftError as exc:
        from rich.console import Console

        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        sys.exit(2)
    except ModuleNotFoundError as exc:
        extras = {
            "torch": "train",
            "torchvision": "train",
            "timm": "train",
            "sklearn": "train",
            "matplotlib": "train",
            "safetensors": "train",
            "onnx": "train",
            "nncf": "quant",
            "fastapi": "serve",
            "uvicorn": "serve",
        }
        top = (exc.name or "").split(".")[0]
        if top not in extras:
            raise
        from rich.console import Console

        Console(stderr=True).print(
            f"[bold red]error:[/] this command needs {top}, which is not installed.\n"
            f'Fix: pip install "edgeft[{extras[top]}]"',
            highlight=False,
        )
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
