"""Videos in a real headless browser (chromium and chromedriver, as tests/test_serve.py's page check; skipped where
they are missing): the annotated copy `fer predict --annotate` writes plays, and `fer serve`'s page plays an uploaded
video back with each track's labels along a timeline."""

from __future__ import annotations

import os
import time
from pathlib import Path

import av

from . import test_serve
from .synthetic import CLASSES
from .test_serve import fer, headless_chromium, needs_a_browser
from .test_video import moving_face, write_video

real_server = test_serve.real_server  # the fixture: `fer serve` started as a user starts it


def wait_for(browser, script: str, timeout: float = 30):
    """``script``'s value once it is truthy (or the last one, after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while not (value := browser.run(script)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return value


def test_the_annotated_copy_is_h264_with_every_frame_read(tmp_path):
    write_video(tmp_path / "face.mp4", moving_face())
    result = fer("predict", "face.mp4", "-m", "fast", "-j", 0, "--annotate", "out", "-o", "faces.jsonl", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    with av.open(str(tmp_path / "out" / "face.fer.mp4")) as container:  # what ffprobe would say
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert sum(1 for _ in container.decode(stream)) == 12
        assert "mp4" in container.format.name


@needs_a_browser
def test_the_annotated_copy_plays_in_chromium(tmp_path):
    write_video(tmp_path / "face.mp4", moving_face())
    result = fer("predict", "face.mp4", "-m", "fast", "-j", 0, "--annotate", "out", "-o", "faces.jsonl", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    page = tmp_path / "out" / "play.html"
    page.write_text('<video id="v" src="face.fer.mp4" muted preload="auto"></video>')
    with headless_chromium(page.as_uri()) as browser:
        state = "const v = document.getElementById('v'); return {ready: v.readyState, error: v.error && v.error.code, "
        state += "width: v.videoWidth, duration: v.duration, time: v.currentTime}"
        wait_for(browser, "const v = document.getElementById('v'); return v.readyState >= 2 || !!v.error")
        loaded = browser.run(state)
        assert loaded["error"] is None and loaded["ready"] >= 2 and loaded["width"] > 0, loaded
        assert abs(loaded["duration"] - 1.2) < 0.15, loaded  # 12 frames at 10 fps
        browser.run("document.getElementById('v').play()")
        assert wait_for(browser, "return document.getElementById('v').currentTime > 0.3"), browser.run(state)
        assert browser.run(state)["error"] is None


@needs_a_browser
def test_the_page_plays_a_video_back_with_its_tracks_labels(real_server, tmp_path):
    clip = write_video(tmp_path / "face.mp4", moving_face())
    with headless_chromium(real_server + "/") as browser:
        browser.pick([clip])
        (card,) = browser.cards_when_done(1)
        assert not card["failed"] and "track 1:" in card["text"], card
        assert any(name in card["text"] for name in CLASSES)
        timeline = browser.run(
            "const c = document.querySelector('.card'); return {lines: c.querySelectorAll('.timeline').length, "
            "parts: c.querySelectorAll('.timeline span:not(.now)').length, "
            "ready: c.querySelector('video').readyState}"
        )
        assert timeline["lines"] == 1 and timeline["parts"] == 6, timeline  # 1.2 s read at 5 frames a second
        assert timeline["ready"] >= 2, timeline  # the browser plays the uploaded video
        browser.run("document.querySelector('video').currentTime = 0.5")
        assert wait_for(browser, "return document.querySelectorAll('.card .box').length === 1")  # that frame's face
        if os.environ.get("FER_SCREENSHOT"):  # where to keep a screenshot, to look at it
            Path(os.environ["FER_SCREENSHOT"]).write_bytes(browser.screenshot())
