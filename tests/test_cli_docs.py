"""Every command documents itself with an example and is registered in one place; `--help`
does not import torch; library messages leave CLI flags to the CLI."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from clipdex.cli import cli
from conftest import TINY, make_images, run_cli


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_command_has_help_with_an_example(runner, name):
    command = cli.commands[name]
    assert command.help and "Example:" in command.help
    out = run_cli(runner, name, "--help").stdout
    assert "Example:" in out and "clipdex " + name in out
    for param in command.params:
        if param.param_type_name == "option" and param.name not in ("help",):
            assert param.help, f"{name} {param.name} lacks help"


def test_help_is_instant_because_heavy_imports_are_lazy():
    code = "import sys, clipdex.cli; print(sorted(m for m in ('torch', 'open_clip', 'faiss', 'sqlalchemy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_command_is_registered_in_one_place():
    """cli/__init__.py's COMMANDS is the group's whole list: no command defined in a cli
    module is left out, and no other module adds commands to the group."""
    import importlib
    import pkgutil

    import clipdex.cli
    from clipdex.cli import COMMANDS

    assert list(cli.commands.values()) == list(COMMANDS)
    folder = Path(clipdex.cli.__file__).parent
    for info in pkgutil.iter_modules([str(folder)]):
        module = importlib.import_module(f"clipdex.cli.{info.name}")
        defined = [v for v in vars(module).values() if isinstance(v, click.Command)]
        assert all(command in COMMANDS for command in defined if command is not cli), info.name
    for path in folder.glob("*.py"):
        if path.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            func = node.func if isinstance(node, ast.Call) else None
            registers = isinstance(func, ast.Attribute) and func.attr in ("add_command", "command")
            if registers and not (isinstance(func.value, ast.Name) and func.value.id == "click"):
                raise AssertionError(f"{path.name} registers a command; do it in COMMANDS")


FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]*")
#: Library modules whose output is a tour of the CLI: the demo ends with commands to try.
CLI_TOURS = {"demo.py"}


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def test_library_messages_name_no_cli_flags():
    """Outside cli/, no string a user may read (error messages, advice) names a `--flag`:
    the library says it in words and sets a `hint`; the CLI adds the flag. Docstrings, the
    argparse options of `python -m clipdex.samples` and the demo's closing tour aside."""
    import clipdex

    package = Path(clipdex.__file__).parent
    found = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        if relative.parts[0] == "cli" or str(relative) in CLI_TOURS:
            continue
        tree = ast.parse(path.read_text())
        skip = _docstrings(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument"
            ):
                skip |= {id(arg) for arg in node.args}
        for node in ast.walk(tree):
            text = node.value if isinstance(node, ast.Constant) else None
            if isinstance(text, str) and id(node) not in skip and FLAG.search(text):
                found.append(f"{relative}:{node.lineno}: {node.value!r}")
    assert not found, "\n".join(found)


def _failing_command(*params: click.Parameter) -> click.Command:
    from clipdex.cli.options import handle_errors
    from clipdex.errors import ClipdexError

    @handle_errors
    def callback(**_):
        raise ClipdexError(f"it failed ({_['hint']})", hint=_["hint"])

    return click.Command("x", params=[click.Option(["--hint"]), *params], callback=callback)


@pytest.mark.parametrize(
    ("hint", "flag"),
    [
        ("allow_empty", "--allow-empty"),
        ("wait", "--wait"),
        ("rebuild", "--rebuild"),
        ("other_model", "--rebuild"),
        ("checkpoint", "--checkpoint"),
    ],
)
def test_hints_name_a_flag_only_on_commands_that_have_it(runner, hint, flag):
    name = hint if hint != "other_model" else "rebuild"
    option = click.Option([flag], name, is_flag=True)
    with_it = runner.invoke(_failing_command(option), ["--hint", hint])
    without = runner.invoke(_failing_command(), ["--hint", hint])
    assert with_it.exit_code == without.exit_code == 1
    assert f"it failed ({hint}) (" in with_it.stderr and flag in with_it.stderr
    assert without.stderr.strip() == f"Error: it failed ({hint})"


def test_a_locked_index_says_so_in_words_and_the_cli_adds_wait(runner, tmp_path, index_dir):
    from clipdex.api import Index
    from clipdex.errors import IndexLockedError
    from clipdex.storage.lock import WriterLock

    make_images(tmp_path / "p", 3)
    run_cli(runner, "index", str(tmp_path / "p"), *TINY)
    lock = WriterLock(index_dir)
    lock.acquire()
    try:
        with Index(index_dir) as index, pytest.raises(IndexLockedError) as caught:
            index.add(tmp_path / "p")
        assert caught.value.hint == "wait" and "--" not in str(caught.value)
        for args in (("index", str(tmp_path / "p")), ("forget", str(tmp_path / "p"))):
            message = run_cli(runner, *args, expect=1).stderr.strip()
            assert message == f"Error: {caught.value} (--wait)"
    finally:
        lock.release()


def test_the_cli_reads_its_defaults_from_the_library():
    """One place for each default: no cli module writes a library default as a literal
    (help examples aside), and the CLI and the Python API agree on every one."""
    import inspect

    import clipdex.cli
    from clipdex.api import Index
    from clipdex.defaults import DEFAULT_INDEX_DIR, INDEX_ENV
    from clipdex.indexer.run import RunOptions
    from clipdex.models.builtin import DEFAULT_MODEL, TINY_MODEL
    from clipdex.models.device import DEFAULT_DEVICE, DEFAULT_PRECISION
    from clipdex.training.options import TrainOptions

    run, train = RunOptions(), TrainOptions()
    values = {run.batch_size, run.workers, run.fetch_workers, *vars(train).values()}
    names = {DEFAULT_INDEX_DIR, INDEX_ENV, DEFAULT_MODEL, TINY_MODEL, DEFAULT_DEVICE}
    written = []
    for path in Path(clipdex.cli.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        skip = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "default":
                value = getattr(node.value, "value", None)
                literal = isinstance(node.value, ast.Constant) and not isinstance(value, bool)
                if literal and value is not None and value in values:
                    written.append(f"{path.name}:{node.value.lineno}: default={value!r}")
            if isinstance(node, ast.Constant) and id(node) not in skip and node.value in names:
                written.append(f"{path.name}:{node.lineno}: {node.value!r}")
    assert not written, "\n".join(written)

    index = {p.name: p.default for p in cli.commands["index"].params}
    add = inspect.signature(Index.add).parameters
    for name in ("batch_size", "workers", "fetch_workers"):
        assert index[name] == add[name].default == getattr(run, name)
    opened = inspect.signature(Index.__init__).parameters
    assert index["device"] == opened["device"].default == DEFAULT_DEVICE
    assert index["precision"] == opened["precision"].default == DEFAULT_PRECISION
    assert index["index_dir"] == DEFAULT_INDEX_DIR
    finetune = {p.name: p.default for p in cli.commands["finetune"].params}
    assert all(finetune[name] == value for name, value in vars(train).items() if name in finetune)
