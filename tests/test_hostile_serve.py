"""`fer serve` against clients that mean harm (issue 24): real servers on loopback, attacked over
raw sockets and HTTP as such a client would, with the answers' status, how long they took and the
server's memory (its RSS, sampled from /proc) asserted.

Three servers: one as a user starts it (the default model, every default limit), one with tight
limits and a small open-file limit (the tiny model: timeouts of a second or two, 20 faces a
request), and one stopped with SIGTERM while a client stalls. Every server's RSS is watched: past
RSS_CEILING it is killed, so that a regression fails a test instead of taking the machine down.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image
from typer.testing import CliRunner

from fer_cli.cli.app import app as cli_app

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
RSS_CEILING = 4 * 2**30
MB = 2**20


# --- servers ---------------------------------------------------------------------------------------


class Server:
    """`python -m fer_cli serve --port 0 ARGS` in its own process: its URL, its log, its memory."""

    def __init__(self, args: list[str], open_files: int | None = None):
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))) if open_files else None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fer_cli", "serve", "--port", "0", "--no-access-log", *args],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            preexec_fn=limit,
        )
        self.log: list[str] = []
        for line in self.process.stderr:
            self.log.append(line)
            if line.startswith("serving "):  # the socket listens before this line is printed
                break
        else:
            pytest.fail("fer serve did not start: " + "".join(self.log))
        self.url = line.split(" on ")[1].split()[0].rstrip("/")
        self.host, port = self.url.removeprefix("http://").split(":")
        self.port = int(port)
        self.killed = False
        self.peak = 0
        threading.Thread(target=self._read_log, daemon=True).start()
        threading.Thread(target=self._watch_memory, daemon=True).start()

    def _read_log(self) -> None:
        for line in self.process.stderr:
            self.log.append(line)

    def _watch_memory(self) -> None:
        while self.process.poll() is None:
            rss = self.rss()
            self.peak = max(self.peak, rss)
            if rss > RSS_CEILING:
                self.killed = True
                self.process.kill()
            time.sleep(0.02)

    def rss(self) -> int:
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return 0
        return next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)

    def growth(self, baseline: int) -> int:
        """How far the RSS rose above ``baseline`` since ``reset_peak``."""
        assert not self.killed, f"the server passed {RSS_CEILING / MB:,.0f} MB and was killed"
        return self.peak - baseline

    def reset_peak(self) -> int:
        self.peak = self.rss()
        return self.peak

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def client(self, **headers) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, headers=headers)

    def connect(self) -> socket.socket:
        connection = socket.create_connection((self.host, self.port), timeout=60)
        return connection


@pytest.fixture(scope="module")
def server():
    """As a user starts it: the default model, every default limit."""
    running = Server([])
    yield running
    running.stop()
    assert "Traceback" not in "".join(running.log)


@pytest.fixture(scope="module")
def tight(tiny_checkpoint):
    """Tight limits, and room for 200 open files (ulimit -n 200): at most 50 connections."""
    args = ["-m", str(tiny_checkpoint), "--header-timeout", "1", "--body-timeout", "2", "--max-faces", "20"]
    running = Server(args, open_files=200)
    assert "note: --max-connections 1000 lowered to 50: the open-file limit" in "".join(running.log)
    yield running
    running.stop()
    log = "".join(running.log)
    assert "Traceback" not in log and "Too many open files" not in log


def until(condition, timeout: float = 60, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout}s"
        time.sleep(0.02)
    return result


def answer_of(connection: socket.socket, timeout: float = 60) -> tuple[int | None, bytes, float]:
    """Read until the server closes: (the status it answered, or None; what it sent; seconds taken)."""
    started = time.monotonic()
    connection.settimeout(timeout)
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    status = re.match(rb"HTTP/1\.1 (\d{3})", received)
    return (int(status.group(1)) if status else None), received, time.monotonic() - started


# --- images ------------------------------------------------------------------------------------------


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def blank_png(width: int, height: int) -> bytes:
    """A black RGB PNG of any size in a few hundred KB, written without holding its pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = bytes(1 + 3 * width)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def face(name: str = "happy.png") -> tuple[str, bytes]:
    return name, (EXAMPLES / name).read_bytes()


# --- 1. a thin image, annotated --------------------------------------------------------------------


def test_a_thin_image_annotated_is_a_small_png_in_seconds(server):
    """A 199-byte 1x60000 PNG once made a 256x15,360,000 copy (17 GB, 254 s); a 1x4000 one a 500."""
    baseline = server.reset_peak()
    with server.client() as http:
        for height in (4000, 60000):
            started = time.monotonic()
            response = http.post(
                "/predict?annotate=true", files=[("files", ("thin.png", png(Image.new("L", (1, height), 128))))]
            )
            took = time.monotonic() - started
            assert response.status_code == 200 and response.headers["content-type"] == "image/png", response.text
            copy = Image.open(io.BytesIO(response.content))
            assert copy.size == (1, max(height, 4096))  # enlarged no further than a 4096-px long side
            assert took < 30
    assert server.growth(baseline) < 300 * MB


def test_fer_predict_annotates_a_thin_image_and_reports_a_copy_it_cannot_draw(tiny_checkpoint, tmp_path, monkeypatch):
    Image.new("L", (1, 4000), 128).save(tmp_path / "tall.png")
    Image.open(EXAMPLES / "happy.png").save(tmp_path / "happy.png")
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(
        cli_app, ["predict", str(tmp_path / "tall.png"), str(tmp_path / "happy.png"), "-m", str(tiny_checkpoint),
                  "--annotate", str(out), "-f", "json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert Image.open(out / "tall.fer.png").size == (1, 4096) and (out / "happy.fer.png").exists()

    # Drawing that fails in a way of its own (Pillow's bomb check, here forced) is one copy missing, not a crash.
    from fer_cli.outputs import annotate

    def explode(*args):
        raise Image.DecompressionBombError("forced")

    monkeypatch.setattr(annotate, "_draw", explode)
    again = runner.invoke(
        cli_app, ["predict", str(tmp_path / "tall.png"), str(tmp_path / "happy.png"), "-m", str(tiny_checkpoint),
                  "--annotate", str(tmp_path / "again"), "-f", "json"],
    )  # fmt: skip
    assert again.exit_code == 1 and "Traceback" not in again.output
    assert "no annotated copy: cannot draw the copy (DecompressionBombError)" in again.stderr
    assert "2 annotated copies could not be written" in again.stderr
    assert len(json.loads(again.stdout)) == 2  # both records written all the same


# --- 2. decoded pixels ---------------------------------------------------------------------------------


def test_large_pixel_pngs_are_refused_from_their_header(server):
    """Eight 531 KB 13000x13000 PNGs at once once took the RSS from 0.8 to 5.9 GB."""
    big = ("big.png", blank_png(13000, 13000))
    baseline = server.reset_peak()
    with server.client() as http, ThreadPoolExecutor(4) as clients:
        started = time.monotonic()
        answers = list(clients.map(lambda _: http.post("/predict", files=[("files", big)]), range(4)))
        took = time.monotonic() - started
    assert [a.status_code for a in answers] == [413] * 4
    assert answers[0].json()["detail"] == (
        "big.png is 13000x13000 pixels (169 megapixels): this server reads at most 40 megapixels an image "
        "(fer serve --max-megapixels)"
    )
    assert took < 30 and server.growth(baseline) < 200 * MB


def test_an_image_just_over_the_cap_is_not_said_to_be_at_it(server):
    """Issue 33: 40,005,000 pixels were refused as "(40 megapixels)" by a server that reads "at most 40"."""
    with server.client() as http:
        answer = http.post("/predict", files=[("files", ("edge.png", blank_png(8001, 5000)))])
    assert answer.status_code == 413
    assert answer.json()["detail"].startswith("edge.png is 8001x5000 pixels (40.005 megapixels): this server reads at ")


def test_large_images_under_the_cap_are_decoded_a_few_at_a_time(server):
    """Four 36-megapixel RGB PNGs at once: each takes ~260 MB to read, and the decode budget (768 MB
    by default, ~430 MB estimated apiece) lets them through one by one."""
    large = ("large.png", blank_png(6000, 6000))
    baseline = server.reset_peak()
    with server.client() as http, ThreadPoolExecutor(4) as clients:
        answers = list(clients.map(lambda _: http.post("/predict", files=[("files", large)]), range(4)))
    assert [a.status_code for a in answers] == [200] * 4
    assert answers[0].json()[0]["faces"] == 0
    assert server.growth(baseline) < 600 * MB  # four at once: over 1 GB


# --- 3. faces per request ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_model():
    """The shipped ResNet-18 (~130 faces/s here): the default model reads 200 faces in 0.2 s, too
    short a time to tell a fair server from one that runs a request's faces as one batch."""
    running = Server(["-m", "resnet18_ferplus"])
    yield running
    running.stop()
    assert "Traceback" not in "".join(running.log)


def test_a_one_face_request_is_not_stuck_behind_a_many_face_one(slow_model):
    """255 faces in one request (with a probe, the queue's 256 images) and, while it runs, one-face
    requests one after another: each waits for a batch or two, not for the 255 faces (once they were
    one batch, 27 s for 930)."""
    many = [("files", face())] * 255
    baseline = slow_model.reset_peak()
    answer: list = []
    with slow_model.client() as http, slow_model.client() as probe:
        started = time.monotonic()

        def send_many():
            answer.append(http.post("/predict", files=many))
            answer.append(time.monotonic())

        sender = threading.Thread(target=send_many)
        sender.start()
        until(lambda: probe.get("/health").json()["waiting"] >= 255, what="the 255 faces' admission")
        probes = []
        while sender.is_alive():
            sent = time.monotonic()
            response = probe.post("/predict", files=[("files", face("sad.png"))])
            probes.append((response.status_code, sent, time.monotonic()))
        sender.join()
    many_answered = answer[1]
    took = many_answered - started
    assert answer[0].status_code == 200 and len(answer[0].json()) == 255
    assert probes and all(code == 200 for code, _, _ in probes)
    # The first one-face request, sent once the 255 were admitted, is answered before them: what
    # tells fairness from one big batch whatever the machine's speed or load.
    assert probes[0][2] < many_answered, f"the first one-face request waited for all 255 faces ({took:.1f}s)"
    slowest = max(answered - sent for _, sent, answered in probes)
    assert slowest < took / 3, f"a one-face request took {slowest:.1f}s beside a 255-face one of {took:.1f}s"
    assert slow_model.growth(baseline) < 300 * MB


def test_more_faces_than_a_request_may_have_is_413(tight):
    with tight.client() as http:
        refused = http.post("/predict", files=[("files", face())] * 21)
        taken = http.post("/predict", files=[("files", face())] * 20)
    assert refused.status_code == 413
    assert refused.json()["detail"] == (
        "more than 20 faces in one request: this server takes at most 20 (fer serve --max-faces); "
        "send the images in several requests"
    )
    assert taken.status_code == 200 and len(taken.json()) == 20


# --- 4. slow clients --------------------------------------------------------------------------------


def test_a_body_sent_a_byte_at_a_time_is_cut_off(tight):
    """--body-timeout 2: once, a body at 1 byte/s was still open after 75 s."""
    with tight.connect() as slow:
        slow.sendall(
            f"POST /predict HTTP/1.1\r\nHost: {tight.host}:{tight.port}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n".encode()
        )
        dripping = threading.Event()

        def drip():
            with contextlib.suppress(OSError):  # the server has closed it
                while not dripping.wait(0.3):
                    slow.sendall(b"x")

        threading.Thread(target=drip, daemon=True).start()
        status, received, took = answer_of(slow)
        dripping.set()
    assert status == 408 and b"--body-timeout" in received
    assert took < 20


def test_headers_that_never_end_are_cut_off(tight):
    """--header-timeout 1: once, a request whose headers never ended was still open after 70 s."""
    with tight.connect() as slow, tight.connect() as silent:
        slow.sendall(f"GET /health HTTP/1.1\r\nHost: {tight.host}:{tight.port}\r\n".encode())
        dripping = threading.Event()

        def drip():
            with contextlib.suppress(OSError):  # the server has closed it
                while not dripping.wait(0.3):
                    slow.sendall(b"X-Slow: 1\r\n")

        threading.Thread(target=drip, daemon=True).start()
        status, received, took = answer_of(slow)
        dripping.set()
        assert status == 408 and b"--header-timeout" in received and took < 20
        status, received, took = answer_of(silent)  # connected, and never a byte: closed without a word
        assert status is None and received == b"" and took < 20


def test_a_flood_of_half_sent_requests_does_not_use_up_the_files(tight):
    """Under ulimit -n 200, 220 half-sent requests once made /health time out ('Too many open files').
    The server is stopped (SIGSTOP) while they connect, so that it meets them all at once."""
    flood = []
    os.kill(tight.process.pid, signal.SIGSTOP)
    try:
        for _ in range(220):
            connection = socket.socket()
            connection.setblocking(False)
            with contextlib.suppress(BlockingIOError):  # connecting: the kernel queues it for the server
                connection.connect((tight.host, tight.port))
            flood.append(connection)
    finally:
        os.kill(tight.process.pid, signal.SIGCONT)
    try:
        for connection in flood:
            with contextlib.suppress(OSError):  # refused already, or never accepted (the queue was full)
                connection.settimeout(5)
                connection.sendall(f"POST /predict HTTP/1.1\r\nHost: {tight.host}:{tight.port}\r\n".encode())
        with tight.client() as http:
            started = time.monotonic()
            health = http.get("/health")
            assert health.status_code in (200, 503) and time.monotonic() - started < 10  # an answer, at once
            if health.status_code == 503:
                assert health.headers["retry-after"] == "1" and "--max-connections" in health.json()["detail"]
            # The half-sent ones are dropped after --header-timeout: the server answers 200 again.
            until(lambda: http.get("/health").status_code == 200, timeout=30, what="/health answering 200")
    finally:
        for connection in flood:
            connection.close()
    assert "no file descriptor left" not in "".join(tight.log)


def test_sigterm_with_a_stalled_upload_stops_within_10s_and_answers_what_it_received(tmp_path):
    """Once, SIGTERM waited as long as a stalled client stayed ("Waiting for connections to close")."""
    stopping = Server([])
    try:
        with stopping.client() as http, stopping.connect() as stalled:
            stalled.sendall(
                f"POST /predict HTTP/1.1\r\nHost: {stopping.host}:{stopping.port}\r\n"
                "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n".encode()
            )
            answer: list = []
            sender = threading.Thread(
                target=lambda: answer.append(http.post("/predict", files=[("files", face())] * 8))
            )
            sender.start()  # received in full, then being answered when SIGTERM comes
            with httpx.Client(base_url=stopping.url, timeout=60) as probe:
                until(lambda: answer or probe.get("/health").json()["waiting"] >= 8, what="the 8 faces' admission")
            signalled = time.monotonic()
            stopping.process.send_signal(signal.SIGTERM)
            code = stopping.process.wait(timeout=30)
            took = time.monotonic() - signalled
            sender.join(timeout=30)
            status, received, _ = answer_of(stalled, timeout=5)
    finally:
        stopping.stop()
    assert took < 10 and code == 128 + signal.SIGTERM
    assert answer and answer[0].status_code == 200 and len(answer[0].json()) == 8  # every received request answered
    assert status in (503, None)  # told the server is stopping, or simply closed
    assert "Traceback" not in "".join(stopping.log)


# --- 5. formats -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["EPS", "DDS", "ICO", "PCX", "TGA", "SGI", "XBM"])
def test_formats_the_reader_does_not_open_are_422(server, kind):
    """Only the documented formats reach a decoder: PostScript would have run Ghostscript."""
    buffer = io.BytesIO()
    image = Image.open(EXAMPLES / "happy.png").convert("1" if kind == "XBM" else "RGB")
    image.save(buffer, kind)
    with server.client() as http:
        response = http.post("/predict", files=[("files", (f"face.{kind.lower()}", buffer.getvalue()))])
    assert response.status_code == 422
    assert response.json()["detail"] == f"skipped face.{kind.lower()}: not an image (or an unsupported format)"


# --- 6. what the server exposes ----------------------------------------------------------------------


def test_a_cross_origin_post_is_refused(server):
    """Any page the user visits could once post to 127.0.0.1:8000 (a multipart POST needs no preflight)."""
    own = f"http://{server.host}:{server.port}"
    with server.client() as http:
        for origin in ("http://evil.example", "null", f"http://localhost:{server.port}", f"http://{server.host}:1"):
            refused = http.post("/predict", files=[("files", face())], headers={"Origin": origin})
            assert refused.status_code == 403, origin
            assert "only this server's own page" in refused.json()["detail"]
        assert http.post("/predict", files=[("files", face())], headers={"Origin": own}).status_code == 200  # the page
        assert http.post("/predict", files=[("files", face())]).status_code == 200  # curl: no Origin
        read = http.get("/health", headers={"Origin": "http://evil.example"})
        assert read.status_code == 200 and "access-control-allow-origin" not in read.headers  # unreadable to that page


def test_a_foreign_host_name_is_refused(server):
    """DNS rebinding (a page's own name pointed at 127.0.0.1) once read /models and /health, and could POST."""
    with server.client() as http:
        for path in ("/models", "/health", "/", "/docs", "/openapi.json"):
            refused = http.get(path, headers={"Host": f"rebind.evil.example:{server.port}"})
            assert refused.status_code == 421, path
        posted = http.post("/predict", files=[("files", face())], headers={"Host": "rebind.evil.example"})
        assert posted.status_code == 421 and "--allow-host" in posted.json()["detail"]
        names = (f"localhost:{server.port}", f"127.0.0.1:{server.port}", f"[::1]:{server.port}", socket.gethostname())
        for host in names:
            assert http.get("/health", headers={"Host": host}).status_code == 200, host


def test_no_server_path_no_third_party_url_and_no_echo(server):
    with server.client() as http:
        for path in ("/models", "/health", "/", "/docs", "/openapi.json"):
            response = http.get(path)
            assert response.status_code == 200, path
            assert str(REPO) not in response.text and "/weights/" not in response.text, path
            assert not re.search(r"https?://(?!127\.0\.0\.1|localhost)", response.text), path  # nothing from elsewhere
        # A field that is not a file: one line, not the field sent back (once a 4.5 MB request, a 9.25 MB answer).
        fields = {"files": ["x" * 900_000] * 5}
        response = http.post("/predict", data=fields, files=[("other", ("a", b"b"))])
        assert response.status_code == 422 and len(response.content) < 300 and "xxxx" not in response.text
        assert response.json()["detail"] == (
            'send the images as files in the multipart field "files" (curl -F files=@face.png URL)'
        )


# --- 7. uploads that never come, answers never read (issue 33) ------------------------------------


@pytest.fixture(scope="module")
def budgeted(tiny_checkpoint):
    """A 2 MB upload budget (1 MB a request), and a body timeout long enough to hold it through a test."""
    args = ["-m", str(tiny_checkpoint), "--max-upload-mb", "1", "--upload-budget-mb", "2", "--body-timeout", "60"]
    running = Server(args)
    yield running
    running.stop()
    assert "Traceback" not in "".join(running.log)


PART = b'--b\r\nContent-Disposition: form-data; name="files"; filename="held.png"\r\n\r\n'  # a body's opening


def admitted_upload(server: Server, length: int) -> socket.socket:
    """A POST /predict that declares a body of ``length`` bytes and waits for the server's word to
    send it (Expect: 100-continue): returned once the server has admitted it, before a byte of it."""
    connection = server.connect()
    connection.sendall(
        f"POST /predict HTTP/1.1\r\nHost: {server.host}:{server.port}\r\nExpect: 100-continue\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {length}\r\n\r\n".encode()
    )
    head = b""
    while not head.endswith(b"\r\n\r\n") and (byte := connection.recv(1)):  # the interim answer, and no further
        head += byte
    assert head.startswith(b"HTTP/1.1 100 "), head
    return connection


def upload_bytes(server: Server) -> int:
    with server.client() as http:
        return http.get("/health").json()["upload_bytes"]


def test_uploads_that_send_no_body_hold_none_of_the_budget(budgeted):
    """Issue 33: 13 connections declaring 20 MB each and sending nothing held the whole 256 MB
    upload budget, and every other upload was 503 for the 60 s body timeout (reopened as they
    were closed: for good). Here two declare 1 MB each, the whole 2 MB budget, and send nothing."""
    stalled = [admitted_upload(budgeted, MB) for _ in range(2)]
    try:
        with budgeted.client() as http:
            probe = http.post("/predict", files=[("files", face())])
            assert probe.status_code == 200, probe.text
            assert http.get("/health").json()["upload_bytes"] == 0  # declared, not received: nothing in hand
    finally:
        for connection in stalled:
            connection.close()


def test_the_bytes_received_count_against_the_upload_budget(budgeted):
    """The budget holds what has arrived: an upload declaring more than is left is 503 at once, and
    one admitted while there was room is cut off (503) as soon as the bytes in hand pass it."""
    first, second, third = (admitted_upload(budgeted, MB) for _ in range(3))  # 3 MB declared: no byte held yet
    try:
        first.sendall(PART + bytes(MB // 2 - len(PART)))
        second.sendall(PART + bytes(6 * MB // 10 - len(PART)))
        in_hand = MB // 2 + 6 * MB // 10
        until(lambda: upload_bytes(budgeted) == in_hand, what="1.1 MB of uploads in hand")
        with budgeted.client() as http:
            refused = http.post("/predict", files=[("files", ("big.png", bytes(MB - 4096)))])
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert "of uploads in hand" in refused.json()["detail"] and "--upload-budget-mb" in refused.json()["detail"]
        # The third passes the budget with its last byte: all of it read, then refused and closed.
        third.sendall(PART + bytes(2 * MB - in_hand + 1 - len(PART)))
        status, received, _ = answer_of(third)
        assert status == 503 and b"--upload-budget-mb" in received
    finally:
        for connection in (first, second, third):
            connection.close()
    until(lambda: upload_bytes(budgeted) == 0, what="the closed uploads' bytes let go")
    with budgeted.client() as http:
        assert http.post("/predict", files=[("files", face())]).status_code == 200


@pytest.fixture(scope="module")
def hurried(tiny_checkpoint):
    """A client has 10 s to take its answer (--send-timeout 10: a client starved of the CPU on a loaded machine once
    missed 5); answers waiting hold at most 4 MB."""
    running = Server(["-m", str(tiny_checkpoint), "--send-timeout", "10", "--answer-memory-mb", "4"])
    yield running
    running.stop()
    assert "Traceback" not in "".join(running.log)


def noise_jpeg(side: int) -> bytes:
    """A JPEG of noise: its annotated copy is a PNG of ~3 bytes a pixel (nothing in it compresses)."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), random.Random(0).randbytes(side * side * 3)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def unread_annotation(server: Server, image: bytes) -> socket.socket:
    """POST /predict?annotate=true with ``image``, sent whole from a socket with a 4 KB receive
    buffer that never reads its answer."""
    body = (
        b'--b\r\nContent-Disposition: form-data; name="files"; filename="noise.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n" + image + b"\r\n--b--\r\n"
    )
    connection = socket.socket()
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    connection.settimeout(60)
    connection.connect((server.host, server.port))
    connection.sendall(
        f"POST /predict?annotate=true HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return connection


def closed_by_server(connection: socket.socket) -> bool:
    """Whether the server has closed (or reset) the connection, told by its TCP state, without
    reading what it sent."""
    state = connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    return state in (7, 8)  # TCP_CLOSE (reset), TCP_CLOSE_WAIT (closed)


def test_answers_their_clients_do_not_take_are_dropped_and_held_within_a_budget(hurried):
    """Issue 33: 12 clients with a 4 KB receive buffer that never read their annotated PNGs (106 MB
    each, of an 8.7 MB noise JPEG) held the server at +1.4 GB for 160 s and more, as long as they
    stayed. Here the answers are ~8.7 MB (a 1700x1700 noise JPEG), over the 4 MB answer budget."""
    image = noise_jpeg(1700)
    unread = [unread_annotation(hurried, image) for _ in range(2)]
    try:
        with hurried.client() as http:
            until(lambda: http.get("/health").json()["answer_bytes"] > 4 * MB, what="an answer waiting for its client")
            refused = http.post("/predict", files=[("files", face())])  # new work waits for the answers to go
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert "--answer-memory-mb" in refused.json()["detail"]
            until(lambda: all(closed_by_server(c) for c in unread), what="the connections that do not read closed")
            until(lambda: http.get("/health").json()["answer_bytes"] == 0, what="their answers let go")
            assert http.post("/predict", files=[("files", face())]).status_code == 200
            taken = http.post("/predict?annotate=true", files=[("files", ("noise.jpg", image))])  # a client that reads
            assert taken.status_code == 200 and len(taken.content) > 8 * MB
            copy = Image.open(io.BytesIO(taken.content))
            copy.load()  # whole: a cut one fails here
            assert copy.size == (1700, 1700)
    finally:
        for connection in unread:
            connection.close()
