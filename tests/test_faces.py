"""Face detection, the face policy, alignment, per-face results and annotated copies.

Real photos come from ../shared/data/photos (astronaut: one face; coffee, chelsea: none); group
photos are composed here from FER2013 faces pasted on a photo, so the expected boxes are known.
"""

import json
import math

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fer_cli.cli.app import app
from fer_cli.inputs.face_detector import Detection, FaceDetector
from fer_cli.inputs.faces import (
    CROP_MAX_SIDE,
    DETECTOR_FACE,
    FER2013_LANDMARKS,
    FaceFinder,
    _crop_similarity,
    align_face,
    parse_min_face,
    smallest_face,
)
from fer_cli.inputs.images import read_image

from .synthetic import FER_VAL, SHARED

PHOTOS = SHARED / "data" / "photos"
needs_photos = pytest.mark.skipif(not PHOTOS.is_dir(), reason=f"{PHOTOS} is absent (../shared not beside the repo)")
needs_val = pytest.mark.skipif(not FER_VAL.is_dir(), reason=f"{FER_VAL} is absent (../shared not beside the repo)")

ASTRONAUT_FACE = (179, 59, 89, 114)  # x, y, w, h of her face, read off the photo
# FER2013 val faces of four classes, pasted into group photos below.
GROUP_FACES = ["happy/fer28713.png", "surprise/fer28755.png", "angry/fer28716.png", "neutral/fer28723.png"]


@pytest.fixture(scope="module")
def finder():
    return FaceFinder("detect")


@pytest.fixture(scope="module")
def finder_of_small_faces():
    return FaceFinder("detect", min_face=20)  # every face of 20 px or more, as --min-face 20


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / (aw * ah + bw * bh - w * h)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


# --- the detector on real photos -------------------------------------------------------------


@needs_photos
def test_one_face_in_the_astronaut_photo_and_none_in_coffee_or_chelsea(finder):
    faces = finder.find(read_image(PHOTOS / "astronaut.png", 3))
    assert len(faces) == 1
    assert iou(faces[0].box, ASTRONAUT_FACE) > 0.7 and faces[0].score > 0.99
    for name in ("coffee", "chelsea"):  # a cup, and a cat's face
        assert finder.find(read_image(PHOTOS / f"{name}.png", 3)) == []


@needs_photos
@needs_val
def group_photo() -> tuple[Image.Image, list[tuple[int, int, int, int]]]:
    """Eight FER2013 crops of 70-190 px on the cat photo, enlarged to 1280x852: (the photo, their boxes)."""
    canvas = read_image(PHOTOS / "chelsea.png", 3).resize((1280, 852))
    expected = []
    for i, (name, size) in enumerate(zip(GROUP_FACES * 2, [70, 190, 110, 150, 160, 90, 130, 100])):
        x, y = 40 + 155 * i, 80 if i % 2 else 520
        face = read_image(FER_VAL / name, 3).resize((size, size), Image.Resampling.BICUBIC)
        canvas.paste(face, (x, y))
        expected.append((x, y, size, size))
    return canvas, expected


@needs_photos
@needs_val
def test_every_face_of_a_group_photo_is_found_left_to_right_with_no_false_faces(finder_of_small_faces):
    finder = finder_of_small_faces
    canvas, expected = group_photo()
    faces = finder.find(canvas)
    assert len(faces) == len(expected)
    assert [face.index for face in faces] == list(range(len(expected)))
    for face, box in zip(faces, expected):  # sorted left to right, like the pasted faces
        # A detector box is the face itself (brows to chin), a FER2013 crop has margin around it.
        assert iou(face.box, box) > 0.5, (face.box, box)
        assert face.score >= finder.detector.threshold


@needs_photos
@needs_val
def test_faces_under_a_twelfth_of_the_shorter_side_are_not_searched_for_unless_asked(finder):
    canvas, expected = group_photo()  # the 70 px crop's face is about 50 px: under 852 / 12 = 71 px
    found = finder.find(canvas)
    assert [iou(face.box, box) > 0.5 for face, box in zip(found, expected[1:])] == [True] * 7
    assert len(found) == 7
    assert len(FaceFinder("detect", min_face=40).find(canvas)) == 8  # --min-face 40 (px)
    assert len(FaceFinder("detect", min_face=1 / 20).find(canvas)) == 8  # --min-face 1/20 (of 852 px: 43 px)


def test_the_smallest_face_searched_for_is_pixels_or_a_share_of_the_shorter_side():
    assert smallest_face(1 / 12, (1280, 720)) == 60
    assert smallest_face(0.05, (640, 480)) == 24
    assert smallest_face(30, (4000, 3000)) == 30
    assert smallest_face(1 / 12, (200, 120)) == DETECTOR_FACE  # never under the detector's own 20 px
    assert parse_min_face("1/20") == 0.05 and parse_min_face("40") == 40 and parse_min_face("0.1") == 0.1
    for bad in ("0", "-3", "x", "1/0", "inf", "nan"):
        with pytest.raises(ValueError):
            parse_min_face(bad)


@needs_photos
def test_a_large_photo_is_searched_at_1280_px_but_boxes_are_in_its_own_pixels(finder, finder_of_small_faces):
    big = read_image(PHOTOS / "astronaut.png", 3).resize((2048, 2048))  # 4x
    for searcher in (finder_of_small_faces, finder):  # at 1280 px, and at 20 / 171 of its size (1/12: 171 px)
        (face,) = searcher.find(big)
        assert iou(face.box, tuple(4 * v for v in ASTRONAUT_FACE)) > 0.7


@needs_photos
def test_exif_rotation_is_honoured(tmp_path, finder):
    upright = Image.open(PHOTOS / "astronaut.png").convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    (face,) = finder.find(read_image(tmp_path / "phone.jpg", 3))
    assert iou(face.box, ASTRONAUT_FACE) > 0.7


# --- policy -----------------------------------------------------------------------------------


@needs_photos
def test_policy_auto_passes_face_crops_straight_and_searches_photos():
    auto, none = FaceFinder("auto"), FaceFinder("none")
    photo = read_image(PHOTOS / "astronaut.png", 3)
    small = photo.crop((150, 30, 300, 200)).resize((48, 48))
    (crop,) = auto.find(small)  # a FER2013-sized crop: no detection, the whole image
    assert crop.box == (0, 0, 48, 48) and crop.score is None and crop.crop is small
    assert auto._detector is None  # the detector was never even built

    head = photo.crop((170, 50, 280, 170))  # 110x120: a face crop, too
    assert max(head.size) <= CROP_MAX_SIDE and auto.find(head)[0].score is None
    filling = photo.crop((160, 35, 290, 185))  # 130x150, larger than a crop: detected, fills the frame
    (whole,) = auto.find(filling)
    assert whole.box == (0, 0, 130, 150) and whole.score > 0.9 and whole.crop is filling

    (face,) = auto.find(photo)  # a photo: the face, aligned
    assert iou(face.box, ASTRONAUT_FACE) > 0.7 and face.crop.size[0] == face.crop.size[1] < 200

    (everything,) = none.find(photo)
    assert everything.box == (0, 0, 512, 512) and everything.score is None


def test_detector_finds_nothing_in_noise_and_uniform_images():
    detector = FaceDetector()
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    assert detector.detect(noise) == []
    assert detector.detect(np.full((64, 64, 3), 128, dtype=np.uint8)) == []
    assert detector.detect(np.zeros((8, 8, 3), dtype=np.uint8)) == []  # smaller than any face


# --- alignment --------------------------------------------------------------------------------


def test_alignment_recovers_a_known_similarity():
    angle, side, shift = math.radians(25), 120.0, np.array([300.0, 140.0])
    a, b = side * math.cos(angle), side * math.sin(angle)
    landmarks = FER2013_LANDMARKS @ np.array([[a, b], [-b, a]]) + shift
    detection = Detection((0, 0, 1, 1), 1.0, tuple(map(tuple, landmarks)))
    assert np.allclose(_crop_similarity(detection), (a, b, *shift))


def test_aligned_crop_puts_a_tilted_face_upright():
    # A drawn "face": two dark eyes and a mouth on a light disc, tilted by 30 degrees.
    canvas = Image.new("L", (400, 400), 200)
    template = FER2013_LANDMARKS * 160 + 120
    angle = math.radians(30)
    centre = np.array([200.0, 200.0])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    points = (template - centre) @ rotation.T + centre
    pixels = np.array(canvas)
    yy, xx = np.mgrid[:400, :400]
    for x, y in points[[0, 1]]:  # the two eyes
        pixels[(xx - x) ** 2 + (yy - y) ** 2 < 60] = 0
    image = Image.fromarray(pixels).convert("RGB")
    crop = np.array(align_face(image, Detection((0, 0, 1, 1), 1.0, tuple(map(tuple, points)))).convert("L"))
    size = crop.shape[0]
    assert abs(size - 160) <= 1
    for u, v in FER2013_LANDMARKS[:2]:  # the eyes land on the template's (level) eye positions
        assert crop[round(v * size), round(u * size)] < 50


# --- results per face, through the command ----------------------------------------------------


@needs_photos
def test_predict_gives_a_row_per_face_and_a_no_face_row(tiny_checkpoint):
    result = invoke("predict", PHOTOS, "-m", tiny_checkpoint, "-f", "jsonl", "-j", 0)
    assert result.exit_code == 0, result.output
    rows = {row["path"].rsplit("/", 1)[-1]: row for row in map(json.loads, result.stdout.splitlines())}
    astronaut = rows["astronaut.png"]
    assert astronaut["face"] == 0 and astronaut["faces"] == 1 and astronaut["detector_score"] > 0.99
    assert iou(astronaut["box"], ASTRONAUT_FACE) > 0.7 and astronaut["label"] is not None
    for name in ("coffee.png", "chelsea.png"):
        assert rows[name]["faces"] == 0 and rows[name]["label"] is None and rows[name]["error"] is None
    assert "faces)" in result.stderr

    table = invoke("predict", PHOTOS / "coffee.png", PHOTOS / "astronaut.png", "-m", tiny_checkpoint, "-f", "table")
    assert "no face" in table.stdout and "0 faces" in table.stdout and "1 of 1" in table.stdout


@needs_photos
def test_detection_gives_the_same_results_in_workers_and_in_process(tiny_checkpoint):
    runs = []
    for workers in (0, 2):  # batches of one image: workers read them (a single batch is read in the main process)
        done = invoke("predict", PHOTOS, "-m", tiny_checkpoint, "-j", workers, "-b", 1)
        runs.append([json.loads(line) for line in done.stdout.splitlines()])
    assert [(r["path"], r["box"]) for r in runs[0]] == [(r["path"], r["box"]) for r in runs[1]]
    for a, b in zip(*runs):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)


@needs_photos
def test_annotate_writes_readable_copies_without_overwriting(tmp_path, tiny_checkpoint):
    out = tmp_path / "annotated"
    for _ in range(2):
        result = invoke("predict", PHOTOS / "astronaut.png", PHOTOS / "coffee.png", "-m", tiny_checkpoint,
                        "--annotate", out, "-j", 0)  # fmt: skip
        assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "astronaut.fer-1.png", "astronaut.fer.png", "coffee.fer-1.png", "coffee.fer.png"
    ]  # fmt: skip
    original = np.asarray(Image.open(PHOTOS / "astronaut.png").convert("RGB"))
    annotated = np.asarray(Image.open(out / "astronaut.fer.png"))
    assert annotated.shape == original.shape
    changed = np.any(annotated != original, axis=2)
    x, y, w, h = ASTRONAUT_FACE
    assert changed[y + h // 2, x - 5 : x + 5].any()  # the box's left edge is drawn
    assert not changed[400:, 400:].any()  # far from the face nothing is touched


def test_small_inputs_are_enlarged_when_annotated(tmp_path, image_folder, tiny_checkpoint):
    result = invoke("predict", image_folder / "a.png", "-m", tiny_checkpoint, "--annotate", tmp_path, "-j", 0)
    assert result.exit_code == 0
    assert Image.open(tmp_path / "a.fer.png").size == (256, 256)


def test_faces_option_is_validated(image_folder, tiny_checkpoint):
    result = invoke("predict", image_folder, "-m", tiny_checkpoint, "--faces", "sometimes")
    assert result.exit_code == 2 and "sometimes" in result.output


def test_scoring_with_detect_classifies_faceless_images_whole_and_says_so(labelled_dir, tiny_checkpoint):
    result = invoke("ensemble", labelled_dir, "-m", tiny_checkpoint, "--faces", "detect", "-f", "json", "-j", 0)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["face_policy"] == "detect"
    assert report["images_without_detected_face"] == report["images"] > 0  # bars on noise are not faces
    assert any("no detected face" in note for note in report["notes"])
    assert report["models"][0]["metrics"]["accuracy"] > 0.9  # still scored, on the whole image


def test_odd_shapes_and_broken_files_give_rows_not_crashes(tmp_path, tiny_checkpoint, bad_files):
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    Image.new("L", (4000, 3), 90).save(tmp_path / "line.png")
    broken = [path for name, path in bad_files.items() if name != "good"]
    sources = [tmp_path / "dot.png", tmp_path / "line.png", *broken]
    result = invoke("predict", *sources, "-m", tiny_checkpoint, "--faces", "detect", "-f", "jsonl", "-j", 0)
    assert result.exit_code == 1  # some inputs were unreadable; the others still have their rows
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["faces"] for row in rows[:2]] == [0, 0]
    assert all(row["error"] for row in rows[2:]) and len(rows) == len(sources)


@needs_photos
def test_scoring_under_auto_counts_photos_without_a_face(tmp_path, tiny_checkpoint):
    for name, photo in (("calm", "astronaut"), ("frown", "coffee"), ("smile", "chelsea")):
        (tmp_path / name).mkdir()
        read_image(PHOTOS / f"{photo}.png", 3).save(tmp_path / name / f"{photo}.png")
    result = invoke("ensemble", tmp_path, "-m", tiny_checkpoint, "-f", "json", "-j", 0)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["face_policy"] == "auto" and report["images"] == 3
    assert report["images_without_detected_face"] == 2  # coffee and chelsea, scored whole
