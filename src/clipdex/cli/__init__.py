"""The `clipdex` command: parse options, call the library, format results. Nothing else.

One module a command (index.py, search.py, ...), shared options in options.py; every
command is registered here, in COMMANDS, and its module imported only when it is used. Results go to stdout, progress and errors to
stderr. Library errors (clipdex.errors) become one line and exit code 1; usage errors
exit 2, as click does.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from importlib import import_module

import click


class LazyCommands(Sequence[click.Command]):
    """Commands named by (module, attribute), each imported the first time it is used: a
    run of `clipdex search` imports cli/search.py and no other command's module."""

    def __init__(self, *targets: tuple[str, str]):
        self.targets = targets
        self.loaded: dict[int, click.Command] = {}

    def __getitem__(self, position):  # type: ignore[override]
        if isinstance(position, slice):
            return [self[i] for i in range(len(self))[position]]
        if position not in self.loaded:
            module, attribute = self.targets[position]
            self.loaded[position] = getattr(import_module(module), attribute)
        return self.loaded[position]

    def __len__(self) -> int:
        return len(self.targets)

    def names(self) -> list[str]:
        """Every command's name, without importing any (the name is the module's)."""
        return [module.rsplit(".", 1)[1].rstrip("_") for module, _ in self.targets]


class CommandTable(Mapping[str, click.Command]):
    """The group's name -> command table over LazyCommands (click reads `group.commands`)."""

    def __init__(self, commands: LazyCommands):
        self.commands = commands

    def __getitem__(self, name: str) -> click.Command:
        names = self.commands.names()
        if name not in names:
            raise KeyError(name)
        return self.commands[names.index(name)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.commands.names())

    def __len__(self) -> int:
        return len(self.commands)


#: Every command of `clipdex`, registered here and nowhere else (module, attribute); a
#: command's name is its module's (less a trailing `_`: `import_` is `clipdex import`).
COMMANDS = LazyCommands(
    ("clipdex.cli.index", "index_command"),
    ("clipdex.cli.forget", "forget_command"),
    ("clipdex.cli.search", "search_command"),
    ("clipdex.cli.duplicates", "duplicates_command"),
    ("clipdex.cli.status", "status_command"),
    ("clipdex.cli.models", "models_command"),
    ("clipdex.cli.check", "check_command"),
    ("clipdex.cli.classify", "classify_command"),
    ("clipdex.cli.finetune", "finetune_command"),
    ("clipdex.cli.demo", "demo_command"),
    ("clipdex.cli.serve", "serve_command"),
    ("clipdex.cli.export", "export_command"),
    ("clipdex.cli.import_", "import_command"),
)


@click.group(
    commands=CommandTable(COMMANDS),
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(package_name="clipdex")
def cli() -> None:
    """Zero-shot image search: index images with CLIP, then search them by text or image.

    \b
    Example:
        clipdex index ~/Photos
        clipdex search "a dog on the beach" -k 5
    """


def main() -> None:
    cli(prog_name="clipdex")


if __name__ == "__main__":  # pragma: no cover
    main()
