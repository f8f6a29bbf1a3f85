"""Fuzzing `fer predict` with generated inputs (Hypothesis): images of every mode and size, EXIF
orientations, files cut short at random offsets, random bytes under image names, empty files;
file names with spaces, quotes, commas, newlines, unicode and leading dashes; folders with links,
loops and dead links. The invariants, whatever the inputs:

* one JSONL record per input (per face found; one record for an image with none or an error),
  the same records as CSV rows and as the JSON array;
* exit code 0 when every input was read, 1 when some were not (never 2: the command is valid);
* no exception escapes, no traceback on stderr;
* no file outside the output is created or changed.

CI runs the "ci" profile (bounded, a few seconds a test); `pytest --hypothesis-profile=long
tests/test_fuzz.py` tries many more.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from fer_cli.cli.app import app

MODES = ["L", "RGB", "RGBA", "P", "1", "LA", "I;16", "I", "F", "CMYK"]
FORMATS = {"png": "PNG", "jpg": "JPEG", "gif": "GIF", "bmp": "BMP", "tiff": "TIFF", "webp": "WEBP", "ppm": "PPM"}
SAVES = {  # which modes each format can hold
    "PNG": {"L", "RGB", "RGBA", "P", "1", "LA", "I;16"},  # PIL writes 32-bit "I" only to TIFF
    "JPEG": {"L", "RGB", "CMYK"},
    "GIF": {"L", "P", "1"},
    "BMP": {"L", "RGB", "P", "1"},
    "TIFF": {"L", "RGB", "RGBA", "P", "1", "LA", "I;16", "I", "F", "CMYK"},
    "WEBP": {"RGB", "RGBA"},
    "PPM": {"L", "RGB", "1"},
}


@st.composite
def image_bytes(draw) -> tuple[str, bytes, bool]:
    """(extension, content, readable): a real image, maybe cut short; random bytes; or nothing."""
    kind = draw(st.sampled_from(["image", "image", "image", "truncated", "random", "empty"]))
    extension = draw(st.sampled_from(sorted(FORMATS)))
    if kind == "random":
        return extension, draw(st.binary(min_size=1, max_size=2000)), False
    if kind == "empty":
        return extension, b"", False
    image_format = FORMATS[extension]
    mode = draw(st.sampled_from(sorted(SAVES[image_format])))
    width = draw(st.integers(1, 160) | st.sampled_from([1, 2, 48, 700]))
    height = draw(st.integers(1, 160) | st.sampled_from([1, 3, 48, 500]))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode if mode not in ("I;16", "I", "F") else "L")
    if mode in ("I;16", "I", "F"):
        image = image.convert("I").point(lambda v: v * 200) if mode != "F" else image.convert("F")
        if mode == "I;16":
            image = image.convert("I;16")
    buffer = io.BytesIO()
    options = {}
    if image_format == "JPEG" and draw(st.booleans()):
        exif = Image.Exif()
        exif[0x0112] = draw(st.integers(1, 8))  # orientation
        options["exif"] = exif.tobytes()
    image.save(buffer, image_format, **options)
    content = buffer.getvalue()
    if kind == "truncated":
        return extension, content[: draw(st.integers(0, max(0, len(content) - 1)))], None  # may still decode
    return extension, content, True


NAME_CHARACTERS = st.sampled_from(list("abcXYZ019 _-.,;'\"()[]{}!#$%&+=@~^") + ["\n", "\t", "é", "😀", "中", "ß"])


@st.composite
def file_name(draw) -> str:
    stem = draw(st.text(NAME_CHARACTERS, min_size=1, max_size=24))
    if draw(st.booleans()):
        stem = "-" + stem  # looks like an option
    return stem.replace("/", "_")


@st.composite
def input_folder(draw) -> dict:
    """A folder plan: files (name -> (ext, bytes, readable)), optional nesting, links and loops."""
    count = draw(st.integers(1, 6))
    files = {}
    for index in range(count):
        extension, content, readable = draw(image_bytes())
        name = f"{draw(file_name())}.{index}.{extension}"
        folder = draw(st.sampled_from(["", "", "sub", "sub/deeper"]))
        files[os.path.join(folder, name)] = (content, readable)
    links = draw(st.lists(st.sampled_from(["loop", "deeper-loop", "dead"]), max_size=3, unique=True))
    return {"files": files, "links": links}


def build(root: Path, plan: dict) -> None:
    for relative, (content, _) in plan["files"].items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    for link in plan["links"]:
        if link == "loop":
            (root / "again").symlink_to(".")
        elif link == "deeper-loop":
            (root / "sub").mkdir(exist_ok=True)
            (root / "sub" / "up").symlink_to("..")
        else:
            (root / "gone.png").symlink_to("nowhere.png")


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    found = {}
    for folder, _, names in os.walk(root):  # links not followed: the tree as it is
        for name in names:
            path = Path(folder) / name
            if not path.is_symlink():
                stat = path.stat()
                found[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return found


@pytest.fixture(scope="module")
def model(tiny_checkpoint) -> str:
    return str(tiny_checkpoint)


def run(*args) -> tuple[int, str, str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        done = CliRunner().invoke(app, [str(a) for a in args])
    assert not caught, [str(w.message) for w in caught]  # a library's raw warning would reach the user's stderr
    assert done.exception is None or isinstance(done.exception, SystemExit), repr(done.exception)
    assert "Traceback" not in done.stderr, done.stderr
    return done.exit_code, done.stdout, done.stderr


@given(plan=input_folder(), faces=st.sampled_from(["auto", "none"]))
def test_predict_keeps_its_invariants_on_any_folder(model, plan, faces):
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "in"
        root.mkdir()
        build(root, plan)
        before = snapshot(Path(scratch))
        common = ["-m", model, "--faces", faces, "--workers", "0", "--batch-size", "3"]
        code, stdout, _ = run("predict", root, "-f", "jsonl", *common)
        records = [json.loads(line) for line in stdout.splitlines()]
        assert snapshot(Path(scratch)) == before  # nothing written beside the inputs

        by_path: dict[str, list] = {}
        for record in records:
            by_path.setdefault(record["path"], []).append(record)
        expected = {str(root / relative) for relative in plan["files"] if _has_image_extension(relative)}
        if "dead" in plan["links"]:
            expected.add(str(root / "gone.png"))
        assert set(by_path) == expected  # every input once (a loop adds none), nothing else
        for rows in by_path.values():
            if rows[0]["error"] or rows[0]["faces"] == 0:
                assert len(rows) == 1
            else:
                assert [row["face"] for row in rows] == list(range(rows[0]["faces"]))
                assert all(abs(sum(row["probabilities"].values()) - 1) < 1e-3 for row in rows)
        for relative, (_, readable) in plan["files"].items():
            if readable is not None and _has_image_extension(relative):
                assert (by_path[str(root / relative)][0]["error"] is None) == readable, relative
        failed = sum(1 for rows in by_path.values() if rows[0]["error"])
        assert code == (1 if failed else 0)

        out = Path(scratch) / "out"
        for suffix in ("csv", "json"):
            code_again, _, _ = run("predict", root, "-o", out.with_suffix(f".{suffix}"), *common)
            assert code_again == code
        with open(out.with_suffix(".csv"), newline="", encoding="utf-8") as table:
            rows = list(csv.DictReader(table))
        assert [(row["path"], row["label"]) for row in rows] == [(r["path"], r["label"] or "") for r in records]
        assert json.loads(out.with_suffix(".json").read_text(encoding="utf-8")) == records


@given(names=st.lists(file_name(), min_size=1, max_size=4, unique=True))
def test_names_given_one_by_one_and_on_stdin(model, names):
    with tempfile.TemporaryDirectory() as scratch:
        paths = []
        for index, name in enumerate(names):
            path = Path(scratch) / f"{name}.{index}.png"
            Image.new("L", (48, 48), 100 + index).save(path)
            paths.append(str(path))
        code, stdout, _ = run("predict", "-m", model, "--workers", "0", "-f", "jsonl", "--", *paths)
        assert code == 0 and [json.loads(line)["path"] for line in stdout.splitlines()] == paths
        single_line = [p for p in paths if "\n" not in p and p.strip() == p]  # stdin is one path per line
        if single_line:
            done = CliRunner().invoke(app, ["predict", "-", "-m", model, "--workers", "0", "-f", "jsonl"],
                                      input="\n".join(single_line) + "\n")  # fmt: skip
            assert done.exit_code == 0 and [json.loads(x)["path"] for x in done.stdout.splitlines()] == single_line


def _has_image_extension(name: str) -> bool:
    return name.lower().rsplit(".", 1)[-1] in FORMATS


# --- mutated files, in every format the tool opens and in formats it must refuse -------------------------

# Formats Pillow writes, so a valid file of each can be made and mutated: those the tool opens, and others it must
# never decode (their decoders raised NotImplementedError, AttributeError... on crafted files; PostScript runs
# Ghostscript), each saved under an image name.
MUTATED_FORMATS = {
    "PNG": "L", "JPEG": "RGB", "BMP": "RGB", "GIF": "P", "TIFF": "RGB", "WEBP": "RGB", "PPM": "L",  # opened
    "DDS": "RGB", "SPIDER": "F", "EPS": "L", "TGA": "RGB", "PCX": "L", "ICO": "RGBA", "SGI": "L",
    "JPEG2000": "RGB", "MSP": "1", "XBM": "1", "QOI": "RGB",  # refused
}  # fmt: skip


def _base_file(image_format: str, mode: str) -> bytes:
    rng = np.random.default_rng(len(image_format))
    image = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, image_format)
    return buffer.getvalue()


@st.composite
def mutant(draw) -> tuple[str, bytes]:
    """A valid file of some format with a few bytes flipped, overwritten, inserted, deleted, or cut short."""
    image_format = draw(st.sampled_from(sorted(MUTATED_FORMATS)))
    try:
        data = bytearray(_base_file(image_format, MUTATED_FORMATS[image_format]))
    except (OSError, KeyError, ValueError):  # a codec this Pillow was built without
        data = bytearray(b"\0" * 64)
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        where = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "byte", "insert", "delete", "cut", "int"]))
        if action == "flip":
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif action == "byte":
            data[where] = draw(st.integers(0, 255))
        elif action == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=16))
        elif action == "delete":
            del data[where : where + draw(st.integers(1, 16))]
        elif action == "cut":
            del data[where:]
        else:  # an integer field made huge, zero or negative
            data[where : where + 4] = draw(st.sampled_from([b"\xff\xff\xff\x7f", b"\0\0\0\0", b"\xff\xff\xff\xff"]))
    return image_format, bytes(data)


@settings(max_examples=150)  # each example is one read: quick
@given(case=mutant())
def test_reading_a_mutated_file_is_an_image_or_one_known_error(case):
    from fer_cli.inputs.images import IMAGE_FORMATS, READ_ERRORS, ImageBytes, read_image

    image_format, data = case
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no library warning may reach the user
        try:
            image = read_image(ImageBytes("x.png", data), channels=0)
        except READ_ERRORS:
            return
    assert image.mode in ("L", "RGB") and image_format in (*IMAGE_FORMATS, "MPO")  # refused formats never decode


@settings(max_examples=4)
@given(cases=st.lists(mutant(), min_size=2, max_size=6))
def test_predict_keeps_its_invariants_on_mutated_files(model, cases):
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for index, (_format, data) in enumerate(cases):
            (root / f"m{index}.png").write_bytes(data)
        Image.new("L", (48, 48), 90).save(root / "good.png")
        code, stdout, _ = run("predict", root, "-m", model, "--workers", "0", "-f", "jsonl")
        records = [json.loads(line) for line in stdout.splitlines()]
        paths = {record["path"] for record in records}
        assert paths == {str(path) for path in root.glob("*.png")}  # every input, the good one included
        assert code == (1 if any(record["error"] for record in records) else 0)


def test_the_crafted_files_that_crashed_the_reader_are_one_error_each(model, tmp_path):
    """The DDS a fuzzer found (NotImplementedError inside Pillow), named crafted.png, and PostScript (which would run
    Ghostscript): each is 'not an image', and the good image beside them is still predicted."""
    import struct

    (tmp_path / "crafted.png").write_bytes(
        b"DDS " + struct.pack("<7I", 124, 0x1007, 48, 48, 0, 0, 0) + b"\0" * 44 + struct.pack("<8I", 32, *[0] * 7)
        + struct.pack("<5I", 0x1000, 0, 0, 0, 0) + b"\0" * 9216
    )  # fmt: skip
    (tmp_path / "script.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    Image.new("L", (48, 48), 90).save(tmp_path / "good.png")
    code, stdout, stderr = run("predict", tmp_path, "-m", model, "--workers", "0", "-f", "csv")
    rows = list(csv.DictReader(io.StringIO(stdout)))
    errors = {Path(row["path"]).name: row["error"] for row in rows}
    assert errors == {"crafted.png": "not an image (or an unsupported format)", "good.png": "",
                      "script.png": "not an image (or an unsupported format)"}  # fmt: skip
    assert code == 1 and "2 inputs could not be read" in stderr


def test_the_long_profile_exists():
    assert settings.get_profile("long").max_examples > settings.get_profile("ci").max_examples
