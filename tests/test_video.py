"""Videos through `fer predict`: frames read and sampled, upright, tracked, written, annotated; bad files told.

The clips are made here with PyAV: tiny (at most 200x150, 12-20 frames), so each test takes seconds. Predictions
use the shipped int8 model (`fast`: onnxruntime, no torch, no training)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fer_cli.cli.app import app
from fer_cli.inputs import video
from fer_cli.inputs.images import MissingInput, iter_image_paths
from fer_cli.inputs.video import Sampling, VideoFrame, read_frames

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RATE = 10


ENCODER_OPTIONS = {"libx264rgb": {"qp": "0"}, "libx264": {"crf": "18"}}  # lossless; near-lossless


def write_video(path: Path, frames, rate=RATE, codec="libx264", rotation=None, **options) -> Path:
    """Encode RGB frames (height, width, 3): H.264 (CRF 18) by default, ``codec="libx264rgb"`` lossless, or any
    codec PyAV has."""
    frames = list(frames)
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w", options=options.pop("container", {})) as container:
        stream = container.add_stream(codec, rate=rate, options=ENCODER_OPTIONS.get(codec, {}))
        stream.width, stream.height = width, height
        stream.pix_fmt = "rgb24" if codec == "libx264rgb" else "yuv420p"
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for pixels in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")))
        container.mux(stream.encode(None))
    return path


def numbered_frames(count: int, size=(64, 48)) -> list[np.ndarray]:
    """Frames that tell their own number: frame i is filled with grey level 10 * i."""
    return [np.full((size[1], size[0], 3), 10 * i, np.uint8) for i in range(count)]


def moving_face(count: int = 12, size=(200, 150), step: int = 8) -> list[np.ndarray]:
    """The astronaut's face (examples/astronaut.jpg), 80x90 px, crossing a plain background left to right."""
    face = Image.open(EXAMPLES / "astronaut.jpg").convert("RGB").crop((150, 30, 300, 200)).resize((80, 90))
    frames = []
    for i in range(count):
        frame = Image.new("RGB", size, (90, 110, 130))
        frame.paste(face, (10 + step * i, 30))
        frames.append(np.asarray(frame))
    return frames


def decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


@pytest.fixture
def runner():
    return CliRunner()


def predict(runner, *args, stdin=None):
    # the defaults first: an option given again in args wins
    return runner.invoke(app, ["predict", "-m", "fast", "-j", "0", *map(str, args)], input=stdin, prog_name="fer")


def records(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture(scope="module")
def face_clip(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("clip") / "face.mp4", moving_face())


# --- reading and sampling ------------------------------------------------------------------------


def frames_of(path, **sampling) -> list[tuple[int, float, bool]]:
    read = list(read_frames(str(path), Sampling(**sampling)))
    assert all(isinstance(frame, VideoFrame) for frame in read), read
    return [(frame.index, frame.time, frame.last) for frame in read]


def test_every_frame_by_default_with_its_time_and_the_last_marked(tmp_path):
    clip = write_video(tmp_path / "n.mkv", numbered_frames(20), codec="libx264rgb")
    read = list(read_frames(str(clip), Sampling()))
    assert [(f.index, f.time, f.last) for f in read] == [(i, i / RATE, i == 19) for i in range(20)]
    assert [int(f.pixels[0, 0, 0]) for f in read] == [10 * i for i in range(20)]  # lossless: each its own frame


def test_sampling_by_rate_and_span(tmp_path):
    clip = write_video(tmp_path / "n.mp4", numbered_frames(20))
    assert [i for i, _, _ in frames_of(clip, fps=5)] == list(range(0, 20, 2))
    assert [i for i, _, _ in frames_of(clip, fps=2.5)] == list(range(0, 20, 4))
    assert [i for i, _, _ in frames_of(clip, fps=100)] == list(range(20))  # faster than the video: every frame
    assert frames_of(clip, start=0.5, end=1.2) == [(i, i / RATE, i == 11) for i in range(5, 12)]
    assert [i for i, _, _ in frames_of(clip, fps=4, start=0.3)] == [3, 6, 8, 11, 13, 16, 18]  # 0.3, 0.55, 0.8...
    (nothing,) = read_frames(str(clip), Sampling(start=5))
    assert nothing.reason == "no frames in the chosen span (every frame from 5 s; the last frame is at 1.90 s)"


def test_a_rotated_video_is_read_upright(tmp_path):
    """A phone's portrait video: stored sideways, with a display matrix that turns it 90 degrees
    counter-clockwise (PyAV's ``rotation``, as its ``set_display_rotation`` writes it)."""
    upright = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    for rotation, turns in ((90, -1), (-90, 1), (180, 2)):  # stored turned the other way: 90 is 48 wide, 64 high
        clip = write_video(
            tmp_path / f"r{rotation}.mp4", [np.rot90(upright, turns)], codec="libx264rgb", rotation=rotation
        )
        (frame,) = read_frames(str(clip), Sampling())
        assert frame.pixels.shape == upright.shape and (frame.pixels == upright).all(), rotation


def test_a_file_cut_short_without_a_decoding_error_is_told_by_its_declared_duration(tmp_path):
    """FFV1 in Matroska cut short decodes without an error: its frames just stop before the duration in its header."""
    frames = np.random.default_rng(0).integers(0, 256, (20, 48, 64, 3), dtype=np.uint8)
    whole = tmp_path / "whole.mkv"
    with av.open(str(whole), "w") as container:
        stream = container.add_stream("ffv1", rate=RATE)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "bgr0"
        for pixels in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode(None))
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    *read, problem = read_frames(str(cut), Sampling())
    assert 0 < len(read) < 15 and not any(frame.last for frame in read)
    assert all((frame.pixels == pixels).all() for frame, pixels in zip(read, frames))  # the frames before, as they were
    assert isinstance(problem, MissingInput) and problem.reason.startswith("cut short or damaged: its frames stop at")
    assert [frame.last for frame in read_frames(str(whole), Sampling())][-1]  # the whole file: no error


def test_videos_are_found_in_folders_globs_and_stdin(tmp_path):
    (tmp_path / "deep").mkdir()
    write_video(tmp_path / "deep" / "a.MOV", numbered_frames(2))
    Image.new("RGB", (8, 8)).save(tmp_path / "b.png")
    (tmp_path / "notes.txt").write_text("not a video")
    assert list(iter_image_paths([str(tmp_path)], videos=True)) == [
        str(tmp_path / "b.png"),
        str(tmp_path / "deep" / "a.MOV"),
    ]
    assert list(iter_image_paths([str(tmp_path)])) == [str(tmp_path / "b.png")]  # images only, as before
    assert list(iter_image_paths([str(tmp_path / "**" / "*.MOV")], videos=True)) == [str(tmp_path / "deep" / "a.MOV")]
    stdin = io.StringIO(f"{tmp_path / 'deep' / 'a.MOV'}\n")
    assert list(iter_image_paths(["-"], stdin=stdin, videos=True)) == [str(tmp_path / "deep" / "a.MOV")]


# --- fer predict on a video ----------------------------------------------------------------------


def test_one_record_per_face_per_frame_equal_to_predicting_the_frame_as_an_image(runner, face_clip, tmp_path):
    result = predict(runner, face_clip, "-f", "jsonl")
    assert result.exit_code == 0, result.output
    rows = records(result)
    assert [(r["frame"], r["time"], r["face"], r["faces"]) for r in rows] == [(i, i / RATE, 0, 1) for i in range(12)]
    assert {r["track"] for r in rows} == {1}  # the moving face keeps its track
    assert all(r["path"] == str(face_clip) and r["smooth"] is None and r["detector_score"] > 0.9 for r in rows)
    xs = [r["box"][0] for r in rows]
    assert xs == sorted(xs) and xs[-1] - xs[0] > 60  # found where it moved

    # Each frame, decoded on its own and saved losslessly, predicted as an image: the same face, label, numbers.
    pngs = []
    for i, pixels in enumerate(decoded(face_clip)):
        pngs.append(tmp_path / f"frame{i:02d}.png")
        Image.fromarray(pixels).save(pngs[-1])
    as_images = records(predict(runner, *pngs, "-f", "jsonl"))
    assert len(as_images) == len(rows)
    for image_row, video_row in zip(as_images, rows):
        assert "frame" not in image_row and "track" not in image_row  # image records are unchanged
        assert image_row["box"] == video_row["box"] and image_row["label"] == video_row["label"]
        assert image_row["probabilities"] == pytest.approx(video_row["probabilities"], abs=1e-6)
    assert "1 of 1 input predicted (12 faces; 12 video frames)" in result.stderr
    in_workers = predict(runner, face_clip, "-f", "jsonl", "-b", "4", "-j", "2")  # frames read in 2 processes
    assert in_workers.exit_code == 0 and records(in_workers) == rows


def a_large_and_a_small_face(count: int = 4, size=(960, 720)) -> list[np.ndarray]:
    """The astronaut's face at 160x180 px and at 40x45 (her face about 24 px: under 720 / 12 = 60 px, the smallest
    searched for by default), both drifting right."""
    face = Image.open(EXAMPLES / "astronaut.jpg").convert("RGB").crop((150, 30, 300, 200))
    frames = []
    for i in range(count):
        frame = Image.new("RGB", size, (90, 110, 130))
        frame.paste(face.resize((40, 45)), (100 + 6 * i, 100))
        frame.paste(face.resize((160, 180)), (500 + 6 * i, 200))
        frames.append(np.asarray(frame))
    return frames


def test_a_720p_frame_is_searched_by_the_photo_rule_and_min_face_lowers_it(runner, tmp_path):
    clip = write_video(tmp_path / "two.mp4", a_large_and_a_small_face())
    result = predict(runner, clip, "-f", "jsonl")
    assert result.exit_code == 0, result.output
    rows = records(result)
    assert [(r["frame"], r["faces"]) for r in rows] == [(i, 1) for i in range(4)]  # the 24 px face: not searched
    assert all(r["box"][0] > 500 for r in rows)
    smaller = records(predict(runner, clip, "-f", "jsonl", "--min-face", "20"))
    assert [(r["frame"], r["face"]) for r in smaller] == [(i, face) for i in range(4) for face in (0, 1)]
    assert all(r["box"][2] < 40 for r in smaller if r["face"] == 0)

    # The frames searched on a third-size copy (20 / 60 px), as the same frames saved as images are
    pngs = []
    for i, pixels in enumerate(decoded(clip)):
        pngs.append(tmp_path / f"frame{i}.png")
        Image.fromarray(pixels).save(pngs[-1])
    for option in ([], ["--min-face", "20"]):
        as_video = rows if not option else smaller
        as_images = records(predict(runner, *pngs, "-f", "jsonl", *option))
        assert [(r["box"], r["label"]) for r in as_images] == [(r["box"], r["label"]) for r in as_video]
        for image_row, video_row in zip(as_images, as_video):
            assert image_row["probabilities"] == pytest.approx(video_row["probabilities"], abs=1e-6)

    # Read in 2 worker processes, the frames handed over in shared memory: the same, and no block left behind.
    shared_before = set(Path("/dev/shm").glob("psm_*")) if Path("/dev/shm").is_dir() else set()
    in_workers = predict(runner, clip, "-f", "jsonl", "-b", "2", "-j", "2")
    assert in_workers.exit_code == 0 and records(in_workers) == rows
    if Path("/dev/shm").is_dir():
        assert set(Path("/dev/shm").glob("psm_*")) <= shared_before


def test_min_face_is_checked(runner, face_clip):
    for bad in ("0", "-1", "big", "1/0"):
        result = predict(runner, face_clip, "--min-face", bad)
        assert result.exit_code == 2 and "--min-face" in result.output, (bad, result.output)


def test_video_paths_on_stdin_beside_images(runner, face_clip):
    result = predict(runner, "-", "--fps", "1", "-f", "jsonl", stdin=f"{EXAMPLES / 'happy.png'}\n{face_clip}\n")
    assert result.exit_code == 0, result.output
    assert [(Path(r["path"]).name, r.get("frame")) for r in records(result)] == [
        ("happy.png", None),
        ("face.mp4", 0),
        ("face.mp4", 10),
    ]


def test_sampling_options_csv_json_and_the_track_table(runner, face_clip):
    result = predict(runner, face_clip, "--fps", "5", "--start", "0.3", "--end", "1.0", "-f", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0])[:5] == ["path", "frame", "time", "track", "face"] and list(rows[0])[-1] == "smooth"
    assert [(r["frame"], r["time"], r["track"]) for r in rows] == [
        ("3", "0.3", "1"),
        ("5", "0.5", "1"),
        ("7", "0.7", "1"),
        ("9", "0.9", "1"),
    ]

    as_json = json.loads(predict(runner, face_clip, "--fps", "2", "--smooth", "1", "-f", "json").stdout)
    assert [(r["frame"], r["smooth"]) for r in as_json] == [(0, 1.0), (5, 1.0), (10, 1.0)]

    table = predict(runner, face_clip, EXAMPLES / "happy.png", "-f", "table", "--smooth", "0.5")
    assert table.exit_code == 0, table.output
    assert "happy.png" in table.stdout and "Face tracks" in table.stdout and "dominant: the label" in table.stdout
    (line,) = [line for line in table.stdout.splitlines() if "face.mp4" in line]
    assert "0.00-1.10" in line and "12 of 12" in line and "happy 100%" in line
    assert "smoothed" in table.stdout


def test_smoothing_averages_each_track_over_its_last_seconds(runner, face_clip):
    plain = records(predict(runner, face_clip, "-f", "jsonl"))
    smoothed = records(predict(runner, face_clip, "-f", "jsonl", "--smooth", "0.25"))  # this frame and 2 before
    for i, row in enumerate(smoothed):
        window = plain[max(0, i - 2) : i + 1]
        for name, value in row["probabilities"].items():
            assert value == pytest.approx(np.mean([r["probabilities"][name] for r in window]), abs=2e-6)
        assert row["confidence"] == max(row["probabilities"].values())


def test_bad_videos_are_one_error_each_and_the_rest_is_answered(runner, tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (20, 48, 64, 3), dtype=np.uint8)  # incompressible
    whole = write_video(tmp_path / "whole.mp4", noise, container={"movflags": "faststart"})
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])
    (tmp_path / "noise.mkv").write_bytes(np.random.default_rng(1).bytes(3000))
    with av.open(str(tmp_path / "sound.m4v"), "w") as container:  # audio only
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with av.open(str(tmp_path / "empty.avi"), "w") as container:  # a video stream without a frame
        stream = container.add_stream("mpeg4", rate=RATE)
        stream.width, stream.height = 64, 48
        container.start_encoding()

    sources = [cut, tmp_path / "noise.mkv", tmp_path / "sound.m4v", tmp_path / "empty.avi", EXAMPLES / "sad.png"]
    result = predict(runner, *sources, "-f", "jsonl")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    rows = records(result)
    frames = [r for r in rows if r["path"] == str(cut) and r["error"] is None]
    assert 0 < len(frames) < 20 and [r["frame"] for r in frames] == list(range(len(frames)))  # kept up to the damage
    errors = {r["path"]: r["error"] for r in rows if r["error"]}
    assert "cut short" in errors[str(cut)]
    assert errors[str(tmp_path / "noise.mkv")].startswith("not a video")
    assert errors[str(tmp_path / "sound.m4v")] == "no video stream in the file (audio only?)"
    assert errors[str(tmp_path / "empty.avi")] == "no frames in the video stream"
    assert [r["label"] for r in rows if r["path"].endswith("sad.png")] == ["sad"]
    assert result.stderr.count("skipped") == 4 and "4 inputs could not be read" in result.stderr
    assert "1 of 5 inputs predicted" in result.stderr


def test_limits(runner, tmp_path, monkeypatch):
    wide = tmp_path / "wide.mkv"
    with av.open(str(wide), "w") as container:
        stream = container.add_stream("ffv1", rate=RATE)
        stream.width, stream.height, stream.pix_fmt = 8200, 16, "bgr0"
        container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((16, 8200, 3), np.uint8), format="rgb24")))
        container.mux(stream.encode(None))
    fast = write_video(tmp_path / "fast.mp4", numbered_frames(3), rate=2000)
    monkeypatch.setattr("fer_cli.inputs.video.MAX_FRAMES", 5)
    long = write_video(tmp_path / "long.mp4", numbered_frames(12))
    result = predict(runner, wide, fast, long, "-f", "jsonl")
    assert result.exit_code == 1, result.output
    errors = [r["error"] for r in records(result) if r["error"]]
    assert errors[0] == "the video is 8200x16, larger than 8K (8192 px a side, 8192x4320): refused"
    assert errors[1] == "the video declares 2,000 frames/s, over 1000: refused"
    assert errors[2].startswith("stopped after 5 frames (at 0.50 s), the most read of one video")
    assert len([r for r in records(result) if r["path"] == str(long) and not r["error"]]) == 5

    for option, value in (("--fps", "0"), ("--start", "-1"), ("--smooth", "0")):
        refused = predict(runner, long, option, value)
        assert refused.exit_code == 2 and option in refused.stderr, refused.output
    refused = predict(runner, long, "--start", "2", "--end", "1")
    assert refused.exit_code == 2 and "must come after --start" in refused.stderr
    assert video.MAX_SIDE == 8192


def test_annotated_copy_is_an_h264_video_of_the_frames_read(runner, face_clip, tmp_path):
    out = tmp_path / "annotated"
    result = predict(runner, face_clip, EXAMPLES / "happy.png", "--annotate", out, "--fps", "5", "-f", "jsonl")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["face.fer.mp4", "happy.fer.png"]
    with av.open(str(out / "face.fer.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = list(container.decode(stream))
    assert [round(frame.time, 3) for frame in frames] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    first = frames[0].to_ndarray(format="rgb24")
    assert first.shape[1] > 200  # enlarged like a small image's copy, so that the text is readable
    box = records(result)[0]["box"]
    scale = first.shape[1] / 200
    edge = first[round((box[1] + box[3] / 2) * scale), round(box[0] * scale) + 1]  # the box's left side, drawn
    assert not np.allclose(edge, moving_face()[0][box[1] + box[3] // 2, box[0]], atol=40)


def test_annotated_copies_of_a_damaged_video_and_of_one_that_fails(runner, face_clip, tmp_path, monkeypatch):
    """A damaged video's copy holds the frames read before the damage; a copy that fails midway is one message, its
    file removed, and the next video's copy is still made."""
    data = face_clip.read_bytes()
    whole = write_video(tmp_path / "whole.mp4", moving_face(), container={"movflags": "faststart"})
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 9 // 10])  # the first frame is 2/3 of the file
    out = tmp_path / "annotated"
    result = predict(runner, cut, "--annotate", out, "-f", "jsonl")
    assert result.exit_code == 1 and "Traceback" not in result.output
    read = [r for r in records(result) if r["error"] is None]
    assert 0 < len(read) < 12
    assert len(decoded(out / "cut.fer.mp4")) == len(read)

    import fer_cli.outputs.annotate_video as annotate_video

    drawn = []

    def draw_twice(image, rows, colours):
        drawn.append(rows[0].path)
        if len(drawn) == 3:
            raise RuntimeError("the drawing failed")
        return image

    monkeypatch.setattr(annotate_video, "_draw", draw_twice)
    (tmp_path / "second.mp4").write_bytes(data)
    result = predict(runner, face_clip, tmp_path / "second.mp4", "--annotate", out, "-f", "jsonl")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.count("no annotated copy") == 1 and "cannot draw or encode the copy" in result.stderr
    assert len(records(result)) == 24  # every record written all the same
    assert drawn == [str(face_clip)] * 3 + [str(tmp_path / "second.mp4")] * 12  # the rest of the first passed over
    assert not (out / "face.fer.mp4").exists() and len(decoded(out / "second.fer.mp4")) == 12
    assert "1 annotated copy in" in result.stderr and "1 annotated copy could not be written" in result.stderr


def test_missing_input_kind_reused(tmp_path):
    (tmp_path / "x.webm").write_bytes(b"")
    (problem,) = read_frames(str(tmp_path / "x.webm"), Sampling())
    assert isinstance(problem, MissingInput) and problem.reason.startswith("not a video")


def test_report_counts_a_video_once_and_draws_its_tracks_over_time(runner, face_clip, tmp_path):
    folder = tmp_path / "report"
    result = predict(runner, face_clip, EXAMPLES / "sad.png", "--report", folder, "-f", "jsonl")
    assert result.exit_code == 0, result.output
    summary = json.loads((folder / "report.json").read_text())
    assert summary["inputs"] == 2 and summary["faces"] == 13
    (track,) = summary["video_tracks"]
    assert track == {
        "path": str(face_clip),
        "track": 1,
        "start": 0.0,
        "end": 1.1,
        "frames": 12,
        "labels": {"happy": 1.0},
    }
    assert [(e["frame"], e["time"]) for e in summary["examples"]["happy"][:2]] == [(0, 0.0), (1, 0.1)]
    assert (folder / "timelines.png").stat().st_size > 0 and "timelines.png" in (folder / "index.html").read_text()
    with Image.open(folder / "faces.png") as sheet:  # the video's faces cut from their frames, not left grey
        grey = (np.asarray(sheet.convert("RGB")).astype(int) - 128).__abs__().sum(axis=2) < 3
    assert grey.mean() < 0.01


def test_a_timeline_keeps_at_most_max_bins_however_long():
    from fer_cli.outputs.video_report import MAX_BINS, Timeline

    line = Timeline(0.0, 2)
    for i in range(30_000):  # 1,000 s at 30 fps
        line.add(i / 30, "a", np.array([1.0, 0.0]) if i < 15_000 else np.array([0.0, 1.0]))
    times, means = line.series()
    assert len(times) <= MAX_BINS and line.summary()["frames"] == 30_000
    assert means[0].tolist() == [1.0, 0.0] and means[-1].tolist() == [0.0, 1.0] and times[-1] < 1000


@pytest.mark.parametrize("name, codec", [("v.mp4", "libx264"), ("v.mkv", "libx264"), ("v.avi", "mpeg4")])
def test_damaged_files_give_frames_then_at_most_one_error_never_an_exception(tmp_path, name, codec):
    """Cut short, bytes changed, a run of bytes overwritten: whatever the damage, the frames read, then one reason."""
    import random

    noise = np.random.default_rng(0).integers(0, 256, (12, 48, 64, 3), dtype=np.uint8)
    original = write_video(tmp_path / name, noise, codec=codec)
    data = original.read_bytes()
    damaged = tmp_path / f"damaged{original.suffix}"
    chance = random.Random(name)
    for trial in range(40):
        copy = bytearray(data)
        if trial % 3 == 0:
            copy = copy[: chance.randrange(len(copy))]
        elif trial % 3 == 1:
            for _ in range(chance.randint(1, 20)):
                copy[chance.randrange(len(copy))] = chance.randrange(256)
        else:
            at = chance.randrange(len(copy))
            copy[at : at + 300] = bytes(chance.randrange(256) for _ in range(300))
        damaged.write_bytes(bytes(copy))
        *read, end = list(read_frames(str(damaged), Sampling())) or [None]
        assert all(isinstance(frame, VideoFrame) and not frame.last for frame in read), trial
        assert isinstance(end, MissingInput) or (isinstance(end, VideoFrame) and end.last), trial
