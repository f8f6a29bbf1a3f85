"""Exported models: a checkpoint written as ONNX (optionally int8), and run with onnxruntime.

    fer export vgg fast.onnx --int8 --calibration ../shared/data/fer2013/train

The ONNX graph takes the model's uint8 pixels (N, C, H, W) and does the scaling and normalisation
itself, so feeding it needs nothing but ``images.model_pixels``; everything else a ``Classifier``
carries (classes, preprocessing, temperature, metrics, provenance) is stored as JSON in the file's
metadata under ``fer_cli``. Running one imports onnxruntime and never torch: onnxruntime, and onnx and
onnxscript, which exporting needs, are dependencies of fer (the ``onnx`` extra of earlier versions is empty).
"""

from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, DeviceError, FerError
from ..files import file_sha256
from ..inputs.images import READ_ERRORS, iter_image_paths, model_pixels, read_image
from .classifier import Classifier, described_by, edited_by_hand, implausible

METADATA_KEY = "fer_cli"
FORMAT = "fer_cli.onnx"
# onnxruntime, onnx and onnxscript are fer's own dependencies: missing, the install is broken (the packages exist on PyPI;
# the 'fer-cli' distribution is installed from its folder, and its 'onnx' extra is empty now)
INSTALL_HINT = (
    "they come with fer: pip install onnxruntime onnx onnxscript, or reinstall fer (pip install . in its folder)"
)


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise FerError(
            f"exported (.onnx) models run with onnxruntime, which is not installed: {INSTALL_HINT}"
        ) from None
    return onnxruntime


class OnnxRunner:
    """Runs an exported model with onnxruntime: the CPU, or CUDA where onnxruntime-gpu provides it."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self.session = self._session(["CPUExecutionProvider"])

    def _session(self, providers: list[str]):
        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        try:
            return ort.InferenceSession(self.path, options, providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types for bad files
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointError(f"{self.path} is not a readable ONNX model: {reason}") from None

    def prepare(self, device: str = "auto") -> str:
        device = str(device).strip().lower()
        cuda_here = "CUDAExecutionProvider" in _onnxruntime().get_available_providers()
        if device.startswith("cuda") and not cuda_here:
            raise DeviceError(f"device '{device}' requested but this onnxruntime has no CUDA (onnxruntime-gpu does)")
        if device not in ("auto", "cpu") and not device.startswith("cuda"):
            raise DeviceError(f"exported models run on cpu or cuda, not '{device}'")
        if cuda_here and device != "cpu":
            index = int(device.partition(":")[2] or 0)
            self.session = self._session([("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"])
            return f"cuda:{index}"
        return "cpu"

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"pixels": np.ascontiguousarray(pixels, dtype=np.uint8)})[0].astype(np.float32)

    def metadata(self) -> dict:
        return parsed_metadata(self.path, self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY))


def parsed_metadata(path: str | os.PathLike, stored: str | bytes | None) -> dict:
    """An exported model's description from the JSON its metadata holds; whatever cannot be read or cannot be right
    (not JSON, nested past the parser's depth, no architecture or classes) is that model's ``CheckpointError``."""
    if not stored:
        raise CheckpointError(f"{path} is an ONNX model but not one exported by `fer export`")
    try:
        meta = json.loads(stored)
    except (ValueError, RecursionError) as error:  # json's and UTF-8's errors are ValueErrors
        raise CheckpointError(f"{path} is not a readable ONNX model: {str(error).splitlines()[0]}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("arch"), str):
        raise edited_by_hand(path, "its metadata names no architecture")
    problem = implausible(meta)
    if problem:
        raise edited_by_hand(path, problem)
    return meta


def read_metadata(path: str | os.PathLike) -> dict:
    """An exported model's description (``OnnxRunner.metadata``), read from the file itself: no onnxruntime
    (0.3 s to import) and no session (the whole graph loaded), for `fer models`.

    An ONNX file is a protobuf ``ModelProto``; its ``metadata_props`` (field 14) are (key, value) string
    pairs. The other fields are skipped over unread, the graph included.
    """
    stored = None
    try:
        with open(path, "rb") as stream:
            for number, value in _fields(stream, os.fstat(stream.fileno()).st_size, lazy={7}):
                if number == 14:
                    entry = dict(_fields_of(value))
                    if entry.get(1) == METADATA_KEY.encode():
                        stored = entry.get(2, b"")
                        break
    except ValueError as error:
        raise CheckpointError(f"{path} is not a readable ONNX model: {error}") from None
    except OSError as error:
        raise CheckpointError(f"{path} cannot be read: {error.strerror or error}") from None
    return parsed_metadata(path, stored)


def _varint(stream) -> int:
    value = shift = 0
    while True:
        byte = stream.read(1)
        if not byte:
            raise ValueError("the file ends inside a field")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("a malformed number")


def _fields(stream, end: int, lazy=frozenset()):
    """(field number, value) of the protobuf message in ``stream`` up to byte ``end``; length-delimited values
    are bytes, except the ``lazy`` fields' (skipped, given as None)."""
    while stream.tell() < end:
        key = _varint(stream)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            yield number, _varint(stream)
        elif wire_type == 2:
            length = _varint(stream)
            if stream.tell() + length > end:
                raise ValueError("a field runs past the end of the file")
            if number in lazy:
                stream.seek(length, os.SEEK_CUR)
                yield number, None
            else:
                yield number, stream.read(length)
        elif wire_type in (1, 5):
            stream.seek(8 if wire_type == 1 else 4, os.SEEK_CUR)
        else:
            raise ValueError(f"not a protobuf message (wire type {wire_type})")


def _fields_of(message: bytes):
    return _fields(io.BytesIO(message), len(message))


def load_exported(path: str | os.PathLike) -> Classifier:
    if not Path(path).is_file():
        raise CheckpointError(f"no such model file: {path}")
    runner = OnnxRunner(path)
    meta = runner.metadata()
    return described_by(path, meta, runner, arch=meta["arch"] + (" int8" if meta.get("int8") else ""))


# --- exporting (needs torch, onnx, onnxscript) ---------------------------------------------------


def export_checkpoint(
    checkpoint_path: str | os.PathLike,
    out: str | os.PathLike,
    int8: bool = False,
    calibration: str | None = None,
    calibration_size: int = 1000,
    seed: int = 0,
) -> dict:
    """Write ``checkpoint_path`` as ONNX at ``out``; with ``int8``, statically quantised (weights
    per channel) on up to ``calibration_size`` images drawn (seeded) from ``calibration``.

    The exported model carries the checkpoint's validation metrics (``metrics_source`` says so)
    until ``store_metrics`` gives it its own. Returns a summary: the file's size and, on the
    calibration images, how often the exported model's top class equals the checkpoint's and the
    largest probability difference.
    """

    from .checkpoint import read_checkpoint

    _onnx()
    if int8 and not calibration:
        raise FerError("--int8 needs --calibration DIR: images (e.g. the training folder) to set the int8 ranges")
    checkpoint = read_checkpoint(checkpoint_path)
    preprocess = checkpoint["preprocess"]
    samples = _calibration_pixels(calibration, preprocess, calibration_size, seed) if calibration else None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    network = write_exported(checkpoint, checkpoint_path, out, samples if int8 else None, calibration)
    summary = {"path": str(out), "bytes": out.stat().st_size, "int8": int8}
    if samples is not None:
        summary.update(_agreement(network, out, samples))
    return summary


def write_exported(
    checkpoint: dict,
    checkpoint_path: str | os.PathLike,
    out: Path,
    int8_samples: np.ndarray | None = None,
    calibration: str | None = None,
):
    """The network of ``checkpoint`` (read from ``checkpoint_path``) written as ONNX at ``out`` with its
    description in the metadata; int8 when ``int8_samples`` set its value ranges. Returns the torch network."""
    from .checkpoint import PixelsIn, build_model

    onnx = _onnx()
    network = PixelsIn(build_model(checkpoint), checkpoint["preprocess"]).eval()
    _write_onnx(network, checkpoint["preprocess"], out, int8_samples)
    model = onnx.load(str(out))
    meta = _metadata(checkpoint, checkpoint_path, int8_samples is not None, calibration, int8_samples)
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(meta)})
    onnx.save(model, str(out))
    return network


def _write_onnx(network, preprocess: dict, out: Path, int8_samples: np.ndarray | None) -> None:
    """Trace ``network`` (uint8 pixels in, logits out; any batch size) to ONNX at ``out``,
    quantised to int8 on ``int8_samples`` when given."""
    import torch

    float_path = out.with_name(out.stem + ".float32.tmp.onnx")
    side, channels = preprocess["size"], preprocess["channels"]
    example = torch.zeros((2, channels, side, side), dtype=torch.uint8)
    try:
        torch.onnx.export(
            network,
            (example,),
            str(float_path),
            input_names=["pixels"],
            output_names=["logits"],
            dynamic_shapes={"pixels": {0: torch.export.Dim("batch")}},
            dynamo=True,
            external_data=False,
            verbose=False,
            report=False,
        )
        if int8_samples is not None:
            _quantize(float_path, out, int8_samples)
        else:
            float_path.replace(out)
    finally:
        float_path.unlink(missing_ok=True)


def _metadata(checkpoint: dict, checkpoint_path, int8: bool, calibration: str | None, samples) -> dict:
    """What an exported model carries about itself: the checkpoint's description, where it came from."""
    return {
        "format": FORMAT,
        "arch": checkpoint["arch"],
        "model_config": checkpoint["model_config"],
        "class_names": checkpoint["class_names"],
        "preprocess": checkpoint["preprocess"],
        "temperature": float(checkpoint.get("temperature", 1.0)),
        "class_prior": checkpoint.get("class_prior"),
        "prior_correction": float(checkpoint.get("prior_correction", 0.0)),
        "metrics": checkpoint.get("metrics", {}),
        "metrics_source": "the checkpoint it was exported from",
        "provenance": {
            **checkpoint.get("provenance", {}),
            "exported_from": str(checkpoint_path),
            "exported_from_sha256": file_sha256(checkpoint_path),
        },
        "int8": int8,
        "int8_calibration": {"images": calibration, "count": 0 if samples is None else len(samples)} if int8 else None,
    }


def _agreement(network, out: Path, samples: np.ndarray) -> dict:
    """How closely the exported model at ``out`` follows ``network`` on ``samples``."""
    import torch

    with torch.inference_mode():
        reference = torch.softmax(network(torch.from_numpy(samples)), dim=1).numpy()
    exported = load_exported(out)
    exported.temperature, exported.prior_correction = 1.0, 0.0  # the network's own outputs
    probs = exported.probabilities(samples)
    return {
        "checked_on": len(samples),
        "same_top_class": float(np.mean(probs.argmax(1) == reference.argmax(1))),
        "max_probability_difference": float(np.abs(probs - reference).max()),
    }


def store_metrics(path: str | os.PathLike, metrics: dict, scored_on: str, labels: str | None = None) -> None:
    """Give an exported model its own validation metrics, measured on ``scored_on`` (a labelled
    folder; ``labels`` says where its labels came from when not its class folders), in place of its
    checkpoint's; the calibration report it carries is kept."""
    onnx = _onnx()
    model = onnx.load(str(path))
    meta = json.loads({prop.key: prop.value for prop in model.metadata_props}[METADATA_KEY])
    calibration = meta["metrics"].get("calibration")
    meta["metrics"] = {**metrics, **({"calibration": calibration} if calibration else {})}
    meta["metrics_source"] = f"this exported model, scored on {scored_on}" + (f", {labels}" if labels else "")
    meta["provenance"]["val_path"] = scored_on
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(meta)})
    onnx.save(model, str(path))


def _onnx():
    try:
        import onnx
    except ImportError:
        raise FerError(f"exporting needs onnx and onnxscript: {INSTALL_HINT}") from None
    return onnx


def _calibration_pixels(source: str, preprocess: dict, count: int, seed: int) -> np.ndarray:
    paths = [p for p in iter_image_paths([source]) if isinstance(p, str)]
    if not paths:
        raise FerError(f"--calibration {source}: no images found")
    random.Random(seed).shuffle(paths)
    pixels = []
    for path in paths:
        if len(pixels) == count:
            break
        try:
            pixels.append(model_pixels(read_image(path, preprocess["channels"]), preprocess))
        except READ_ERRORS:
            continue
    if not pixels:
        raise FerError(f"--calibration {source}: no readable images")
    return np.stack(pixels)


def _quantize(float_path: Path, out: Path, samples: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(np.array_split(samples, max(1, len(samples) // 100)))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"pixels": batch}

    prepared = out.with_name(out.stem + ".prepared.tmp.onnx")
    try:
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out),
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    finally:
        prepared.unlink(missing_ok=True)
