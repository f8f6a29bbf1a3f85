"""`fer serve`'s HTTP API: the same records as `fer predict --format json`, over HTTP, and a page.

    POST /predict          one or many images or short videos (multipart, field "files"): the records, a JSON array
    POST /predict?annotate=true   one image: a PNG copy with its faces' boxes and labels drawn
    GET  /models           what `fer models` lists, and the models this server runs (names, no paths)
    GET  /health           up, the models, the queue
    GET  /                 a page to drop photos on
    GET  /docs             the API, on a page made here (/openapi.json: the schema)

A record's ``path`` is the file name the client sent with the upload (as it sent it: a name, not a
place on this machine); the body of a response is byte for byte what ``fer predict -f json`` prints
for files of those names. Nothing a client sends is written under its own name: images are read in
memory (Starlette spools a part over 1 MB to an anonymous temporary file while it parses). A video's records are
`fer predict --fps` records of its frames (``video_uploads.py``: ``--video-fps`` a second, at most
``--max-video-seconds``).

Load, and clients that mean harm: the door (``door.py``) turns away other web pages and foreign
Host names, and admits an upload only while the queue, the upload budget (bytes received) and the
answer budget (answers not yet taken by their clients) have room, before its body is read. Each image is weighed from its header (``uploads.py``: pixels, memory to decode)
before it is decoded; reading threads (``pool.py``) take the images of the requests waiting in turn,
within a memory budget; the batcher (``batcher.py``) runs the faces through the models in batches
of ``max_batch``, one face of each request in turn. A request with too many faces is refused as soon
as its count passes ``max_faces``. Slow and stalled connections are uvicorn's side (``server.py``).
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, Query, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response

from .. import __version__
from ..engine.predict import Outcome, Predictor, to_predictions
from ..engine.video_records import VideoRecords
from ..inputs.images import ImageBytes, is_video_file
from ..models.zoo import model_catalogue
from ..outputs.annotate import class_colours
from ..outputs.results import JsonWriter, Prediction, printable
from .batcher import Batcher
from .docs import api_page
from .door import Door, HostCheck, answers_waiting, busy
from .pool import FairPool, MemoryBudget, Stopping, trim
from .uploads import Refused, annotate_task, check_sizes, header_tasks, read_tasks
from .video_uploads import VideoLimits, each_input

PAGE = Path(__file__).with_name("page.html")
IDLE_TRIM_S = 1.0  # idle this long after a request: freed memory handed back to the system


@dataclass(frozen=True)
class ServeConfig:
    max_upload_bytes: int = 20 * 2**20  # a request's body; larger: 413
    upload_budget_bytes: int = 256 * 2**20  # the bodies of all requests in hand together (as received); more: 503
    answer_budget_bytes: int = 256 * 2**20  # answers waiting for their clients to take them; more: new uploads 503
    queue: int = 256  # images admitted and not yet answered; one more: 503
    max_pixels: int = 40_000_000  # one image's, from its header; more: 413 before decoding
    decode_budget_bytes: int = 768 * 2**20  # decodes in flight, by their estimated peak; an image past it alone: 413
    max_faces: int = 1000  # faces in one request; more: 413
    batch_window_s: float = 0.002  # how long a short batch waits for more requests
    max_batch: int = 16  # faces in one model batch (a request's faces are split over several)
    retry_after_s: int = 1  # the Retry-After of a 503
    reading_threads: int = max(4, os.cpu_count() or 1)  # images read at once
    host: str = "127.0.0.1"  # the address listened on: a name given here is one the server answers to
    allowed_hosts: tuple[str, ...] = field(default_factory=tuple)  # more Host names to answer to; "*": any
    video: VideoLimits = VideoLimits()  # what is read of an uploaded video: frames a second, seconds


def create_app(predictor: Predictor, vote, model_label: str, config: ServeConfig = ServeConfig()) -> FastAPI:
    """The API over ``predictor`` (models already loaded and on their device), voting with ``vote``
    ((faces, models, classes) -> (faces, classes)) and naming ``model_label`` in every record."""
    state = _State(predictor, vote, model_label, config)

    async def lifespan(app: FastAPI):
        state.batcher = Batcher(predictor, config.max_batch, config.batch_window_s)
        # Reading gets a few threads of its own, not the event loop's default pool of 40: more only
        # thrash beside the models, and each thread's allocator arena keeps its memory (RSS grew).
        state.readers = FairPool(config.reading_threads, MemoryBudget(config.decode_budget_bytes))
        try:
            yield
        finally:
            state.stop_trimming()
            await asyncio.get_running_loop().run_in_executor(None, _close, state)

    app = FastAPI(
        title="fer serve",
        version=__version__,
        description="Facial-expression recognition over HTTP: the records of `fer predict --format json` "
        "for uploaded images, and a page to drop photos on (`/`).",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's /docs and /redoc fetch their scripts from CDNs: /docs is made here instead
        redoc_url=None,
    )
    app.state.fer = state  # the predictor, the batcher, the queue: for /health, and for tests
    names = [socket.gethostname(), *config.allowed_hosts]
    if config.host not in ("0.0.0.0", "::", ""):
        names.append(config.host)
    app.add_middleware(Door, hosts=HostCheck(names, any_host="*" in config.allowed_hosts), state=state)

    @app.exception_handler(RequestValidationError)
    async def one_line(request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's own answer repeats each bad part whole (a 4.5 MB field, a 9 MB answer): one line instead
        return _error(422, _what_was_wrong(error))

    @app.post(
        "/predict",
        summary="Label the expression of every face in uploaded images",
        response_description="A JSON array of records, one per face (or per image without a face, or "
        "unreadable), exactly as `fer predict --format json` prints them; with annotate=true, a PNG.",
        responses={
            200: {"content": {"application/json": {}, "image/png": {}}},
            403: {"description": "Sent by another web page (an Origin that is not this server's)."},
            408: {"description": "The headers or the body took too long to arrive (--header-timeout, --body-timeout)."},
            413: {
                "description": "The body is over --max-upload-mb; more images than --queue; an image over "
                "--max-megapixels or --decode-memory-mb; more faces than --max-faces."
            },
            421: {"description": "The Host header is not a name of this server (--allow-host)."},
            422: {
                "description": "No upload is an image (the detail is the line `fer predict` prints), "
                "or annotate=true with more than one image, or no files."
            },
            503: {
                "description": "Busy (the queue, the upload or answer budget, or the connections are full): try again after "
                "Retry-After seconds. Or the server is stopping."
            },
        },
    )
    async def predict(
        files: Annotated[
            list[UploadFile],
            File(
                description="Images (any format `fer predict` reads) or short videos (.mp4 .mov .mkv .webm .avi "
                ".m4v: their frames at --video-fps, up to --max-video-seconds); the field may repeat."
            ),
        ],
        annotate: Annotated[
            bool, Query(description="Return the one image with its faces' boxes, labels and confidences drawn.")
        ] = False,
    ) -> Response:
        if len(files) > config.queue:
            return _error(413, f"{len(files)} images in one request; this server takes at most {config.queue}")
        if annotate and len(files) != 1:
            return _error(422, f"annotate=true takes one image; this request has {len(files)}")
        if annotate and is_video_file(files[0].filename or ""):
            return _error(422, "annotate=true takes one image, not a video (fer predict --annotate draws on videos)")
        if state.waiting + len(files) > config.queue:
            return busy(state)
        state.waiting += len(files)
        try:
            items = await _received(files)
            headers, outcomes = await _read_and_run(state, items)
            videos = VideoRecords()  # a video's frames: their time and track ids, as fer predict gives them
            rows = [
                videos.records(outcome, to_predictions(outcome, vote, predictor.class_names, model_label))
                for outcome in outcomes
            ]
            if all(outcome.error for outcome in outcomes):
                return _error(422, "\n".join(_skipped_line(outcome) for outcome in outcomes))
            if annotate:
                if state.answering > config.answer_budget_bytes:  # filled while this one was read: draw no more
                    return answers_waiting(state)
                return await _annotated_answer(state, items[0], headers[0], rows[0])
            video = any(outcome.frame is not None for outcome in outcomes)
            return Response(_json_document(rows, predictor.class_names, video), media_type="application/json")
        except Refused as refusal:
            return _error(refusal.status, refusal.detail)
        except (Stopping, asyncio.CancelledError):
            # uvicorn cancels what is not answered when the shutdown grace ends: that is an answer too, not a 500
            return _error(
                503,
                "the server is stopping and could not answer in time (fer serve --shutdown-grace)",
                headers={"Retry-After": "5"},
            )
        finally:
            state.waiting -= len(files)
            if state.waiting == 0:
                state.fell_idle()

    @app.get("/models", summary="The models this server runs, and what `fer models` lists")
    def models() -> dict:
        return {"serving": state.serving, **state.catalogue}

    @app.get("/health", summary="Up, the models, and the queue")
    async def health() -> dict:
        batcher = state.batcher
        return {
            "status": "ok",
            "model": model_label,
            "class_names": predictor.class_names,
            "waiting": state.waiting,
            "queue": config.queue,
            "faces_waiting": batcher.faces_waiting if batcher else 0,
            "batches": batcher.batches if batcher else 0,
            "requests": batcher.requests if batcher else 0,
            "faces": batcher.faces if batcher else 0,
            "upload_bytes": state.uploading,
            "answer_bytes": state.answering,
        }

    @app.get("/", response_class=HTMLResponse, summary="A page to drop photos on")
    async def page() -> HTMLResponse:
        return HTMLResponse(state.page)

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(api_page(app.openapi()))

    return app


async def _received(files: list[UploadFile]) -> list[ImageBytes]:
    """The uploads' bytes, in hand; their spooled copies, if any, closed."""
    items = [
        ImageBytes(upload.filename or f"upload-{number}", await upload.read()) for number, upload in enumerate(files, 1)
    ]
    for upload in files:
        await upload.close()
    return items


async def _read_and_run(state: _State, items: list[ImageBytes]) -> tuple[list, list[Outcome]]:
    """Each image weighed from its header (a request with one too large is refused, 413), read in
    the reading threads, then through the models: (the headers, the outcomes). Awaiting a thread's
    future through ``wrap_future``: if the request is abandoned, its work not yet started is dropped."""
    config = state.config
    headers = await asyncio.wrap_future(state.readers.submit(header_tasks(items)))
    check_sizes(items, headers, config.max_pixels, config.decode_budget_bytes, config.video)
    reading = read_tasks(state.predictor, items, headers, config.max_faces, config.video)
    inputs, read = each_input(items, await asyncio.wrap_future(state.readers.submit(reading)))
    return headers, await asyncio.wrap_future(state.batcher.submit(inputs, read))


async def _annotated_answer(state: _State, item: ImageBytes, header, predictions: list[Prediction]) -> Response:
    """The annotated PNG, drawn in the reading threads within the decode budget; 422 if it cannot be drawn."""
    try:
        png = await asyncio.wrap_future(state.readers.submit([annotate_task(item, header, predictions, state.colours)]))
    except ValueError as error:  # AnnotationError: the drawing library failed on this image
        return _error(422, f"no annotated copy of {printable(item.name)}: {error}")
    return Response(png[0], media_type="image/png")


def _close(state: _State) -> None:
    state.readers.close()
    state.batcher.close()


def _what_was_wrong(error: RequestValidationError) -> str:
    """FastAPI's validation errors as one line, naming the field and never repeating what was sent."""
    lines = []
    for problem in error.errors():
        where = [str(part) for part in problem.get("loc", ()) if part not in ("body", "query")]
        field_name = where[0] if where else "request"
        if field_name == "files":
            line = 'send the images as files in the multipart field "files" (curl -F files=@face.png URL)'
        else:
            line = f"{field_name}: {problem.get('msg', 'invalid')}"
        if line not in lines:
            lines.append(line)
    return "; ".join(lines) or "the request is not one this API takes"


class _State:
    def __init__(self, predictor: Predictor, vote, model_label: str, config: ServeConfig):
        self.predictor, self.vote, self.model_label, self.config = predictor, vote, model_label, config
        self.batcher: Batcher | None = None
        self.readers: FairPool | None = None
        self.waiting = 0  # images admitted and not yet answered (touched only on the event loop)
        self.uploading = 0  # bytes of the bodies of requests in hand, as received (the door's count, on the event loop)
        self.answering = 0  # bytes of answers not yet taken by their clients (the door's count, on the event loop)
        self.colours = class_colours(predictor.class_names)
        self.catalogue = _without_paths(model_catalogue())  # read once: listing the shipped models loads each
        self.serving = [
            {
                "name": c.name,
                "arch": c.arch,
                "class_names": c.class_names,
                "input": c.preprocess,
                "temperature": c.temperature,
                "val_accuracy": c.val_accuracy,
                "device": device,
                "file": os.path.basename(c.path),
            }
            for c, device in zip(predictor.classifiers, predictor.devices)
        ]
        self.page = PAGE.read_text(encoding="utf-8")
        self._trim_timer: asyncio.TimerHandle | None = None
        self._stopping = False

    def fell_idle(self) -> None:
        """Nothing waiting: if it stays so for a second, hand the memory freed since back to the
        system, so that the RSS returns near idle after a burst (glibc keeps it otherwise)."""
        if self._trim_timer is not None:
            self._trim_timer.cancel()
            self._trim_timer = None
        if self._stopping:
            return
        loop = asyncio.get_running_loop()
        self._trim_timer = loop.call_later(IDLE_TRIM_S, self._trim_if_idle, loop)

    def stop_trimming(self) -> None:
        """The server is stopping: no trim is due any more. A request cancelled at the end of the
        shutdown grace still falls idle afterwards, while asyncio is shutting its default executor
        down; a trim scheduled then would fail there with a traceback in the log."""
        self._stopping = True
        if self._trim_timer is not None:
            self._trim_timer.cancel()
            self._trim_timer = None

    def _trim_if_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        self._trim_timer = None
        if self.waiting == 0 and not self._stopping:
            loop.run_in_executor(None, trim)


def _without_paths(catalogue: dict) -> dict:
    """What `fer models` lists, each model's file by its name only: where the server keeps its
    files is nobody else's business (and tells a caller the user's name and layout)."""
    shipped = []
    for entry in catalogue["shipped"]:
        entry = dict(entry)
        entry["file"] = os.path.basename(entry.pop("path"))
        shipped.append(entry)
    return {**catalogue, "shipped": shipped}


def _error(status: int, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _skipped_line(outcome: Outcome) -> str:
    """The line `fer predict` prints on stderr for an input it could not read."""
    return f"skipped {printable(outcome.path)}: {outcome.error}"


def _json_document(rows: list[list[Prediction]], class_names: list[str], video: bool = False) -> bytes:
    """The records as `fer predict --format json` writes them, by the same writer."""
    stream = io.StringIO()
    writer = JsonWriter(stream, class_names, video)
    for predictions in rows:
        writer.write_batch(predictions)
    writer.close()
    return stream.getvalue().encode("utf-8")
