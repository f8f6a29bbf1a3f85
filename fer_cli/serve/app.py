"""`fer serve`'s HTTP API: the same records as `fer predict --format json`, over HTTP, and a page.

    POST /predict          one or many images (multipart, field "files"): the records, a JSON array
    POST /predict?annotate=true   one image: a PNG copy with its faces' boxes and labels drawn
    GET  /models           what `fer models` lists, and the models this server runs
    GET  /health           up, the models, the queue
    GET  /                 a page to drop photos on
    GET  /docs             the API, documented by FastAPI (OpenAPI)

A record's ``path`` is the file name the client sent with the upload (as it sent it: a name, not a
place on this machine); the body of a response is byte for byte what ``fer predict -f json`` prints
for files of those names. Nothing a client sends is written under its own name: images are read in
memory (Starlette spools a part over 1 MB to an anonymous temporary file while it parses).

Load: each request reads its images in a thread, the batcher puts the faces of concurrent requests
through the models together, and the event loop only moves bytes. Admission is bounded: more images
waiting than ``queue`` answers 503 with Retry-After at once, instead of holding memory; a body over
``max_upload_bytes`` answers 413 before it is read.
"""

from __future__ import annotations

import asyncio
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response

from .. import __version__
from ..engine.predict import Outcome, Predictor, to_predictions
from ..inputs.images import ImageBytes
from ..models.zoo import model_catalogue
from ..outputs.annotate import annotated, class_colours
from ..outputs.results import JsonWriter, Prediction, printable
from .batcher import Batcher

PAGE = Path(__file__).with_name("page.html")


@dataclass(frozen=True)
class ServeConfig:
    max_upload_bytes: int = 20 * 2**20  # a request's body; larger: 413
    queue: int = 256  # images admitted and not yet answered; one more: 503
    batch_window_s: float = 0.002  # how long a short batch waits for more requests
    max_batch: int = 16  # faces the batcher gathers into one model batch (one request's are never split)
    retry_after_s: int = 1  # the Retry-After of a 503
    reading_threads: int = max(4, os.cpu_count() or 1)  # requests read at once (a big photo holds only one)


def create_app(predictor: Predictor, vote, model_label: str, config: ServeConfig = ServeConfig()) -> FastAPI:
    """The API over ``predictor`` (models already loaded and on their device), voting with ``vote``
    ((faces, models, classes) -> (faces, classes)) and naming ``model_label`` in every record."""
    state = _State(predictor, vote, model_label, config)

    async def lifespan(app: FastAPI):
        state.batcher = Batcher(predictor, config.max_batch, config.batch_window_s)
        # Reading gets a few threads of its own, not the event loop's default pool of 40: more only
        # thrash beside the models, and each thread's allocator arena keeps its memory (RSS grew).
        state.readers = ThreadPoolExecutor(config.reading_threads, thread_name_prefix="fer-read")
        try:
            yield
        finally:
            state.readers.shutdown(wait=True)
            await run_in_threadpool(state.batcher.close)

    app = FastAPI(
        title="fer serve",
        version=__version__,
        description="Facial-expression recognition over HTTP: the records of `fer predict --format json` "
        "for uploaded images, and a page to drop photos on (`/`).",
        lifespan=lifespan,
    )
    app.state.fer = state  # the predictor, the batcher, the queue: for /health, and for tests
    app.add_middleware(
        BodyLimit,
        limit=config.max_upload_bytes,
        paths=("/predict",),
        busy=lambda: _busy(state) if state.waiting >= config.queue else None,
    )

    @app.post(
        "/predict",
        summary="Label the expression of every face in uploaded images",
        response_description="A JSON array of records, one per face (or per image without a face, or "
        "unreadable), exactly as `fer predict --format json` prints them; with annotate=true, a PNG.",
        responses={
            200: {"content": {"application/json": {}, "image/png": {}}},
            413: {"description": "The body is over --max-upload-mb, or has more images than the queue holds."},
            422: {
                "description": "No upload is an image (the detail is the line `fer predict` prints), "
                "or annotate=true with more than one image."
            },
            503: {"description": "The queue is full: try again after Retry-After seconds."},
        },
    )
    async def predict(
        files: Annotated[
            list[UploadFile], File(description="Images (any format `fer predict` reads); the field may repeat.")
        ],
        annotate: Annotated[
            bool, Query(description="Return the one image with its faces' boxes, labels and confidences drawn.")
        ] = False,
    ) -> Response:
        if len(files) > config.queue:
            return _error(413, f"{len(files)} images in one request; this server takes at most {config.queue}")
        if annotate and len(files) != 1:
            return _error(422, f"annotate=true takes one image; this request has {len(files)}")
        if state.waiting + len(files) > config.queue:
            return _busy(state)
        state.waiting += len(files)
        try:
            items = [
                ImageBytes(upload.filename or f"upload-{number}", await upload.read())
                for number, upload in enumerate(files, 1)
            ]
            read = await asyncio.get_running_loop().run_in_executor(
                state.readers, lambda: [predictor.read(index, item) for index, item in enumerate(items)]
            )
            outcomes: list[Outcome] = await asyncio.wrap_future(state.batcher.submit(items, read))
        finally:
            state.waiting -= len(files)
        rows = [to_predictions(outcome, vote, predictor.class_names, model_label) for outcome in outcomes]
        if all(outcome.error for outcome in outcomes):
            return _error(422, "\n".join(_skipped_line(outcome) for outcome in outcomes))
        if annotate:
            png = await run_in_threadpool(_annotated_png, items[0], rows[0], state.colours)
            return Response(png, media_type="image/png")
        return Response(_json_document(rows, predictor.class_names), media_type="application/json")

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
            "batches": batcher.batches if batcher else 0,
            "requests": batcher.requests if batcher else 0,
            "faces": batcher.faces if batcher else 0,
        }

    @app.get("/", response_class=HTMLResponse, summary="A page to drop photos on")
    async def page() -> HTMLResponse:
        return HTMLResponse(state.page)

    return app


class _State:
    def __init__(self, predictor: Predictor, vote, model_label: str, config: ServeConfig):
        self.predictor, self.vote, self.model_label, self.config = predictor, vote, model_label, config
        self.batcher: Batcher | None = None
        self.readers: ThreadPoolExecutor | None = None
        self.waiting = 0  # images admitted and not yet answered (touched only on the event loop)
        self.colours = class_colours(predictor.class_names)
        self.catalogue = model_catalogue()  # read once: listing the shipped models loads each
        self.serving = [
            {
                "name": c.name,
                "arch": c.arch,
                "class_names": c.class_names,
                "input": c.preprocess,
                "temperature": c.temperature,
                "val_accuracy": c.val_accuracy,
                "device": device,
                "path": c.path,
            }
            for c, device in zip(predictor.classifiers, predictor.devices)
        ]
        self.page = PAGE.read_text(encoding="utf-8")


def _busy(state: _State) -> JSONResponse:
    return _error(
        503,
        f"busy: {state.waiting} images waiting (at most {state.config.queue}); try again shortly",
        headers={"Retry-After": str(state.config.retry_after_s)},
    )


def _error(status: int, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _skipped_line(outcome: Outcome) -> str:
    """The line `fer predict` prints on stderr for an input it could not read."""
    return f"skipped {printable(outcome.path)}: {outcome.error}"


def _json_document(rows: list[list[Prediction]], class_names: list[str]) -> bytes:
    """The records as `fer predict --format json` writes them, by the same writer."""
    stream = io.StringIO()
    writer = JsonWriter(stream, class_names)
    for predictions in rows:
        writer.write_batch(predictions)
    writer.close()
    return stream.getvalue().encode("utf-8")


def _annotated_png(item: ImageBytes, predictions: list[Prediction], colours: dict) -> bytes:
    buffer = io.BytesIO()
    annotated(item, predictions, colours).save(buffer, "PNG")
    return buffer.getvalue()


class BodyLimit:
    """ASGI middleware at the door of ``paths``: a full queue answers ``busy()``'s 503 before the
    body is read; a body over ``limit`` bytes answers 413, before it is read when Content-Length
    gives it away, else as soon as the streamed body passes the limit."""

    def __init__(self, app, limit: int, paths: tuple[str, ...], busy=lambda: None):
        self.app, self.limit, self.paths, self.busy = app, limit, paths, busy

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        if (refusal := self.busy()) is not None:
            return await refusal(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._too_large(scope, send)
        received = 0
        refused = False

        async def counting_receive():
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit and not refused:
                    refused = True
                    await self._too_large(scope, send)
                    return {"type": "http.disconnect"}  # the app stops reading; its answer is dropped
            return message

        async def guarded_send(message):
            if not refused:
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not refused:
                raise

    async def _too_large(self, scope, send) -> None:
        response = _error(413, f"the upload is over {self.limit / 2**20:g} MB (fer serve --max-upload-mb)")
        await response(scope, None, send)
