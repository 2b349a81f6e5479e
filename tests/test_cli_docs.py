"""Every command documents itself with an example, and `--help` does not import torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from clipdex.cli import cli
from conftest import run_cli


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
