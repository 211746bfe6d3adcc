"""`python -m stepscope` runs the CLI."""

from stepscope.cli import main

main()
