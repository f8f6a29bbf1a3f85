"""The documentation's examples run: each ```python block of docs/python-api.md, in order, in one namespace, in a
folder holding the repository's examples/ beside small labelled folders (labelled/, data/) made here."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

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
    assert "examples/astronaut.jpg 0 happy" in printed and "<image 1> happy [179, 59, 88, 115]" in printed
    assert namespace["ensemble"].name == "ensemble: mean probability" and 0 <= namespace["report"]["images"] == 4
    assert (tmp_path / "runs" / "mine.pt").is_file() and 0 <= namespace["metrics"]["accuracy"] <= 1
