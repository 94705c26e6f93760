"""Every fenced code block of README.md and docs/*.md runs as written, offline.

- ``python`` blocks run in a fresh interpreter with sockets refused and an empty torch hub cache.
  A statement carrying the marker ``# needs internet`` is left out (a reader offline cannot run it
  either); everything else must run (a block left empty is only parsed). A block that reads
  ``data/voc`` gets a tiny VOC + SBD ``train_aug`` layout there (what ``deeplab data prepare voc_aug
  --root data/voc`` makes).
- ``bash`` blocks: every ``deeplab ...`` command (also ``python -m deeplab``, ``torchrun ... -m
  deeplab``) parses with the real parser, once with its optional ``[--...]`` parts and once without;
  ``{a,b}`` stands for each choice; scripts and configs it names exist; no line is a stray argument
  fragment (a synopsis continues with ``\\``). ``deeplab models`` is cheap, so it runs.
"""

from __future__ import annotations

import ast
import contextlib
import io
import itertools
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from deeplab.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKER = "# needs internet"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
OPTIONAL = re.compile(r"(?<!\S)\[(-(?:[^\[\]]|\[[^\[\]]*\])*)\]")  # a synopsis' optional part: " [--flag VALUE]"
CHOICES = re.compile(r"^\{([\w-]+(?:,[\w-]+)+)\}$")  # "{voc,voc_aug}": one command per choice
# Runs before each python block: no network, no cached downloads to hide one.
PRELUDE = """
import socket
def _offline(*args, **kwargs):
    raise OSError("the docs test runs offline: mark a line that needs the network with '# needs internet'")
socket.socket.connect = _offline
socket.create_connection = _offline
"""


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the block's first code line
    lang: str
    code: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def blocks(lang: str) -> list[Block]:
    found = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            if match.group(1) == lang:
                line = text.count("\n", 0, match.start(2)) + 1
                found.append(Block(path, line, lang, match.group(2)))
    return found


def _pythonpath() -> str:
    """This checkout's package first, as in the test process."""
    return os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


def test_the_docs_have_blocks_of_both_kinds():
    assert len(blocks("python")) >= 3 and len(blocks("bash")) >= 10


# ------------------------------------------------------------------------------------------ python


def offline_source(code: str) -> str:
    """The block with every top-level statement that carries the marker blanked (line numbers kept)."""
    lines = code.splitlines()
    for statement in ast.parse(code).body:
        span = range(statement.lineno - 1, statement.end_lineno)
        if any(MARKER in lines[i] for i in span):
            for i in span:
                lines[i] = ""
    return "\n".join(lines) + "\n"


def test_offline_source_drops_whole_marked_statements():
    code = "a = 1\nb = f(1,\n      2)  # needs internet\nc = a\n"
    assert offline_source(code) == "a = 1\n\n\nc = a\n"


def _voc_aug(root: Path) -> None:
    from deeplab.data.voc import prepare_voc_aug
    from tests.data import layouts

    layouts.make_voc_aug_sources(root)
    prepare_voc_aug(root)


@pytest.mark.parametrize("block", blocks("python"), ids=str)
def test_python_block_runs_offline(block: Block, tmp_path: Path):
    source = "\n" * (block.line - 1) + offline_source(block.code)  # tracebacks give the doc's lines
    if not ast.parse(source).body:
        return  # every statement needs the network: nothing is left to run offline (it did parse)
    if '"data/voc"' in block.code:
        _voc_aug(tmp_path / "data" / "voc")
    code = tmp_path / "block.py"
    code.write_text(source)
    script = tmp_path / "run_block.py"
    script.write_text(f"{PRELUDE}\nsource = open({str(code)!r}).read()\n"
                      f"exec(compile(source, {str(block)!r}, 'exec'), {{'__name__': '__main__'}})\n")
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch_home"), "HF_HUB_OFFLINE": "1",
           "DEEPLAB_CACHE": str(tmp_path / "cache"), "PYTHONPATH": _pythonpath()}
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"{block} does not run:\n{result.stderr[-3000:]}"


# -------------------------------------------------------------------------------------------- bash


def shell_commands(code: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    commands, current = [], ""
    for raw in code.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip() and not current.lstrip().startswith("#"):
            commands.append(current.strip())
        current = ""
    return commands


def deeplab_args(command: str) -> list[str] | None:
    """The arguments after ``deeplab`` (or ``-m deeplab``), without the trailing comment; None for others."""
    words = shlex.split(re.sub(r"(?<=\s)\$\w+(?=\s|$)", "", command), comments=True)  # unquoted "$EMPTY": nothing
    for start, word in enumerate(words):
        if word == "deeplab" and (start == 0 or words[start - 1] == "-m"):
            return words[start + 1:]
    return None


def variants(command: str) -> list[str]:
    """With and without the optional ``[--...]`` parts."""
    return [OPTIONAL.sub(r"\1", command), OPTIONAL.sub("", command)]


def expand_choices(args: list[str]) -> list[list[str]]:
    options = [CHOICES.match(arg).group(1).split(",") if CHOICES.match(arg) else [arg] for arg in args]
    return [list(choice) for choice in itertools.product(*options)]


def test_shell_helpers():
    code = "deeplab serve --checkpoint a.pt \\\n    [--port 8000]   # comment\n# only a comment\nmake test\n"
    assert shell_commands(code) == ["deeplab serve --checkpoint a.pt      [--port 8000]   # comment", "make test"]
    assert variants("deeplab eval --checkpoint a.pt [--set eval.scales=[1.0]] [--json m.json]") == [
        "deeplab eval --checkpoint a.pt --set eval.scales=[1.0] --json m.json", "deeplab eval --checkpoint a.pt  "]
    assert deeplab_args('torchrun --nproc-per-node 8 -m deeplab train --config "$C" $RESUME  # x') == [
        "train", "--config", "$C"]
    assert deeplab_args("pip install deeplab") is None
    assert expand_choices(["data", "prepare", "{voc,ade20k}"]) == [["data", "prepare", "voc"],
                                                                    ["data", "prepare", "ade20k"]]


def _parse_error(args: list[str]) -> str | None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(args)
        except SystemExit as exit_:
            return err.getvalue().strip().splitlines()[-1] if exit_.code else None
    return None


@pytest.mark.parametrize("block", blocks("bash"), ids=str)
def test_shell_block_commands_parse(block: Block):
    for command in shell_commands(block.code):
        assert not re.match(r"[\[-]", command), f"{block}: {command!r} is not a command (a synopsis needs '\\')"
        for word in re.findall(r"(?:benchmarks|configs)/[\w./-]+\.(?:py|yaml)", command):
            assert (REPO / word).is_file(), f"{block}: {word} does not exist"
        for variant in variants(command):
            args = deeplab_args(variant)
            for expanded in expand_choices(args) if args is not None else []:
                error = _parse_error(expanded)
                assert error is None, f"{block}: `deeplab {' '.join(expanded)}` does not parse: {error}"


def test_deeplab_models_runs_as_documented(capsys):
    # In this process: tests/engine/test_cli_loop.py runs the command in a process of its own.
    assert "deeplab models" in (REPO / "README.md").read_text()
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "deeplabv3plus_resnet101" in out and "deeplabv3_resnet101.coco_voc" in out
