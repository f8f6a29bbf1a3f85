"""Names from outside reach the terminal as text (issue 33, items 6 and 11): a class name, model name or path with
terminal escapes (clear the screen, OSC 8 links, OSC 52 clipboard writes) is shown escaped, one with rich markup
(``[/]``, ``contempt[/b]``) as written, never crashing a table; a writer that fails never replaces an earlier file."""

from __future__ import annotations

import csv
import shutil

import pytest
from PIL import Image
from typer.testing import CliRunner

from fer_cli.cli.app import app
from fer_cli.models.checkpoint import read_checkpoint, save_checkpoint

from .synthetic import synthetic_face

ESCAPES = ["calm\x1b[2J", "frown\x1b]8;;http://example.com\x1b\\link\x1b]8;;\x1b\\", "smile\x1b]52;c;aGk=\x07"]
MARKUP = ["[/]", "contempt[/b]", "[bold red]smile"]


def invoke(*args, **env):
    return CliRunner(env=env or None).invoke(app, [str(a) for a in args])


def renamed(checkpoint, tmp_path, names, file_name="named.pt"):
    """The tiny checkpoint with other class names."""
    path = tmp_path / file_name
    save_checkpoint(path, {**read_checkpoint(checkpoint), "class_names": names})
    return path


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_class_names_with_terminal_escapes_are_shown_escaped(tiny_checkpoint, image_folder, tmp_path, fmt):
    model = renamed(tiny_checkpoint, tmp_path, ESCAPES)
    done = invoke("predict", image_folder, "-m", model, "-f", fmt, "-j", 0)
    assert done.exit_code == 0, done.output
    if fmt == "table":
        assert "\x1b" not in done.stdout and "\x07" not in done.stdout
        assert "calm\\x1b[2J" in done.stdout
    else:  # machine formats keep the names as they are (JSON escapes them itself)
        assert "\\u001b[2J" in done.stdout
    assert "\x1b" not in done.stderr


def test_every_name_on_a_terminal_is_escaped(tiny_checkpoint, tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    renamed(tiny_checkpoint, weights, ESCAPES, "evil\x1b[2J.pt")
    for args in (("models",), ("models", weights / "evil\x1b[2J.pt")):
        done = invoke(*args, FER_WEIGHTS_DIR=str(weights))
        assert done.exit_code == 0, done.output
        assert "\x1b" not in done.output and "\x07" not in done.output
    done = invoke("predict", tmp_path, "-m", tmp_path / "gone\x1b]52;c;aGk=\x07.pt")  # an error naming the file
    assert done.exit_code == 2 and "gone\\x1b]52" in done.stderr
    assert "\x1b" not in done.output and "\x07" not in done.output


def test_class_names_with_rich_markup_print_as_written(tiny_checkpoint, image_folder, tmp_path):
    model = renamed(tiny_checkpoint, tmp_path, MARKUP)
    for columns in ("200", "40"):  # every class a column; the narrow layout's runner-up
        done = invoke("predict", image_folder, "-m", model, "-f", "table", "-j", 0, COLUMNS=columns)
        assert done.exit_code == 0, done.output
        assert "MarkupError" not in done.output
    done = invoke("predict", image_folder, "-m", model, "-f", "table", "-j", 0, COLUMNS="200")
    assert "contempt[/b]" in done.stdout and "[bold red]smile" in done.stdout


def test_the_ensemble_report_prints_names_with_markup(tiny_checkpoint, tmp_path):
    """--votes takes the class names from a CSV's header: any text, slashes and brackets included."""
    model = renamed(tiny_checkpoint, tmp_path, MARKUP)
    images = tmp_path / "images"
    images.mkdir()
    with open(tmp_path / "votes.csv", "w", newline="") as handle:
        rows = csv.writer(handle)
        rows.writerow(["path", *MARKUP])
        for i in range(9):
            Image.fromarray(synthetic_face(i % 3, i)).save(images / f"{i}.png")
            votes = [0, 0, 0]
            votes[i % 3] = 8
            votes[(i + 1) % 3] = 2
            rows.writerow([f"{i}.png", *votes])
    shutil.copyfile(model, tmp_path / "[b]model[i].pt")
    done = invoke("ensemble", images, "--votes", tmp_path / "votes.csv", "-m", model, "-m",
                  tmp_path / "[b]model[i].pt", "-f", "table", "-j", 0)  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "contempt[/b]" in done.stdout and "[b]model[i]" in done.stdout


def test_a_writer_that_fails_never_replaces_the_earlier_file(tiny_checkpoint, image_folder, tmp_path, monkeypatch):
    from fer_cli.outputs import results

    def cannot_render(self):
        raise ValueError("a name the table cannot render")

    monkeypatch.setattr(results.TableWriter, "close", cannot_render)
    earlier = tmp_path / "earlier.txt"
    earlier.write_text("keep\n")
    done = invoke("predict", image_folder, "-m", tiny_checkpoint, "-o", earlier, "-f", "table", "-j", 0)
    assert done.exit_code != 0
    assert earlier.read_text() == "keep\n"
    assert not list(tmp_path.glob(".earlier.txt.*"))
