"""The `clipdex` command: parse options, call the library, format results. Nothing else.

One module a command (index.py, search.py, ...), shared options in options.py; every
command is registered here, in COMMANDS. Results go to stdout, progress and errors to
stderr. Library errors (clipdex.errors) become one line and exit code 1; usage errors
exit 2, as click does.
"""

from __future__ import annotations

import click

from clipdex.cli.check import check_command
from clipdex.cli.classify import classify_command
from clipdex.cli.demo import demo_command
from clipdex.cli.duplicates import duplicates_command
from clipdex.cli.export import export_command
from clipdex.cli.finetune import finetune_command
from clipdex.cli.forget import forget_command
from clipdex.cli.import_ import import_command
from clipdex.cli.index import index_command
from clipdex.cli.models import models_command
from clipdex.cli.search import search_command
from clipdex.cli.serve import serve_command
from clipdex.cli.status import status_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clipdex")
def cli() -> None:
    """Zero-shot image search: index images with CLIP, then search them by text or image.

    \b
    Example:
        clipdex index ~/Photos
        clipdex search "a dog on the beach" -k 5
    """


#: Every command of `clipdex`, registered here and nowhere else.
COMMANDS: tuple[click.Command, ...] = (
    index_command,
    forget_command,
    search_command,
    duplicates_command,
    status_command,
    models_command,
    check_command,
    classify_command,
    finetune_command,
    demo_command,
    serve_command,
    export_command,
    import_command,
)

for _command in COMMANDS:
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="clipdex")


if __name__ == "__main__":  # pragma: no cover
    main()
