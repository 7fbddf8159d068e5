"""The examples in README.md and docs/ stay in step with the code.

Running them would train models for minutes, so each ```python block is parsed and every name it imports
from distill is looked up, and each ``distill ...`` command of a shell block is parsed by the CLI's own
parser: a renamed function, module or flag fails here, not in a user's first copy-paste.
"""
import ast
import importlib
import re
import shlex
import textwrap
from pathlib import Path

import pytest

from distill.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _blocks(*languages: str):
    """``(page:line, code)`` of every fenced block whose language is one of ``languages``."""
    for page in PAGES:
        language, start, lines = None, 0, []
        for number, line in enumerate(page.read_text().splitlines(), 1):
            fence = re.match(r"^\s*```(\w*)", line)
            if fence and language is None:
                language, start, lines = fence.group(1), number, []
            elif fence:
                if language in languages:
                    yield f"{page.relative_to(ROOT)}:{start}", "\n".join(lines) + "\n"
                language = None
            elif language is not None:
                lines.append(line)


BLOCKS = list(_blocks("python"))


def _commands():
    """``distill`` commands of the shell blocks (continued lines joined, comments cut, ``a && b`` split);
    synopsis lines with ``[optional]`` parts are not commands."""
    for where, block in _blocks("bash", "sh", ""):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split(" #")[0].split("&&"):
                found = re.match(r"^(?:\w+=\S+ )*distill (.*)$", part.strip())
                if found and "[" not in found.group(1):
                    yield where, found.group(1)


COMMANDS = list(_commands())


def test_the_docs_have_python_examples():
    assert len(BLOCKS) >= 10


def _missing_names(code: str) -> list[str]:
    missing = []
    for node in ast.walk(ast.parse(textwrap.dedent(code))):
        if isinstance(node, ast.Import):
            wanted = [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            wanted = [(node.module, alias.name) for alias in node.names]
        else:
            continue
        for module, name in wanted:
            if module.split(".")[0] != "distill":
                continue
            try:
                found = importlib.import_module(module)
            except ImportError:
                missing.append(module)
                continue
            if name and not hasattr(found, name):
                try:  # a submodule not yet imported by its package
                    importlib.import_module(f"{module}.{name}")
                except ImportError:
                    missing.append(f"{module}.{name}")
    return missing


@pytest.mark.parametrize("where, code", BLOCKS, ids=[where for where, _ in BLOCKS])
def test_example_parses_and_its_distill_imports_exist(where, code):
    assert _missing_names(code) == []


def test_a_renamed_function_is_caught():
    assert _missing_names("from distill.losses import kd_loss, no_such_loss\nimport distill.nowhere\n") == [
        "distill.losses.no_such_loss", "distill.nowhere"]


def test_the_docs_have_commands():
    assert len(COMMANDS) >= 10


@pytest.mark.parametrize("where, command", COMMANDS, ids=[f"{w} {c}" for w, c in COMMANDS])
def test_command_parses(where, command):
    build_parser().parse_args(shlex.split(command))  # argparse exits on an unknown flag or a missing argument
