"""`python -m clipdex` runs the CLI."""

from .cli import main

main()
