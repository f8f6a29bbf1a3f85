"""One prediction run, the shared body of `fer predict` and of `fer ensemble` on unlabelled images: the inputs
streamed through the models, each batch voted on, written, annotated and counted, then the summary on stderr and
the exit code.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import typer

from ..errors import Interrupted, SourceError
from ..files import written_whole
from ..outputs.destination import ResultsFile
from ..outputs.terminal import markup_safe
from .console import INPUTS_FAILED, PROCESS_STARTED, err_console, plural, report_skipped, report_warning
from .destinations import (
    close_writer,
    open_annotator,
    open_output,
    open_report_folder,
    refuse_clashing_outputs,
    writer_for,
)
from .video_options import VideoSettings


def predict_and_write(
    classifiers, sources, vote, model_label, fmt, output, device, batch_size, workers, faces, annotate, tta, shard=None,
    report=None, video=VideoSettings(), min_face=None,
) -> None:  # fmt: skip
    """The shared body of `predict` and unlabelled `ensemble`: stream, vote, write, annotate, report, exit code."""
    from ..engine.predict import align_classes, predict_stream
    from ..engine.video_records import VideoRecords
    from ..inputs.images import iter_image_paths
    from ..inputs.video import has_videos
    from ..outputs.annotate_video import VideoCopies

    class_names = align_classes(classifiers)
    collector = None
    if report is not None:  # matplotlib is loaded only for a report
        from ..outputs.report import PredictionReport

        collector = PredictionReport(open_report_folder(report), class_names, model_label)
    started = time.perf_counter()
    items = list(iter_image_paths(sources, on_note=lambda note: err_console.print(note, highlight=False), videos=True))
    if not items:
        raise SourceError("no input paths were given (standard input was empty)")
    if shard is not None:
        total, items = len(items), shard.select(items)
        err_console.print(f"shard {shard.index}/{shard.count}: {len(items):,} of {total:,} inputs", highlight=False)
    refuse_clashing_outputs(output, report, annotate, items)
    destination, chosen = open_output(output, fmt)
    annotator = open_annotator(annotate, class_names)
    tally = Tally()
    videos = VideoRecords(video.smooth)
    copies = VideoCopies(annotator, video.sampling) if annotator and has_videos(items) else None
    try:
        with destination as stream:
            writer = writer_for(chosen, has_videos(items))(stream, class_names, video=has_videos(items))
            try:
                batches = predict_stream(
                    classifiers, items, device, batch_size, workers, faces=faces.value, tta=tta,
                    sampling=video.sampling, on_ready=lambda: setattr(tally, "ready_at", time.perf_counter()),
                    min_face=min_face,
                )  # fmt: skip
                write_predictions(
                    batches, len(items), writer, destination, vote, model_label, annotator, tally, collector, videos,
                    copies,
                )  # fmt: skip
            finally:
                close_writer(writer, destination)
    except (KeyboardInterrupt, Interrupted):
        if output is not None and tally.done and not destination.discarded:
            err_console.print(
                f"results of {tally.done:,} of {plural(len(items), 'input')} kept in {markup_safe(output)}",
                highlight=False,
            )
        raise
    if collector is not None:
        with written_whole(report):
            collector.write()
        err_console.print(f"report in {markup_safe(report)}{os.sep}index.html", highlight=False)
    summarise(tally, started, annotator, annotate)


@dataclasses.dataclass
class Tally:
    done: int = 0  # inputs
    failed: int = 0  # inputs that could not be read
    found: int = 0  # faces
    not_annotated: int = 0  # annotated copies that could not be written
    frames: int = 0  # video frames read
    read: int = 0  # images and video frames
    ready_at: float | None = None  # when the models were ready (a first run's ONNX export is start-up, not predicting)


def write_predictions(
    batches, total, writer, destination, vote, model_label, annotator, tally, collector, videos, copies
) -> None:  # fmt: skip
    """Each batch of outcomes voted on, written, annotated and counted as it comes (a video's frames given their
    tracks by ``videos``, its copy annotated once its last frame is in)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..engine.predict import to_predictions
    from ..inputs.video import ends_input

    class_names = writer.class_names
    # Results piped to another program (| head, | less) share the terminal with the bar: no bar then.
    piped = destination is not None and not isinstance(destination, ResultsFile) and _stdout_is_a_pipe()
    progress = Progress(
        TextColumn("predicting{task.fields[frames]}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err_console, transient=True, disable=piped,
    )  # fmt: skip
    with progress:
        task = progress.add_task("predict", total=total, frames="")  # frames: how many of videos, once there are
        for outcomes in batches:
            ended = sum(ends_input(outcome.frame) for outcome in outcomes)
            progress.advance(task, ended)
            predictions = []
            for outcome in outcomes:
                rows = videos.records(outcome, to_predictions(outcome, vote, class_names, model_label))
                predictions.extend(rows)
                for row in rows:
                    if row.warning and videos.first_warning(row):
                        report_warning(row.path, row.warning)
                tally.found += len(outcome.faces)
                tally.frames += outcome.frame is not None
                tally.read += 1
                error = outcome.error or next((row.error for row in rows if row.error), None)
                if error:
                    tally.failed += 1
                    report_skipped(outcome.path, error)
                elif annotator and outcome.frame is None:
                    try:
                        annotator.annotate(outcome.path, rows)
                    except (OSError, ValueError) as error:  # a full disk, a file changed meanwhile
                        tally.not_annotated += 1
                        report_skipped(outcome.path, f"no annotated copy: {error}")
                try:
                    if copies is not None:
                        copies.add(outcome.path, outcome.frame, rows)
                except (OSError, ValueError) as error:  # as an image's copy
                    tally.not_annotated += 1
                    report_skipped(outcome.path, f"no annotated copy: {error}")
            if tally.frames:  # a long video is one input: the bar alone would stand still
                progress.update(task, frames=f" ({plural(tally.frames, 'video frame')})")
            writer.write_batch(predictions)
            if collector is not None:
                collector.add(predictions)
            tally.done += ended
            if isinstance(destination, ResultsFile):
                destination.produced()


def summarise(tally: Tally, started: float, annotator, annotate) -> None:
    """The run's last lines on stderr, and its exit code: 1 when an input or an annotated copy failed. The time is
    the whole run's; starting up is Python, the imports and the models made ready (a checkpoint's first ONNX export
    included), and the rate is the predicting's after it, given only when something was predicted."""
    now = time.perf_counter()
    started = tally.ready_at or started
    seconds, starting = now - PROCESS_STARTED, started - PROCESS_STARTED
    predicted = tally.done - tally.failed
    per_second = tally.read / (now - started) if now > started else 0.0
    unit = "images" if not tally.frames else "frames" if tally.frames == tally.read else "images and frames"
    rate = f", then {per_second:,.{0 if per_second >= 10 else 1}f} {unit}/s" if predicted and per_second else ""
    frames = f"; {plural(tally.frames, 'video frame')}" if tally.frames else ""
    err_console.print(
        f"{predicted:,} of {plural(tally.done, 'input')} predicted ({plural(tally.found, 'face')}"
        f"{frames}) in {seconds:.1f}s ({starting:.1f}s starting up{rate})",
        highlight=False,
    )
    if annotator:
        copies = plural(annotator.written, "annotated copy", "annotated copies")
        err_console.print(f"{copies} in {markup_safe(annotate)}", highlight=False)
    if tally.failed:
        err_console.print(f"[yellow]{plural(tally.failed, 'input')} could not be read[/]", highlight=False)
    if tally.not_annotated:
        copies = plural(tally.not_annotated, "annotated copy", "annotated copies")
        err_console.print(f"[yellow]{copies} could not be written[/]", highlight=False)
    if tally.failed or tally.not_annotated:
        raise typer.Exit(INPUTS_FAILED)


def _stdout_is_a_pipe() -> bool:
    import stat

    try:
        return stat.S_ISFIFO(os.fstat(sys.stdout.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):  # not a real file (a test's capture)
        return False
