"""The result writers: the table at every terminal width, and the same record in every format."""

import csv
import io
import json

import pytest

from fer_cli.outputs.results import WRITERS, Prediction, TableWriter, printable

FER_CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
PROBS = {"angry": 0.03, "disgust": 0.03, "fear": 0.03, "happy": 0.806, "neutral": 0.03, "sad": 0.03, "surprise": 0.04}


def rows():
    return [
        Prediction("../shared/data/photos/astronaut.png", 0, 1, (179, 59, 89, 114), 0.9999, "happy", 0.806, PROBS),
        Prediction("../shared/data/photos/chelsea.png", faces=0),
        Prediction("../shared/data/photos/broken.png", error="not an image (or an unsupported format)"),
    ]


def render(predictions, width):
    stream = io.StringIO()
    writer = TableWriter(stream, FER_CLASSES, width=width)
    writer.write_batch(predictions)
    writer.close()
    return stream.getvalue()


@pytest.mark.parametrize("width", [80, 100])
def test_the_table_at_80_and_100_columns_keeps_what_a_person_reads_first_whole(width):
    text = render(rows(), width)
    assert max(len(line) for line in text.splitlines()) <= width
    assert "…" not in text  # nothing truncated
    for path in ("../shared/data/photos/astronaut.png", "../shared/data/photos/chelsea.png"):
        assert path in text  # each path on one line
    assert "happy" in text and "80.6%" in text and "1 of 1" in text and "confidence" in text
    assert "not an image" in text
    assert "Per-class probabilities" in text  # says what was left out


def test_a_wide_terminal_shows_every_class_probability():
    text = render(rows(), 200)
    header = next(line for line in text.splitlines() if "image" in line)
    assert all(name in header for name in FER_CLASSES) and "box" in header
    assert "179,59,89,114" in text and "0.81" in text
    assert "left out" not in text and "runner-up" not in text


def test_between_the_two_the_probabilities_fold_into_the_runner_up():
    text = render(rows()[:1], 110)
    assert "runner-up" in text and "surprise 4.0%" in text
    assert "sad" not in text


def test_newlines_in_file_names_stay_on_one_line():
    assert printable("a\nb\tc.png") == "a\\nb\\tc.png"
    assert printable("café [red].png") == "café [red].png"
    text = render([Prediction("odd\nname [bold].png", 0, 1, (0, 0, 48, 48), None, "sad", 0.5, PROBS)], 200)
    assert "odd\\nname [bold].png" in text  # escaped, and not taken for rich markup


def test_a_warning_is_in_every_format_and_marked_in_the_table():
    warned = Prediction("tiny.png", 0, 1, (0, 0, 1, 1), None, "happy", 0.8, PROBS, warning="1x1 px: too small")
    for fmt in ("json", "jsonl", "csv"):
        stream = io.StringIO()
        writer = WRITERS[fmt](stream, FER_CLASSES)
        writer.write_batch([warned, rows()[0]])
        writer.close()
        if fmt == "csv":
            records = list(csv.DictReader(io.StringIO(stream.getvalue())))
        elif fmt == "json":
            records = json.loads(stream.getvalue())
        else:
            records = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert records[0]["warning"] == "1x1 px: too small", fmt
        assert records[1]["warning"] in (None, ""), fmt
    text = render([warned], 200)
    assert "happy !" in text and "'warning' field" in text
