"""One result model for every image, and the writers that render it: table, json, jsonl, csv.

Machine formats stream: each batch is written and flushed as it comes, so memory stays flat
however many images run. Only the human table waits for the end, to lay out its columns.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from typing import IO

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from .terminal import plain, printable


@dataclass(frozen=True)
class Prediction:
    """What fer_cli says about one face of an input, about an input without a face, or why it failed.

    ``face`` indexes the faces of the image left to right (0 first), ``faces`` counts them, ``box``
    is (x, y, w, h) in the upright image's pixels and ``detector_score`` the face detector's
    confidence (None when the whole image was taken as the face). An image without a face has
    ``faces == 0`` and no label. ``warning`` says why a prediction deserves less trust than its
    confidence suggests (e.g. an input too small to show a face), without withholding it.

    A video's records add ``frame`` (its index in the video, 0 first), ``time`` (seconds from the video's start),
    ``track`` (the face's id across frames, 1 first) and ``smooth`` (the seconds its probabilities were averaged
    over, None when they were not); an image's have none of them.
    """

    path: str
    face: int | None = None
    faces: int | None = None
    box: tuple[int, int, int, int] | None = None
    detector_score: float | None = None
    label: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    model: str = ""
    warning: str | None = None
    frame: int | None = None
    time: float | None = None
    track: int | None = None
    smooth: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        video = {} if self.frame is None else {"frame": self.frame, "time": self.time, "track": self.track}
        return {
            "path": self.path,
            **video,
            "face": self.face,
            "faces": self.faces,
            "box": None if self.box is None else list(self.box),
            "detector_score": _round(self.detector_score),
            "label": self.label,
            "confidence": _round(self.confidence),
            "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
            "model": self.model,
            "error": self.error,
            "warning": self.warning,
            **({} if self.frame is None else {"smooth": self.smooth}),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


class ResultWriter:
    """Receives predictions one batch at a time; ``close`` finishes the document."""

    def __init__(self, stream: IO[str], class_names: list[str], video: bool = False):
        self.stream = stream
        self.class_names = class_names
        self.video = video  # videos among the inputs: their records have frame, time, track and smooth

    def write_batch(self, predictions: list[Prediction]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stream.flush()


class JsonLinesWriter(ResultWriter):
    def write_batch(self, predictions):
        for prediction in predictions:
            self.stream.write(json.dumps(prediction.to_dict(), allow_nan=False) + "\n")
        self.stream.flush()


class JsonWriter(ResultWriter):
    """A JSON array, written element by element (``[]`` when there is nothing)."""

    def __init__(self, stream, class_names, video=False):
        super().__init__(stream, class_names, video)
        self.count = 0

    def write_batch(self, predictions):
        for prediction in predictions:
            self.stream.write(
                ("[\n  " if self.count == 0 else ",\n  ") + json.dumps(prediction.to_dict(), allow_nan=False)
            )
            self.count += 1
        self.stream.flush()

    def close(self):
        self.stream.write("[]\n" if self.count == 0 else "\n]\n")
        super().close()


class CsvWriter(ResultWriter):
    """path, face, faces, x, y, w, h, detector_score, label, confidence, one column per class, model, error, warning;
    with videos among the inputs, frame, time and track after path, and smooth last (blank for images)."""

    def __init__(self, stream, class_names, video=False):
        super().__init__(stream, class_names, video)
        self.writer = csv.writer(stream, lineterminator="\n")
        self.writer.writerow(
            ["path", *VIDEO_COLUMNS[:3] * video, "face", "faces", "x", "y", "w", "h", "detector_score", "label"]
            + ["confidence", *class_names, "model", "error", "warning", *VIDEO_COLUMNS[3:] * video]
        )

    def write_batch(self, predictions):
        for p in predictions:
            probs = [_number(p.probabilities.get(c)) for c in self.class_names]
            box = list(p.box) if p.box is not None else [""] * 4
            video = [_blank(p.frame), _blank(p.time), _blank(p.track)] if self.video else []
            self.writer.writerow(
                [p.path, *video, _blank(p.face), _blank(p.faces), *box, _number(p.detector_score), p.label or ""]
                + [_number(p.confidence), *probs, p.model, p.error or "", p.warning or ""]
                + ([_blank(p.smooth)] if self.video else [])
            )
        self.stream.flush()


VIDEO_COLUMNS = ("frame", "time", "track", "smooth")


def _blank(value) -> str:
    return "" if value is None else str(value)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


IMAGE_WIDTH = 40  # paths up to this long stay on one line: other columns go first; longer ones fold at separators
UNREADABLE = "unreadable"
NO_FACE = "no face"  # beside "0 faces": short, so that the label column stays narrow
WARNED = " !"  # after a label: the record carries a warning


class TableWriter(ResultWriter):
    """A rich table for people: one row per face, the top label highlighted, failures in red.

    What a person reads first (image, face, label, confidence) always stays whole. When the
    terminal is too narrow for everything, the per-class probabilities fold into one column (the
    runner-up class), then the box goes; a line under the table says what was left out. The image
    column keeps up to ``IMAGE_WIDTH`` characters of a path on one line before the box goes; a path
    longer than the column then leaves it folds after a path separator, mid-name only where one name
    alone is longer than the column.
    """

    # From the fullest to the leanest: (box column, probabilities as "classes" | "runner-up" | None, narrow headers)
    LAYOUTS = ((True, "classes", False), (True, "runner-up", False), (False, "runner-up", False), (False, None, False),
               (False, None, True))  # fmt: skip

    def __init__(self, stream, class_names, width: int | None = None, video: bool = False):
        super().__init__(stream, class_names, video)
        self.rows: list[Prediction] = []
        self.width = width  # None: the terminal's (COLUMNS), or 80 when not a terminal

    def write_batch(self, predictions):
        self.rows.extend(predictions)

    def close(self):
        console = Console(file=self.stream, width=self.width)
        for box, probabilities, narrow in self.LAYOUTS:
            table = self.table(box, probabilities, narrow)
            if _fits(console, table):
                break
        # The image column was measured at its narrowest acceptable width; now it takes what the others leave.
        others = _natural_width(console, self.table(box, probabilities, narrow, image_width=0)) - len("image")
        table = self.table(box, probabilities, narrow, image_width=max(console.width - others, 1))
        notes = []
        if probabilities != "classes" and self.class_names:
            shown = "folded into the runner-up" if probabilities else "and the box left out"
            notes.append(f"Per-class probabilities {shown} at {console.width} columns (-f csv or json has them all).")
        if any(p.warning for p in self.rows):
            notes.append(f"{WARNED.strip()} a warning (on stderr, and the 'warning' field of -f json or csv).")
        console.print(table)
        for note in notes:  # under the table, wrapped at the terminal's width, not the table's
            console.print(note, highlight=False)
        super().close()

    def table(
        self, box: bool, probabilities: str | None, narrow: bool = False, image_width: int | None = None
    ) -> Table:
        """The table in one layout, its image column capped for measuring; ``narrow``: short headers, and labels that
        fold, so that the numbers stay whole in a very narrow terminal (40 columns). With ``image_width`` the paths
        are folded at their separators to that width (0: left out, to measure the other columns)."""
        paths = [printable(p.path) for p in self.rows]
        longest_path = max((len(path) for path in paths), default=5)
        if image_width is not None:
            paths = [fold_path(path, image_width) if image_width else "" for path in paths]
        marker = len(WARNED) if any(p.warning for p in self.rows) else 0
        label_width = max([len(NO_FACE), len(UNREADABLE)] + [len(printable(c)) + marker for c in self.class_names])
        if narrow:
            label_width = min(label_width, 8)
        table = Table(show_lines=False, padding=(0, 0 if narrow else 1))
        image_cap = max(5, min(longest_path, IMAGE_WIDTH)) if image_width is None else None
        table.add_column("image", overflow="fold", max_width=image_cap)
        table.add_column("face", justify="right", no_wrap=True)
        if box:
            table.add_column("box (x,y,w,h)", justify="right", no_wrap=True)
        table.add_column("label", overflow="fold", min_width=label_width, max_width=label_width)
        table.add_column("conf." if narrow else "confidence", justify="right", no_wrap=True)
        if probabilities == "classes":
            for name in self.class_names:
                table.add_column(plain(name), justify="right", no_wrap=True)
        elif probabilities == "runner-up":
            table.add_column("runner-up", no_wrap=True)
        blank = [""] * (len(self.class_names) if probabilities == "classes" else 1 if probabilities else 0)
        for p, path in zip(self.rows, paths):
            image = Text(path)  # printable already
            if not p.ok:  # the reason under the path, where the table is widest (it folds at spaces)
                if image_width != 0:
                    image.append(f"\n{printable(p.error)}", style="red")
                cells = ["", Text(UNREADABLE, style="red"), ""]
            elif p.faces == 0:
                cells = ["0 faces", Text(NO_FACE, style="dim"), ""]
            else:
                label = plain(p.label, style="bold")
                if p.warning:
                    label.append(WARNED, style="yellow")
                cells = [f"{p.face + 1} of {p.faces}", label, f"{p.confidence:.1%}"]
            if box:
                cells.insert(1, ",".join(map(str, p.box)) if p.box is not None else "")
            table.add_row(image, *cells, *(self._probabilities(p, probabilities) if p.label else blank))
        return table

    def _probabilities(self, p: Prediction, probabilities: str | None) -> list:
        if probabilities == "classes":
            return [
                f"[bold]{p.probabilities[c]:.2f}[/]" if c == p.label else f"{p.probabilities.get(c, 0.0):.2f}"
                for c in self.class_names
            ]
        if probabilities == "runner-up":
            others = sorted(((v, c) for c, v in p.probabilities.items() if c != p.label), reverse=True)
            return [plain(f"{others[0][1]} {others[0][0]:.1%}") if others else ""]
        return []


def _fits(console: Console, table: Table) -> bool:
    """Whether the table's natural width (no cell wrapped) is within the console's."""
    return _natural_width(console, table) <= console.width


def _natural_width(console: Console, table: Table) -> int:
    return Measurement.get(console, console.options.update_width(10_000), table).maximum


def fold_path(path: str, width: int) -> str:
    """``path`` in lines of at most ``width`` characters, each ending after a path separator where one fits
    (a name longer than ``width`` alone is cut within)."""
    if len(path) <= width:
        return path
    separators = re.escape("".join({"/", os.sep, os.altsep or "/"}))
    pieces = re.findall(f"[^{separators}]*[{separators}]|[^{separators}]+$", path)  # each name and the separator after
    lines, line = [], ""
    for piece in pieces:
        if line and len(line) + len(piece) > width:
            lines.append(line)
            line = ""
        line += piece
        while len(line) > width:
            lines.append(line[:width])
            line = line[width:]
    return "\n".join([*lines, line] if line else lines)


WRITERS: dict[str, type[ResultWriter]] = {
    "table": TableWriter,
    "json": JsonWriter,
    "jsonl": JsonLinesWriter,
    "csv": CsvWriter,
}


# --- the ensemble report -------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def print_ensemble_report(report: dict, console: Console) -> None:
    """Per-model and ensemble summary, per-class recall, per-class scores and confusion matrix."""
    rows = [(m["name"], m["arch"], m["metrics"]) for m in report["models"]]
    rows += [(e["name"], "ensemble", e["metrics"]) for e in report["ensembles"]]
    best_name, _, best = best_entry(rows)
    classes = report["class_names"]
    console.print(_summary_table(report, rows, best_name))
    console.print(_recall_table(classes, rows))
    console.print(BEST_RULE)
    console.print(_per_class_table(classes, best_name, best))
    console.print(_confusion_table(classes, best_name, best))
    if len(report["models"]) > 1:
        console.print("Share of the row model's errors that the column model gets right:")
        console.print(_errors_fixed_table(report))
        console.print(
            f"Diversity: at least one model right on {_pct(report['oracle_accuracy'])} of images; "
            f"all models wrong on {_pct(report['all_wrong_rate'])}."
        )
    if report.get("tta", "none") != "none":
        console.print(f"Test-time augmentation: {report['tta']} (each face's probabilities averaged over its views).")
    if report.get("weights_source"):
        console.print(plain(f"Weights: {report['weights_source']}."))
    for note in report.get("notes", []):
        console.print(Text.assemble(("note:", "yellow"), " ", printable(note)))


MAJORITY = "majority vote"  # its "confidence" is the share of models agreeing: not a probability
BEST_RULE = (
    "Details of the best below: the most accurate, at a tie the best calibrated (lowest ECE; the majority vote, "
    "whose confidence is a share of models, last)."
)


def best_entry(rows: list) -> tuple:
    """The (name, kind, metrics) the report details: the most accurate, at a tie the lowest ECE among those whose
    confidence is a probability (a majority vote's is a share of models: it comes last at a tie)."""
    return max(
        rows,
        key=lambda row: (
            round(row[2]["accuracy"], 9),
            row[0] != MAJORITY,
            -row[2]["expected_calibration_error"],
        ),
    )


SUMMARY_CAPTION = (
    "balanced accuracy and macro F1: the mean recall and F1 of the classes the images have (support > 0). "
    "conf. when right/wrong: mean confidence of the correct/wrong answers. ECE: expected calibration error, the gap "
    "between confidence and accuracy (0 is best). The majority vote has none: its confidence is the share of models "
    "that agree, not a probability (-f json has it)."
)
VOTES_CAPTION = " tagger agreement: the mean share of the votes the answer got, over every image (ties too)."


def _summary_table(report: dict, rows: list, best_name: str) -> Table:
    voted = "votes" in report
    what = "images with a majority of the votes" if voted else "labelled images"
    summary = Table(
        title=plain(f"{report['folder']}: {report['images']:,} {what}"),
        caption=SUMMARY_CAPTION + (VOTES_CAPTION if voted else ""),
        caption_justify="left",
    )
    # Two-line headers keep the numbers' columns narrow, leaving the width to the model names (which
    # fold rather than end in an ellipsis when there is still too little).
    columns = ["model", "kind", "accuracy", "balanced\naccuracy", *(["tagger\nagreement"] if voted else []),
               "macro F1", "conf. when\nright", "conf. when\nwrong", "ECE"]  # fmt: skip
    for column in columns:
        if column in ("model", "kind"):
            summary.add_column(column, overflow="fold")
        else:
            summary.add_column(column, justify="right")
    for name, kind, metrics in rows:
        summary.add_row(
            plain(name),
            plain(kind),
            _pct(metrics["accuracy"]),
            _pct(metrics.get("balanced_accuracy")),
            *([_pct(metrics["votes"]["tagger_agreement"])] if voted else []),
            f"{metrics['macro_f1']:.3f}",
            *(
                ["-", "-", "-"]
                if name == MAJORITY and kind == "ensemble"
                else [
                    _pct(metrics["mean_confidence_correct"]),
                    _pct(metrics["mean_confidence_incorrect"]),
                    f"{metrics['expected_calibration_error']:.3f}",
                ]
            ),
            style="bold green" if name == best_name else None,
        )
    return summary


def _recall_table(classes: list[str], rows: list) -> Table:
    """A row per model, as in the summary above, and a column per class: model names, however many
    and however long, stay whole (they fold in their column), class names are short."""
    recall = Table(title="Recall per class")
    recall.add_column("model", overflow="fold")
    supports = {c: rows[0][2]["per_class"][c]["support"] for c in classes}
    for c in classes:
        recall.add_column(plain(c), justify="right", no_wrap=True)
    recall.add_row("[dim]images[/]", *[f"[dim]{supports[c]:,}[/]" for c in classes], end_section=True)
    for name, _, metrics in rows:
        recall.add_row(plain(name), *[_pct(metrics["per_class"][c]["recall"]) if supports[c] else "-" for c in classes])
    return recall


def _per_class_table(classes: list[str], name: str, metrics: dict) -> Table:
    per_class = Table(title=plain(f"Per-class results of {name}"))
    for column in ("class", "precision", "recall", "F1", "support"):
        per_class.add_column(column, justify="left" if column == "class" else "right")
    for c in classes:
        scores = metrics["per_class"][c]
        per_class.add_row(
            plain(c),
            f"{scores['precision']:.3f}",
            f"{scores['recall']:.3f}",
            f"{scores['f1']:.3f}",
            str(scores["support"]),
        )
    return per_class


def _confusion_table(classes: list[str], name: str, metrics: dict) -> Table:
    matrix = Table(title=plain(f"Confusion matrix of {name} (rows: true, columns: predicted)"))
    matrix.add_column("true \\ predicted")
    for c in classes:
        matrix.add_column(plain(c[:8]), justify="right")
    for i, (c, row) in enumerate(zip(classes, metrics["confusion_matrix"])):
        matrix.add_row(plain(c), *[f"[bold]{v}[/]" if j == i else str(v) for j, v in enumerate(row)])
    return matrix


def _errors_fixed_table(report: dict) -> Table:
    names = [m["name"] for m in report["models"]]
    fixed = Table()
    fixed.add_column("errors of", overflow="fold")
    for name in names:
        fixed.add_column(plain(name), justify="right", overflow="fold")
    for name, row in zip(names, report["errors_fixed_by"]):
        fixed.add_row(plain(name), *["-" if other == name else _pct(share) for other, share in zip(names, row)])
    return fixed
