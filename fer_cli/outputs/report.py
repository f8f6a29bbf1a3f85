"""Report folders: the figures of a run beside its tables, in one ``index.html``.

``fer ensemble LABELLED --report DIR`` writes ``write_ensemble_report``'s folder: a confusion
matrix per model and vote, recall per class, reliability diagrams, accuracy against the share of
images kept above a confidence threshold, the best model's most confident mistakes, the report
as ``report.json`` (what ``--format json`` prints) and ``index.html``. ``fer predict ... --report
DIR`` writes ``PredictionReport``'s: the labels and confidences given, and faces per label.

Every figure is drawn from the report's own numbers (the same dicts the tables print), and the
page links its pictures relatively and loads nothing from the internet: the folder can be moved,
zipped or opened offline in any browser.
"""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from ..files import remove_orphans, temporary_sibling, writable_folder
from ..inputs.images import read_image
from . import figures
from .results import Prediction

THUMBNAIL = 96  # pixels, a thumbnail's side


# Every file a report writes under its own name (besides confusion-NN-NAME.png).
REPORT_FILES = ("index.html", "report.json", "labels.png", "confidence.png", "faces.png", "recall.png",
                "reliability.png", "coverage.png", "mistakes.png", "timelines.png")  # fmt: skip


def prepare_folder(folder: str | os.PathLike) -> Path:
    """The report folder, made and checked writable before any work (``OSError`` says why it cannot be); a folder
    in it under the name of a file the report writes is refused now, not after the run."""
    folder = writable_folder(folder)
    for name in REPORT_FILES:
        if (folder / name).exists() and not (folder / name).is_file():
            raise IsADirectoryError(21, f"{name} in it is a folder, where the report writes a file", str(folder))
    return folder


def write_text(path: Path, text: str) -> None:
    """A text file written whole (temporary sibling, then renamed over ``path``)."""
    remove_orphans(path)
    temporary = temporary_sibling(path)
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


# --- fer ensemble on labelled images ---------------------------------------------------------------


def write_ensemble_report(
    folder: str | os.PathLike, report: dict, mistakes: list[dict], mistakes_of: str
) -> list[Path]:
    """Figures, ``report.json`` and ``index.html`` for an ensemble report; returns the files written.

    ``mistakes`` are ``mistakes_of``'s most confident wrong answers (``ensemble.most_confident_mistakes``).
    """
    folder = prepare_folder(folder)
    classes = report["class_names"]
    entries = [(m["name"], "model", m) for m in report["models"]] + [
        (e["name"], "vote", e) for e in report["ensembles"]
    ]
    written, sections = [], []

    confusions = []
    for k, (name, kind, entry) in enumerate(entries, start=1):
        matrix = entry["metrics"]["confusion_matrix"]
        accuracy = entry["metrics"]["accuracy"]
        figure = figures.confusion_heatmap(matrix, classes, f"{name} ({kind}): accuracy {accuracy:.1%}")
        path = figures.save_png(figure, folder / f"confusion-{k:02d}-{_slug(name)}.png", {"confusion_matrix": matrix})
        written.append(path)
        confusions.append((path.name, f"{name} ({kind})"))

    supports = [entries[0][2]["metrics"]["per_class"][c]["support"] for c in classes]
    recalls = [(name, [entry["metrics"]["per_class"][c]["recall"] for c in classes]) for name, _, entry in entries]
    models = len(report["models"])
    written.append(
        figures.save_png(
            figures.recall_by_class(recalls, classes, supports, models),
            folder / "recall.png",
            {"recall": {name: values for name, values in recalls}},
        )
    )
    diagrams = [(m["name"], m["reliability"], m["metrics"]["expected_calibration_error"]) for m in report["models"]]
    written.append(
        figures.save_png(
            figures.reliability_diagrams(diagrams),
            folder / "reliability.png",
            {name: {"bins": bins, "ece": ece} for name, bins, ece in diagrams},
        )
    )
    curves = [(name, entry["coverage"]) for name, _, entry in entries]
    written.append(figures.save_png(figures.coverage_curves(curves, models), folder / "coverage.png", dict(curves)))
    per_class = max((sum(1 for m in mistakes if m["true"] == c) for c in range(len(classes))), default=0)
    rows = []
    for c, name in enumerate(classes):
        cells = [
            (_thumbnail(m["path"], m["box"]), f"→ {classes[m['predicted']]} {m['confidence']:.0%}")
            for m in mistakes
            if m["true"] == c
        ]
        rows.append((f"{name}", cells))
    title = (
        f"Most confident mistakes of {mistakes_of}: true class on the left, predicted label and confidence under each"
    )
    if not mistakes:
        title = f"{mistakes_of} got every image right"
    written.append(
        figures.save_png(
            figures.thumbnail_grid(rows, title, max(per_class, 6)),  # 6 columns at least: room for the title
            folder / "mistakes.png",
            [{**m, "true": classes[m["true"]], "predicted": classes[m["predicted"]]} for m in mistakes],
        )
    )

    write_text(folder / "report.json", json.dumps(report, indent=2) + "\n")
    written.append(folder / "report.json")
    sections = _ensemble_page(report, entries, confusions, mistakes, mistakes_of)
    write_text(folder / "index.html", _page(f"fer ensemble: {report['folder']}", sections))
    written.append(folder / "index.html")
    return written


def _ensemble_page(report, entries, confusions, mistakes, mistakes_of) -> list[str]:
    classes = report["class_names"]
    best_name, _, best = max(entries, key=lambda e: e[2]["metrics"]["accuracy"])
    summary_rows = [
        [
            name,
            kind,
            _pct(entry["metrics"]["accuracy"]),
            f"{entry['metrics']['macro_f1']:.3f}",
            _pct(entry["metrics"]["mean_confidence_correct"]),
            _pct(entry["metrics"]["mean_confidence_incorrect"]),
            f"{entry['metrics']['expected_calibration_error']:.3f}",
        ]
        for name, kind, entry in entries
    ]
    sections = [
        f"<h1>{_e(report['folder'])}: {report['images']:,} labelled images</h1>",
        _table(
            ["model", "kind", "accuracy", "macro F1", "conf. when right", "conf. when wrong", "ECE"],
            summary_rows,
            highlight=[row[0] == best_name for row in summary_rows],
        ),
        "<p class=note>conf. when right/wrong: mean confidence of the correct/wrong answers (a majority vote's is "
        "the share of models agreeing). ECE: expected calibration error, the gap between confidence and accuracy "
        "averaged over confidence bins (0 is best).</p>",
    ]
    notes = []
    if report.get("tta", "none") != "none":
        notes.append(f"Test-time augmentation: {report['tta']}.")
    if report.get("weights_source"):
        notes.append(f"Weights: {report['weights_source']}.")
    notes += [f"note: {note}" for note in report.get("notes", [])]
    sections += [f"<p class=note>{_e(note)}</p>" for note in notes]

    sections.append("<h2>Recall per class</h2>")
    sections.append(_figure("recall.png", "Recall per class of every model (plain) and vote (hatched)."))
    supports = [best["metrics"]["per_class"][c]["support"] for c in classes]
    sections.append(
        _table(
            ["model", *[f"{c} ({s:,})" for c, s in zip(classes, supports)]],
            [
                [name, *[_pct(entry["metrics"]["per_class"][c]["recall"]) for c in classes]]
                for name, _, entry in entries
            ],
        )
    )
    sections.append("<h2>Confusion matrices</h2>")
    sections.append(
        "<p>Rows: the true class; columns: the label given. Colour and percentage are shares of the row "
        "(the diagonal is the recall), the count is under them.</p>"
    )
    sections.append("<div class=grid>" + "".join(_figure(name, caption) for name, caption in confusions) + "</div>")
    matrix = best["metrics"]["confusion_matrix"]
    sections.append(f"<p>The confusion matrix of {_e(best_name)}, the most accurate, as numbers:</p>")
    sections.append(_table(["true \\ predicted", *classes], [[c, *row] for c, row in zip(classes, matrix)]))
    per_class = best["metrics"]["per_class"]
    sections.append(f"<p>Per-class results of {_e(best_name)}:</p>")
    sections.append(
        _table(
            ["class", "precision", "recall", "F1", "support"],
            [
                [
                    c,
                    f"{per_class[c]['precision']:.3f}",
                    f"{per_class[c]['recall']:.3f}",
                    f"{per_class[c]['f1']:.3f}",
                    f"{per_class[c]['support']:,}",
                ]
                for c in classes
            ],
        )  # fmt: skip
    )
    sections.append("<h2>Calibration</h2>")
    sections.append(
        _figure(
            "reliability.png",
            "Reliability: the answers binned by confidence; a bar on the diagonal is a bin whose accuracy equals "
            "its confidence. Orange above a bar: more confident than right (overconfident); below: underconfident.",
        )
    )
    sections.append("<h2>Leaving out the least confident images</h2>")
    sections.append(
        _figure(
            "coverage.png",
            "Accuracy on the images kept when only the most confident answers are kept: reading right to left, "
            "what a confidence threshold gains in accuracy and costs in images.",
        )
    )
    first = entries[0]
    points = [p for p in first[2]["coverage"] if round(p["kept"] * 20) in (20, 15, 10, 5)]
    sections.append(
        _table(
            [f"{first[0]}: images kept", "confidence at least", "accuracy on them"],
            [[f"{p['kept']:.0%} ({p['images']:,})", f"{p['threshold']:.3f}", _pct(p["accuracy"])] for p in points],
        )
    )
    sections.append(f"<h2>Most confident mistakes of {_e(mistakes_of)}</h2>")
    sections.append(
        _figure(
            "mistakes.png",
            f"{len(mistakes):,} wrong answers {mistakes_of} was surest of, per true class (left), each "
            "with the label it gave and its confidence. Some are mislabelled images rather than model errors.",
        )
    )
    if mistakes:
        sections.append(
            "<details><summary>their files</summary>"
            + _table(
                ["image", "true", "predicted", "confidence"],
                [[m["path"], classes[m["true"]], classes[m["predicted"]], _pct(m["confidence"])] for m in mistakes],
            )
            + "</details>"
        )
    if len(report["models"]) > 1:
        names = [m["name"] for m in report["models"]]
        sections.append("<h2>Diversity</h2><p>Share of the row model's errors that the column model gets right:</p>")
        sections.append(
            _table(
                ["errors of", *names],
                [
                    [name, *["-" if other == name else _pct(share) for other, share in zip(names, row)]]
                    for name, row in zip(names, report["errors_fixed_by"])
                ],
            )
        )
        sections.append(
            f"<p>At least one model right on {_pct(report['oracle_accuracy'])} of images; all models wrong on "
            f"{_pct(report['all_wrong_rate'])}.</p>"
        )
    sections.append('<p class=note>The same report as JSON: <a href="report.json">report.json</a>.</p>')
    return sections


# --- fer predict on any images ---------------------------------------------------------------------


class PredictionReport:
    """Collects predictions as they stream (memory: the counts, a float per face and the first
    ``per_label`` faces of each label) and writes the report folder at the end."""

    def __init__(self, folder: str | os.PathLike, class_names: list[str], model: str, per_label: int = 12):
        self.folder = prepare_folder(folder)
        self.class_names = class_names
        self.model = model
        self.per_label = per_label
        self.counts = dict.fromkeys(class_names, 0)
        self.confidences: dict[str, list[float]] = {name: [] for name in class_names}
        self.examples: dict[str, list[Prediction]] = {name: [] for name in class_names}
        self.inputs = self.without_face = self.unreadable = 0
        from .video_report import VideoTimelines

        self.timelines = VideoTimelines(class_names)  # videos: each track over time; a video is one input

    def add(self, predictions: list[Prediction]) -> None:
        for p in predictions:
            if p.frame is not None:
                self.inputs += self.timelines.add(p)
            elif p.face in (None, 0):  # one count per input, on its first row
                self.inputs += 1
                self.unreadable += p.error is not None
                self.without_face += p.error is None and p.faces == 0
            if p.label is None:
                continue
            self.counts[p.label] += 1
            self.confidences[p.label].append(p.confidence)
            if len(self.examples[p.label]) < self.per_label:
                self.examples[p.label].append(p)

    def summary(self) -> dict:
        every = np.array([c for values in self.confidences.values() for c in values])
        edges = np.linspace(0.0, 1.0, 21)
        return {
            "model": self.model,
            "inputs": self.inputs,
            "faces": int(sum(self.counts.values())),
            "inputs_without_face": self.without_face,
            "unreadable_inputs": self.unreadable,
            "label_counts": self.counts,
            "confidence": {
                "mean": float(every.mean()) if len(every) else None,
                "median": float(np.median(every)) if len(every) else None,
                "bin_edges": edges.round(2).tolist(),
                "counts": np.histogram(every, edges)[0].tolist(),
            },
            "examples": {
                label: [
                    {"path": p.path, "face": p.face, "box": list(p.box or ()), "confidence": p.confidence}
                    | ({} if p.frame is None else {"frame": p.frame, "time": p.time})
                    for p in found
                ]
                for label, found in self.examples.items()
            },  # fmt: skip
            **({"video_tracks": self.timelines.summary()} if self.timelines else {}),
        }

    def write(self) -> list[Path]:
        summary = self.summary()
        names, folder = self.class_names, self.folder
        counts = [self.counts[name] for name in names]
        title = f"Labels given by {self.model} to {summary['faces']:,} faces in {summary['inputs']:,} inputs"
        written = [
            figures.save_png(figures.label_counts(names, counts, title), folder / "labels.png", self.counts),
            figures.save_png(
                figures.confidence_histograms(names, [self.confidences[n] for n in names]),
                folder / "confidence.png",
                summary["confidence"],
            ),
        ]
        from .video_report import example_frames

        frames = example_frames([p for found in self.examples.values() for p in found])
        rows = [
            (name, [(_thumbnail(p.path, p.box, frames.get((p.path, p.frame))), _caption(p)) for p in found])
            for name, found in self.examples.items()
        ]
        sheet = figures.thumbnail_grid(
            rows, f"The first {self.per_label} faces given each label (confidence, file)", self.per_label
        )
        written.append(figures.save_png(sheet, folder / "faces.png", summary["examples"]))
        if self.timelines:
            written.append(figures.save_png(self.timelines.figure(), folder / "timelines.png", summary["video_tracks"]))
        write_text(folder / "report.json", json.dumps(summary, indent=2) + "\n")
        written.append(folder / "report.json")
        total = max(summary["faces"], 1)
        sections = [
            f"<h1>{_e(title)}</h1>",
            _table(
                ["label", "faces", "share", "mean confidence"],
                [
                    [
                        n,
                        f"{self.counts[n]:,}",
                        _pct(self.counts[n] / total),
                        _pct(float(np.mean(self.confidences[n]))) if self.confidences[n] else "-",
                    ]
                    for n in names
                ],
            ),  # fmt: skip
            f"<p class=note>{summary['inputs_without_face']:,} input(s) without a face, "
            f"{summary['unreadable_inputs']:,} unreadable.</p>",
            _figure("labels.png", "Faces per predicted label."),
            _figure("confidence.png", "Confidence of the predictions, stacked by predicted label."),
            _figure("faces.png", f"Contact sheet: the first {self.per_label} faces (in input order) of each label."),
            *(
                [_figure("timelines.png", "Each face track of the videos: its probabilities over time.")]
                if self.timelines
                else []
            ),
            '<p class=note>The numbers as JSON: <a href="report.json">report.json</a>.</p>',
        ]
        write_text(folder / "index.html", _page(title, sections))
        written.append(folder / "index.html")
        return written


# --- pieces ----------------------------------------------------------------------------------------


def _thumbnail(path: str, box, image: Image.Image | None = None) -> np.ndarray:
    """The face at ``box`` of the image at ``path`` (or of ``image``: a video's frame), THUMBNAIL pixels square; grey if
    it cannot be read."""
    try:
        image = image or read_image(path, 0)
    except (OSError, ValueError):
        return np.full((THUMBNAIL, THUMBNAIL), 128, dtype=np.uint8)
    if box:
        x, y, w, h = (int(v) for v in box)
        image = image.crop((x, y, x + w, y + h))
    image.thumbnail((THUMBNAIL, THUMBNAIL), Image.Resampling.LANCZOS)
    if image.size != (THUMBNAIL, THUMBNAIL):  # small images are enlarged, to be seen
        scale = THUMBNAIL / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    return np.asarray(image)


def _caption(p: Prediction) -> str:
    """A thumbnail's caption: the confidence and the file (and the time, for a video's frame)."""
    at = "" if p.time is None else f" {p.time:.1f}s"
    return f"{p.confidence:.0%} {Path(p.path).name[:14]}{at}"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.").lower()[:60] or "model"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _e(text) -> str:
    return html.escape(str(text))


def _table(header: list, rows: list[list], highlight: list[bool] | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        mark = " class=best" if highlight and highlight[i] else ""
        body.append(f"<tr{mark}>" + "".join(f"<td>{_e(cell)}</td>" for cell in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(source: str, caption: str) -> str:
    link = html.escape(source, quote=True)
    return f'<figure><a href="{link}"><img src="{link}" alt="{_e(caption)}"></a><figcaption>{_e(caption)}</figcaption></figure>'


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.best td { font-weight: bold; background: #eef7ee; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption, .note { color: #555; font-size: 0.9em; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 0.5em; }
"""


def _page(title: str, sections: list[str]) -> str:
    body = "\n".join(sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{_e(title)}</title>\n'
        f"<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )
