"""The README stays true: its quick start runs, and its command lines on bundled data sets succeed."""

import re
import shlex
from pathlib import Path

import pytest

from mixedfx.cli import main
from mixedfx.datasets import NAMES

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.DOTALL)


def _blocks(language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(README) if lang == language]


def _bundled_command_lines() -> list[str]:
    """``mixedfx SUBCOMMAND DATASET ...`` lines (continuations joined) whose data set is bundled."""
    lines = []
    for body in _blocks("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line.split("&&")[-1])
            if words[:1] == ["python"] and words[1:3] == ["-m", "mixedfx"]:
                words = ["mixedfx"] + words[3:]
            if len(words) > 2 and words[0] == "mixedfx" and words[2] in NAMES:
                lines.append(" ".join(shlex.quote(w) for w in words))
    return lines


def test_quick_start_runs():
    quick_start = _blocks("python")[0]
    assert "datasets.load_exam()" in quick_start
    namespace: dict = {}
    exec(compile(quick_start, "README.md quick start", "exec"), namespace)  # our own README, not user input
    assert namespace["fit"].converged


def test_readme_has_command_lines_to_check():
    assert len(_bundled_command_lines()) >= 7


@pytest.mark.parametrize("line", _bundled_command_lines())
def test_readme_command_line_succeeds(line, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the report example writes its file here
    assert main(shlex.split(line)[1:]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out or list(tmp_path.iterdir())
