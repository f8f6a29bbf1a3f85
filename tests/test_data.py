import io

import numpy as np
import pytest
from PIL import Image

from fer_cli.errors import SourceError
from fer_cli.inputs.data import (
    FER2013_CLASSES,
    find_labelled_images,
    is_labelled_folder,
    read_fer2013_csv,
)
from fer_cli.inputs.images import MissingInput, iter_image_paths, model_pixels, normalise, read_image

from .synthetic import CLASSES, SHARED, make_labelled_folder, synthetic_face

PREPROCESS = {"size": 48, "channels": 1, "mean": [0.5], "std": [0.25]}


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16", "LA", "1"])
def test_read_image_brings_every_mode_to_8_bit_gray_and_rgb(tmp_path, mode):
    source = Image.fromarray(synthetic_face(1, 0, size=60)).convert("RGB")
    if mode == "I;16":
        image = Image.fromarray(np.asarray(source.convert("L")).astype(np.uint16) * 256)
    else:
        image = source.convert(mode)
    path = tmp_path / "img.png"
    image.save(path)
    gray = read_image(path, channels=1)
    rgb = read_image(path, channels=3)
    assert gray.mode == "L" and rgb.mode == "RGB"
    assert gray.size == rgb.size == (60, 60)
    # channels=0 keeps what the file holds, and converting that later gives the very same pixels
    stored = read_image(path, channels=0)
    assert stored.mode == ("RGB" if mode in ("RGB", "RGBA", "P") else "L")
    assert np.array_equal(np.asarray(stored.convert("L")), np.asarray(gray))
    pixels = model_pixels(gray, PREPROCESS)
    assert pixels.shape == (1, 48, 48) and pixels.dtype == np.uint8
    assert model_pixels(rgb, {**PREPROCESS, "channels": 3}).shape == (3, 48, 48)
    assert normalise(pixels, PREPROCESS).dtype == np.float32


def test_sixteen_bit_images_are_rescaled_not_clipped(tmp_path):
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    pixels = np.asarray(read_image(path, channels=1))
    assert pixels.min() == 0 and pixels.max() == 255
    assert len(np.unique(pixels)) > 200  # a real ramp, not a saturated block


def test_transparent_pixels_become_white(tmp_path):
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    path = tmp_path / "clear.png"
    rgba.save(path)
    assert np.asarray(read_image(path, channels=1)).min() == 255


def test_exif_orientation_is_applied(tmp_path):
    wide = Image.new("L", (40, 20), 0)
    wide.paste(255, (0, 0, 10, 20))  # bright band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "phone.jpg"
    wide.save(path, exif=exif.tobytes(), quality=95)
    upright = read_image(path, channels=1)
    assert upright.size == (20, 40)  # portrait once rotated
    pixels = np.asarray(upright)
    assert pixels[:10].mean() > 200 and pixels[-10:].mean() < 50  # the band is now on top


def test_iter_image_paths_expands_folders_globs_and_stdin(image_folder, tmp_path):
    (image_folder / "readme.txt").write_text("not an image")
    found = list(iter_image_paths([str(image_folder)]))
    assert found == [str(image_folder / "a.png"), str(image_folder / "nested" / "b.jpg")]
    assert list(iter_image_paths([str(image_folder / "**" / "*.jpg")])) == [str(image_folder / "nested" / "b.jpg")]
    stdin = io.StringIO(f"{image_folder / 'a.png'}\n\n{image_folder / 'nested'}\n")
    assert list(iter_image_paths(["-"], stdin=stdin)) == [
        str(image_folder / "a.png"),
        str(image_folder / "nested" / "b.jpg"),
    ]


def test_iter_image_paths_reports_sources_that_name_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    found = list(iter_image_paths([str(tmp_path / "missing.png"), str(tmp_path / "empty"), str(tmp_path / "*.gif")]))
    assert all(isinstance(item, MissingInput) for item in found)
    assert [item.reason.split(":")[0].split(" ")[0] for item in found] == ["no", "no", "no"]
    assert "empty" in found[1].reason


def test_labelled_folder_and_its_errors(tmp_path):
    root = make_labelled_folder(tmp_path / "data", per_class=3)
    files = find_labelled_images(root)
    assert files.class_names == ["calm", "frown", "smile"]
    assert np.bincount(files.labels).tolist() == [3, 3, 3]
    assert is_labelled_folder(root, CLASSES) and not is_labelled_folder(root / "calm", CLASSES)
    assert not is_labelled_folder(root, ["happy", "sad"])  # folders, but not named after the classes

    (root / "surprise").mkdir()
    with pytest.raises(SourceError, match="surprise has no images"):
        find_labelled_images(root)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(SourceError, match="no class subfolders"):
        find_labelled_images(tmp_path / "nothing")
    with pytest.raises(SourceError, match="no such folder"):
        find_labelled_images(tmp_path / "absent")


def test_fer2013_csv_rows_become_images(tmp_path):
    rows = ["emotion,pixels,Usage"]
    for label in range(7):
        rows.append(f"{label}," + " ".join(str((label * 30 + i) % 256) for i in range(48 * 48)) + ",Training")
    rows.append("3," + " ".join("7" for _ in range(48 * 48)) + ",PublicTest")
    path = tmp_path / "fer.csv"
    path.write_text("\n".join(rows) + "\n")
    train = read_fer2013_csv(path, ["training"], PREPROCESS)
    assert train.class_names == FER2013_CLASSES
    assert train.images.shape == (7, 1, 48, 48) and train.labels.tolist() == list(range(7))
    assert train.images[0, 0, 0, :3].tolist() == [0, 1, 2]  # row-major pixels
    val = read_fer2013_csv(path, ["publictest"], PREPROCESS)
    assert len(val) == 1 and val.labels.tolist() == [3]


def test_bad_csv_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("emotion,pixels,Usage\n2,1 2 3,Training\n")
    with pytest.raises(SourceError, match="line 2: 3 pixels"):
        read_fer2013_csv(path, ["training"], PREPROCESS)
    path.write_text("a,b\n1,2\n")
    with pytest.raises(SourceError, match="needs 'emotion' and 'pixels'"):
        read_fer2013_csv(path, ["training"], PREPROCESS)


@pytest.mark.skipif(not (SHARED / "data" / "fer2013-sample.csv").exists(), reason="../shared is absent")
def test_the_shared_sample_csv_reads():
    data = read_fer2013_csv(SHARED / "data" / "fer2013-sample.csv", ["training"], PREPROCESS)
    assert len(data) == 280 and np.bincount(data.labels.numpy()).tolist() == [40] * 7
