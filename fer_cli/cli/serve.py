"""`fer serve`: the server's limits from the options, the models loaded and the port bound before it listens
(``fer_cli.serve`` is the server).
"""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import FerError
from ..models.tta import TTA
from .console import err_console, note
from .options import DeviceOpt, Faces, FacesOpt, MinFaceOpt, TtaOpt, smallest_face


def serve(
    host: Annotated[
        str, typer.Option("--host", metavar="ADDRESS", help="Address to listen on (0.0.0.0: every interface).")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, metavar="N", help="Port to listen on (0: any free one).")
    ] = 8000,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            metavar="NAME|FILE",
            help="A shipped model's name or a checkpoint/.onnx file; repeat for an ensemble (mean vote). "
            "Default: the best shipped model, as for predict.",
        ),
    ] = None,
    faces: FacesOpt = Faces.auto,
    min_face: MinFaceOpt = None,
    tta: TtaOpt = TTA.none,
    device: DeviceOpt = "auto",
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", min=0.001, metavar="MB", help="Largest request body; larger: 413.")
    ] = 20.0,
    queue: Annotated[
        int,
        typer.Option("--queue", min=1, metavar="N", help="Images waiting at most; more: 503 with Retry-After."),
    ] = 256,
    batch_window_ms: Annotated[
        float,
        typer.Option(
            "--batch-window-ms", min=0, metavar="MS", help="How long a short batch waits for concurrent requests."
        ),
    ] = 2.0,
    max_batch: Annotated[
        int,
        typer.Option(
            "--max-batch", min=1, metavar="N", help="Faces in one model batch (more on a GPU); a request's are split."
        ),
    ] = 16,
    max_faces: Annotated[
        int, typer.Option("--max-faces", min=1, metavar="N", help="Faces in one request at most; more: 413.")
    ] = 1000,
    video_fps: Annotated[
        float,
        typer.Option(
            "--video-fps", min=0.01, max=30, metavar="N", help="Frames read a second of an uploaded video's time."
        ),
    ] = 5.0,
    max_video_seconds: Annotated[
        float,
        typer.Option(
            "--max-video-seconds",
            min=0.1,
            max=3600,
            metavar="S",
            help="Longest uploaded video (its header); longer: 413. Frames past it are never read.",
        ),
    ] = 60.0,
    max_megapixels: Annotated[
        float,
        typer.Option(
            "--max-megapixels", min=0.001, metavar="MP", help="Pixels of one image (from its header); more: 413."
        ),
    ] = 40.0,
    decode_memory_mb: Annotated[
        float,
        typer.Option(
            "--decode-memory-mb",
            min=1,
            metavar="MB",
            help="Memory for images being decoded at once (others wait); one image needing more: 413.",
        ),
    ] = 768.0,
    upload_budget_mb: Annotated[
        float,
        typer.Option(
            "--upload-budget-mb",
            min=0.001,
            metavar="MB",
            help="Bodies of all requests in hand (the bytes received), together; more: 503.",
        ),
    ] = 256.0,
    answer_memory_mb: Annotated[
        float,
        typer.Option(
            "--answer-memory-mb",
            min=0.001,
            metavar="MB",
            help="Answers waiting for their clients to take them, together; more: new uploads 503.",
        ),
    ] = 256.0,
    max_connections: Annotated[
        int,
        typer.Option(
            "--max-connections",
            min=1,
            metavar="N",
            help="Connections open at once (fewer if ulimit -n is low); more: 503.",
        ),
    ] = 1000,
    header_timeout: Annotated[
        float, typer.Option("--header-timeout", min=0.1, metavar="S", help="Seconds for a request's headers; then 408.")
    ] = 10.0,
    body_timeout: Annotated[
        float, typer.Option("--body-timeout", min=0.1, metavar="S", help="Seconds for a request's body; then 408.")
    ] = 60.0,
    send_timeout: Annotated[
        float,
        typer.Option(
            "--send-timeout",
            min=0.1,
            metavar="S",
            help="Seconds a client may take an answer at under 64 KB/s (or not at all); then the connection is reset.",
        ),
    ] = 30.0,
    shutdown_grace: Annotated[
        float,
        typer.Option(
            "--shutdown-grace",
            min=1,
            metavar="S",
            help="Seconds SIGTERM/Ctrl-C leaves received requests to be answered (an upload still arriving: 503).",
        ),
    ] = 5.0,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-host",
            metavar="NAME",
            help="Another name to answer to (besides localhost, IP addresses, this host's name); '*': any. Repeatable.",
        ),
    ] = None,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="A line per request.")] = True,
) -> None:
    """Serve predictions over HTTP, with a page to drop photos on.

    POST /predict takes images and short videos (multipart, field "files") and answers the records
    `fer predict --format json` prints (a video's: `--fps` at --video-fps), each with the client's
    file name as its path; ?annotate=true with one image answers the annotated PNG. GET /models, GET /health; GET / is the page, /docs the API.
    Models load once, before the server listens. Needs the serve extra: pip install '.[serve]'.

    Every limit answers at once with a status and one line (413 too large, 408 too slow, 503 busy
    with Retry-After); other web pages (a foreign Origin or Host) are refused.

    \b
    Examples:
      fer serve                          # http://127.0.0.1:8000/
      fer serve --port 9000 -m fast      # another port, the ONNX model
      curl -F files=@face.png http://127.0.0.1:8000/predict
    """
    import importlib.util

    missing = [name for name in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(name) is None]
    if missing:
        raise FerError(
            f"fer serve needs the serve extra ({', '.join(missing)} not installed): in fer's folder, "
            "pip install '.[serve]'"
        )
    import socket

    from ..api import Model
    from ..engine.predict import Predictor
    from ..models.zoo import resolve_model
    from ..serve.app import ServeConfig, create_app
    from ..serve.server import ConnectionLimits, connection_cap
    from ..serve.video_uploads import VideoLimits

    smallest = smallest_face(min_face)
    classifiers = [resolve_model(name, note=note) for name in model] if model else [resolve_model(None, note=note)]
    voting = Model(classifiers)  # one model's probabilities (as fer predict), or the mean of several's
    predictor = Predictor(classifiers, device, faces.value, tta=tta, min_face=smallest)
    config = ServeConfig(
        max_upload_bytes=round(max_upload_mb * 2**20),
        upload_budget_bytes=round(max(upload_budget_mb, max_upload_mb) * 2**20),  # room for one largest upload
        answer_budget_bytes=round(answer_memory_mb * 2**20),
        queue=queue,
        max_pixels=round(max_megapixels * 1e6),
        decode_budget_bytes=round(decode_memory_mb * 2**20),
        max_faces=max_faces,
        batch_window_s=batch_window_ms / 1000,
        max_batch=max_batch,
        host=host,
        allowed_hosts=tuple(allow_host or ()),
        video=VideoLimits(video_fps, max_video_seconds),
    )
    connections = connection_cap(max_connections)
    if connections < max_connections:
        note(
            f"--max-connections {max_connections} lowered to {connections}: the open-file limit (ulimit -n) holds no more"
        )
    limits = ConnectionLimits(connections, header_timeout, body_timeout, shutdown_grace, send_timeout_s=send_timeout)
    try:  # bound here, so that a port in use is one line and exit 2, and --port 0 can say which it got
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listening = socket.socket(family, socket.SOCK_STREAM)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind((host, port))
        listening.listen(2048)  # before the line below: a client that reads it may connect at once
    except (OSError, OverflowError) as error:
        # an address that names no interface is the host's fault; one in use (or not allowed) the port's
        which = "--host" if isinstance(error, socket.gaierror) or getattr(error, "errno", None) == 99 else "--port"
        raise typer.BadParameter(
            f"cannot listen on {host}:{port}: {getattr(error, 'strerror', None) or error}", param_hint=which
        ) from None
    bound = listening.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    err_console.print(
        f"serving {voting.name} ({', '.join(predictor.devices)}) on http://{shown}:{bound}/ (API: /docs); Ctrl-C stops",
        highlight=False,
    )
    _run_server(create_app(predictor, voting.vote, voting.name, config), listening, limits, access_log)


def _run_server(application, listening, limits, access_log: bool) -> None:
    from ..serve.server import run

    run(application, listening, limits, access_log)
