"""Entry point for ``python -m flowsr_cli``."""

from flowsr_cli.cli import main

main()
