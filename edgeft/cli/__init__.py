"""The `edgeft` command line (typer). Each module registers one family of commands."""
