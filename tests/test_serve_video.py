"""`fer serve` on short video uploads: the records are `fer predict --fps`'s of the same video, within the server's
limits (duration, frame size, faces, bytes), and bad videos are told as bad images are. The clips are made here
with PyAV (tests/test_video.py's, 200x150 px, 12 frames at 10 fps)."""

from __future__ import annotations

import json

import pytest

from fer_cli.inputs.video import Sampling, read_frames
from fer_cli.serve.video_uploads import VideoLimits

from .test_serve import fer, files, make_client
from .test_video import moving_face, write_video


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    write_video(folder / "face.mp4", moving_face())
    data = write_video(folder / "whole.mp4", moving_face(), container={"movflags": "faststart"}).read_bytes()
    (folder / "cut.mp4").write_bytes(data[: len(data) * 9 // 10])  # its tail lost (its index is at its start)
    (folder / "fake.mp4").write_text("not a video at all\n")
    write_video(folder / "other.webm", moving_face(6), codec="libvpx-vp9")
    return folder


def test_a_video_gives_the_records_fer_predict_gives_at_the_servers_rate(clips, tiny_checkpoint):
    with make_client([tiny_checkpoint], video=VideoLimits(fps=5)) as client:
        response = client.post("/predict", files=files(clips, "face.mp4", "other.webm"))
    assert response.status_code == 200, response.text
    printed = fer("predict", "face.mp4", "other.webm", "-m", tiny_checkpoint, "-f", "json", "-j", 0, "--fps", 5,
                  cwd=clips)  # fmt: skip
    assert printed.exit_code == 0, printed.output
    assert response.text == printed.stdout  # byte for byte: frame, time, track, every number
    records = response.json()
    assert [(r["path"], r["frame"], r["time"]) for r in records] == [
        *[("face.mp4", i, i / 10) for i in range(0, 12, 2)],
        *[("other.webm", i, i / 10) for i in range(0, 6, 2)],
    ]
    assert {r["track"] for r in records} == {1}


def test_a_damaged_video_and_a_fake_one(clips, tiny_checkpoint):
    with make_client([tiny_checkpoint], video=VideoLimits(fps=5)) as client:
        both = client.post("/predict", files=files(clips, "cut.mp4", "fake.mp4"))
        fake = client.post("/predict", files=files(clips, "fake.mp4"))
    assert both.status_code == 200, both.text
    records = both.json()
    cut = [r for r in records if r["path"] == "cut.mp4"]
    assert cut[0]["frame"] == 0 and cut[-1]["error"] and "cut short" in cut[-1]["error"]  # the frames before, then why
    (bad,) = [r for r in records if r["path"] == "fake.mp4"]
    assert bad["error"].startswith("not a video") and "frame" not in bad
    printed = fer("predict", "cut.mp4", "fake.mp4", "-m", tiny_checkpoint, "-f", "json", "-j", 0, "--fps", 5, cwd=clips)
    assert printed.exit_code == 1 and both.text == printed.stdout
    assert fake.status_code == 422 and json.loads(fake.text)["detail"].startswith("skipped fake.mp4: not a video")


def test_the_limits_of_a_video_upload(clips, tiny_checkpoint):
    data = (clips / "face.mp4").read_bytes()
    with make_client([tiny_checkpoint], video=VideoLimits(fps=5, seconds=0.5)) as client:  # the clip is 1.2 s
        long = client.post("/predict", files=files(clips, "face.mp4"))
    assert long.status_code == 413 and "1.2 s long" in long.json()["detail"] and "--max-video-seconds" in long.text
    with make_client([tiny_checkpoint], max_pixels=20_000) as client:  # 200x150 = 30,000 px a frame
        large = client.post("/predict", files=files(clips, "face.mp4"))
    assert large.status_code == 413 and "200x150 pixels a frame" in large.json()["detail"]
    with make_client([tiny_checkpoint], video=VideoLimits(fps=10), max_faces=5) as client:  # a face in each of 12
        crowded = client.post("/predict", files=files(clips, "face.mp4"))
        drawn = client.post("/predict?annotate=true", files=files(clips, "face.mp4"))
    assert crowded.status_code == 413 and "more than 5 faces" in crowded.json()["detail"]
    assert drawn.status_code == 422 and "not a video" in drawn.json()["detail"]
    with make_client([tiny_checkpoint], max_upload_bytes=len(data) // 2) as client:
        heavy = client.post("/predict", files=files(clips, "face.mp4"))
    assert heavy.status_code == 413


def test_frames_past_the_longest_are_never_read_whatever_the_header_says(clips):
    limits = VideoLimits(fps=5, seconds=2)
    sampling = limits.sampling()
    assert (sampling.fps, sampling.end, sampling.max_frames) == (5, 2, 11)
    assert sampling.max_decoded == 480  # 2 s at 240 frames a second: a file of tiny frames stops there
    read = list(read_frames(str(clips / "face.mp4"), Sampling(fps=1, max_decoded=3)))
    assert [frame.index for frame in read[:-1]] == [0]
    assert read[-1].reason == "stopped after decoding 3 frames, the most decoded of one video"
