"""One result model for every image, and the writers that render it: table, json, jsonl, csv.

Machine formats stream: each batch is written and flushed as it comes, so memory stays flat
however many images run. Only the human table waits for the end, to lay out its columns.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from typing import IO

from rich.console import Console
from rich.table import Table


@dataclass(frozen=True)
class Prediction:
    """What fer_cli says about one face of an input, about an input without a face, or why it failed.

    ``face`` indexes the faces of the image left to right (0 first), ``faces`` counts them, ``box``
    is (x, y, w, h) in the upright image's pixels and ``detector_score`` the face detector's
    confidence (None when the whole image was taken as the face). An image without a face has
    ``faces == 0`` and no label.
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

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "face": self.face,
            "faces": self.faces,
            "box": None if self.box is None else list(self.box),
            "detector_score": _round(self.detector_score),
            "label": self.label,
            "confidence": _round(self.confidence),
            "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
            "model": self.model,
            "error": self.error,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


class ResultWriter:
    """Receives predictions one batch at a time; ``close`` finishes the document."""

    def __init__(self, stream: IO[str], class_names: list[str]):
        self.stream = stream
        self.class_names = class_names

    def write_batch(self, predictions: list[Prediction]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stream.flush()


class JsonLinesWriter(ResultWriter):
    def write_batch(self, predictions):
        for prediction in predictions:
            self.stream.write(json.dumps(prediction.to_dict()) + "\n")
        self.stream.flush()


class JsonWriter(ResultWriter):
    """A JSON array, written element by element (``[]`` when there is nothing)."""

    def __init__(self, stream, class_names):
        super().__init__(stream, class_names)
        self.count = 0

    def write_batch(self, predictions):
        for prediction in predictions:
            self.stream.write(("[\n  " if self.count == 0 else ",\n  ") + json.dumps(prediction.to_dict()))
            self.count += 1
        self.stream.flush()

    def close(self):
        self.stream.write("[]\n" if self.count == 0 else "\n]\n")
        super().close()


class CsvWriter(ResultWriter):
    """path, face, faces, x, y, w, h, detector_score, label, confidence, one column per class, model, error."""

    def __init__(self, stream, class_names):
        super().__init__(stream, class_names)
        self.writer = csv.writer(stream, lineterminator="\n")
        self.writer.writerow(
            ["path", "face", "faces", "x", "y", "w", "h", "detector_score", "label", "confidence", *class_names]
            + ["model", "error"]
        )

    def write_batch(self, predictions):
        for p in predictions:
            probs = [_number(p.probabilities.get(c)) for c in self.class_names]
            box = list(p.box) if p.box is not None else [""] * 4
            self.writer.writerow(
                [p.path, _blank(p.face), _blank(p.faces), *box, _number(p.detector_score), p.label or ""]
                + [_number(p.confidence), *probs, p.model, p.error or ""]
            )
        self.stream.flush()


def _blank(value) -> str:
    return "" if value is None else str(value)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


class TableWriter(ResultWriter):
    """A rich table for people: one row per face, the top label highlighted, failures in red."""

    def __init__(self, stream, class_names):
        super().__init__(stream, class_names)
        self.rows: list[Prediction] = []

    def write_batch(self, predictions):
        self.rows.extend(predictions)

    def close(self):
        console = Console(file=self.stream)
        table = Table(show_lines=False)
        table.add_column("image", overflow="fold")
        table.add_column("face", justify="right")
        table.add_column("box (x, y, w, h)", justify="right")
        table.add_column("label", style="bold")
        table.add_column("confidence", justify="right")
        for name in self.class_names:
            table.add_column(name, justify="right")
        blank = [""] * len(self.class_names)
        for p in self.rows:
            if not p.ok:
                table.add_row(p.path, "", "", f"[red]{p.error}[/]", "", *blank)
            elif p.faces == 0:
                table.add_row(p.path, "0 faces", "", "[dim]no face found[/]", "", *blank)
            else:
                cells = [
                    f"[bold]{p.probabilities[c]:.2f}[/]" if c == p.label else f"{p.probabilities.get(c, 0.0):.2f}"
                    for c in self.class_names
                ]
                face = f"{p.face + 1} of {p.faces}"
                table.add_row(p.path, face, ", ".join(map(str, p.box)), p.label, f"{p.confidence:.1%}", *cells)
        console.print(table)
        super().close()


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
    best_name, _, best = max(rows, key=lambda row: row[2]["accuracy"])
    classes = report["class_names"]
    console.print(_summary_table(report, rows, best_name))
    console.print(_recall_table(classes, rows))
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
        console.print(f"Weights: {report['weights_source']}.")
    for note in report.get("notes", []):
        console.print(f"[yellow]note:[/] {note}")


def _summary_table(report: dict, rows: list, best_name: str) -> Table:
    summary = Table(title=f"{report['folder']}: {report['images']:,} labelled images")
    for column in ("model", "kind", "accuracy", "macro F1", "conf. when right", "conf. when wrong", "ECE"):
        summary.add_column(column, justify="left" if column in ("model", "kind") else "right")
    for name, kind, metrics in rows:
        summary.add_row(
            name,
            kind,
            _pct(metrics["accuracy"]),
            f"{metrics['macro_f1']:.3f}",
            _pct(metrics["mean_confidence_correct"]),
            _pct(metrics["mean_confidence_incorrect"]),
            f"{metrics['expected_calibration_error']:.3f}",
            style="bold green" if name == best_name else None,
        )
    return summary


def _recall_table(classes: list[str], rows: list) -> Table:
    recall = Table(title="Recall per class")
    recall.add_column("class")
    recall.add_column("support", justify="right")
    for name, _, _ in rows:
        recall.add_column(name, justify="right")
    for c in classes:
        support = rows[0][2]["per_class"][c]["support"]
        recall.add_row(
            c, str(support), *[_pct(metrics["per_class"][c]["recall"]) if support else "-" for _, _, metrics in rows]
        )
    return recall


def _per_class_table(classes: list[str], name: str, metrics: dict) -> Table:
    per_class = Table(title=f"Per-class results of {name}")
    for column in ("class", "precision", "recall", "F1", "support"):
        per_class.add_column(column, justify="left" if column == "class" else "right")
    for c in classes:
        scores = metrics["per_class"][c]
        per_class.add_row(
            c, f"{scores['precision']:.3f}", f"{scores['recall']:.3f}", f"{scores['f1']:.3f}", str(scores["support"])
        )
    return per_class


def _confusion_table(classes: list[str], name: str, metrics: dict) -> Table:
    matrix = Table(title=f"Confusion matrix of {name} (rows: true, columns: predicted)")
    matrix.add_column("true \\ predicted")
    for c in classes:
        matrix.add_column(c[:8], justify="right")
    for i, (c, row) in enumerate(zip(classes, metrics["confusion_matrix"])):
        matrix.add_row(c, *[f"[bold]{v}[/]" if j == i else str(v) for j, v in enumerate(row)])
    return matrix


def _errors_fixed_table(report: dict) -> Table:
    names = [m["name"] for m in report["models"]]
    fixed = Table()
    fixed.add_column("errors of")
    for name in names:
        fixed.add_column(name, justify="right")
    for name, row in zip(names, report["errors_fixed_by"]):
        fixed.add_row(name, *["-" if other == name else _pct(share) for other, share in zip(names, row)])
    return fixed
