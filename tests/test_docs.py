"""The documentation holds: the Python API page's examples run (each ```python block of docs/python-api.md, in order,
in one namespace, in a folder holding the repository's examples/ beside small labelled folders made here); every
`fer` command the README and docs/ show is one fer's parser reads; the README stays a front page."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from fer_cli.cli.app import app

from .synthetic import make_labelled_folder

REPO = Path(__file__).resolve().parents[1]


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


def test_the_python_api_page_runs(tmp_path, monkeypatch, capsys):
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    make_labelled_folder(tmp_path / "labelled", per_class=2, classes=["happy", "sad"])
    make_labelled_folder(tmp_path / "data" / "train", per_class=16, seed=1)
    make_labelled_folder(tmp_path / "data" / "val", per_class=4, seed=2)
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(REPO / "docs" / "python-api.md")
    assert len(blocks) == 4
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/python-api.md", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "examples/astronaut.jpg 0 happy" in printed and "<image 1> happy [176, 58, 92, 116]" in printed
    assert namespace["ensemble"].name == "ensemble: mean probability" and 0 <= namespace["report"]["images"] == 4
    assert (tmp_path / "runs" / "mine.pt").is_file() and 0 <= namespace["metrics"]["accuracy"] <= 1


def shown_commands() -> list[tuple[str, str]]:
    """Every `fer ...` command in a code block of the README and docs/: (where, the command line)."""
    found = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "weights" / "README.md"]:
        for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", page.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                for part in re.split(r"\s*(?:&&|\||;)\s*", line.split(" #")[0].strip()):
                    if part.startswith("fer ") and not part.startswith("fer_cli"):
                        found.append((page.relative_to(REPO).as_posix(), part))
    return found


def parses(line: str) -> None:
    """The command line read by fer's own parser (options, choices, numbers), nothing run."""
    import shlex

    import typer

    group = typer.main.get_command(app)
    name, *rest = shlex.split(line)[1:] or ["--help"]
    if name.startswith("-"):  # fer --version, fer --help
        return
    with group.make_context("fer", [], resilient_parsing=True) as context:
        command = group.get_command(context, name)
        assert command is not None, f"no command {name!r}"
        if "--help" not in rest:
            command.make_context(name, rest, parent=context)  # raises for an unknown option or a bad value


@pytest.mark.parametrize("where, line", shown_commands(), ids=[line for _, line in shown_commands()])
def test_every_command_the_docs_show_is_one_fer_reads(where, line):
    """Each command the README and docs show parses as written: its options exist and their values are valid (the
    README's first run and the API page's examples run for real: .ci/run, test_the_python_api_page_runs)."""
    try:
        parses(line)
    except Exception as error:  # click's usage errors name the option
        pytest.fail(f"{where}: {line}\n{type(error).__name__}: {error}")


def test_the_readme_stays_a_front_page_and_user_docs_name_no_issue_numbers():
    """The README: what fer is, install, the first run, the commands with one example each, key numbers, tests; the
    reference lives in docs/. Issue numbers mean nothing to a user."""
    assert len((REPO / "README.md").read_text().splitlines()) <= 250
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        assert not re.search(r"\bissues? \d+", page.read_text(), flags=re.I), page.name
