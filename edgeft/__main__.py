"""`python -m edgeft` is the `edgeft` command (also what `torchrun ... -m edgeft train ...` runs on each rank)."""

from edgeft.cli.app import main

main()
