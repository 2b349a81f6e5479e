"""`python -m clipdex` runs the CLI."""

from clipdex.cli import main

main()
