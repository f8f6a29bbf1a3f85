"""Training speed: how fast batches are augmented, and images/s and epoch time of `fer train`'s loop.

    python benchmarks/training.py                      # this machine's default device, fp32 and bf16 side by side
    python benchmarks/training.py --precision fp32     # one precision only
    python benchmarks/training.py --device cuda --arch vgg:width=64 --arch resnet18
    PYTHONPATH=. python benchmarks/training.py --full-epoch   # time whole epochs, not a sample of steps

1. Augmentation alone, images/s: torchvision v2 transforms one image at a time (how `fer train`
   augmented before, in DataLoader workers) against ``BatchAugment`` on whole batches on the device.
2. Per architecture and precision (``fer train --precision``: float32, bfloat16 autocast; float16 AMP on CUDA),
   the training loop itself (``train.train_one_epoch`` over ``InMemoryBatches``, channels_last on CUDA):
   images/s over ``--steps`` batches after a warm-up, the epoch time that gives for the training set, and
   the time to validate it; ``--full-epoch`` times one whole epoch instead. The precisions of one
   architecture run interleaved (fp32, bf16, fp32, bf16: the best of two each), so a machine that gets
   busier meanwhile slows both alike.

Uses FER2013 from ``--data`` (default ../shared/data/fer2013: train/ and val/ class folders) when
present, otherwise random 48x48 images of the same count.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from torchvision.transforms import v2

from fer_cli.device import cpu_has_bf16_units, grad_scaler, prepare_model, resolve_precision, select_device
from fer_cli.engine.train.epoch import predict_tensors, train_one_epoch
from fer_cli.inputs.augment import Augmentation, BatchAugment
from fer_cli.inputs.batches import InMemoryBatches, shuffled_order
from fer_cli.inputs.data import LabelledTensors, decode_labelled_files, find_labelled_images
from fer_cli.models.architectures import create_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fer2013"
PREPROCESS = {"size": 48, "channels": 1, "mean": [0.508], "std": [0.255]}


def load(root: Path, split: str, count: int) -> LabelledTensors:
    folder = root / split
    if folder.is_dir():
        return decode_labelled_files(find_labelled_images(folder), PREPROCESS, workers=min(8, os.cpu_count() or 1))
    print(f"{folder} not found: random images instead")
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 1, 48, 48), dtype=torch.uint8, generator=generator)
    return LabelledTensors(images, torch.randint(0, 7, (count,), generator=generator), list("abcdefg"), "random")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_image_pipeline() -> v2.Transform:
    """The per-image transforms `fer train` used before batches were augmented on the device."""
    return v2.Compose(
        [
            v2.RandomResizedCrop((48, 48), scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True),
            v2.RandomAffine(degrees=10, translate=(0.1, 0.1)),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(PREPROCESS["mean"], PREPROCESS["std"]),
            v2.RandomErasing(p=0.5, scale=(0.02, 0.15)),
        ]
    )


def augmentation_speed(images: torch.Tensor, device: torch.device, batch_size: int) -> None:
    pipeline = per_image_pipeline()
    sample = images[:2000]
    started = time.perf_counter()
    for image in sample:
        pipeline(image)
    per_image = len(sample) / (time.perf_counter() - started)

    augment = BatchAugment(PREPROCESS, Augmentation(), device)
    on_device = images[: batch_size * 40].to(device)
    generator = torch.Generator().manual_seed(0)
    augment(on_device[:batch_size], generator)  # warm-up
    synchronize(device)
    started = time.perf_counter()
    for start in range(0, len(on_device), batch_size):
        augment(on_device[start : start + batch_size], generator)
    synchronize(device)
    batched = len(on_device) / (time.perf_counter() - started)
    print(f"augmentation, per image (torchvision v2, 1 process): {per_image:,.0f} images/s")
    print(f"augmentation, batches of {batch_size} on {device}: {batched:,.0f} images/s ({batched / per_image:.0f}x)")


def training_speed(
    arch: str, options: dict, train, val, device, batch_size: int, steps: int, full_epoch: bool, precision: str
) -> tuple[float, float, float, int]:
    """Images/s, the epoch and validation seconds, and the parameter count of one architecture in ``precision``."""
    torch.manual_seed(0)
    model = prepare_model(create_model(arch, len(train.class_names), 1, **options), device)
    parameters = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    scaler = grad_scaler(device, precision)
    augment = BatchAugment(PREPROCESS, Augmentation(), device)
    batches = InMemoryBatches(train, device, augment, batch_size)
    order = shuffled_order(batches.labels, torch.Generator().manual_seed(0))

    def run(count: int) -> float:
        epoch = batches.epoch(order[: count * batch_size], torch.Generator().manual_seed(1), drop_last=True)
        synchronize(device)
        started = time.perf_counter()
        train_one_epoch(model, epoch, criterion, optimizer, None, scaler, device, precision=precision)
        synchronize(device)
        return time.perf_counter() - started

    run(min(5, steps))  # warm-up: kernels chosen, memory allocated
    count = len(train) // batch_size if full_epoch else steps
    seconds = run(count)
    rate = count * batch_size / seconds
    epoch_seconds = seconds if full_epoch else len(train) / rate

    val_batches = InMemoryBatches(val, device, augment, batch_size=256)
    synchronize(device)
    started = time.perf_counter()
    predict_tensors(model, val_batches.epoch(torch.arange(len(val))), device, precision=precision)
    synchronize(device)
    val_seconds = time.perf_counter() - started
    return rate, epoch_seconds, val_seconds, parameters


def compare_precisions(arch, options, train, val, device, batch_size, steps, full_epoch, precisions) -> None:
    """One row per precision of one architecture, measured interleaved, and the speed-up over the first."""
    best: dict[str, tuple] = {}
    for _ in range(1 if full_epoch else 2):
        for precision in precisions:
            result = training_speed(arch, options, train, val, device, batch_size, steps, full_epoch, precision)
            if precision not in best or result[0] > best[precision][0]:
                best[precision] = result
    name = arch + "".join(f" {k}={v}" for k, v in options.items())
    how = "measured" if full_epoch else f"from {steps} batches"
    baseline = best[precisions[0]][0]
    for precision, (rate, epoch_seconds, val_seconds, parameters) in best.items():
        print(
            f"{name:<24} {precision:<5} {parameters / 1e6:5.2f} M params  {rate:9,.0f} images/s "
            f"({rate / baseline:4.2f}x)  epoch {epoch_seconds:6.1f} s ({how}) + validation {val_seconds:4.1f} s"
        )


def parse_arch(spec: str) -> tuple[str, dict]:
    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        options[key] = float(value) if "." in value else int(value)
    return name, options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data", type=Path, default=SHARED, help="a folder with train/ and val/ class folders")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[64], help="one or more batch sizes")
    parser.add_argument("--steps", type=int, default=40, help="batches timed per architecture")
    parser.add_argument("--full-epoch", action="store_true", help="time one whole epoch per architecture")
    parser.add_argument(
        "--precision", nargs="+", default=["fp32", "bf16"], help="fer train's --precision values to compare"
    )
    parser.add_argument(
        "--arch",
        action="append",
        help="NAME[:option=value,...]; repeatable (default: the shipped architectures)",
    )
    args = parser.parse_args()
    device = select_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    units = "with" if cpu_has_bf16_units() else "without"
    print(f"device {device} ({name}), torch {torch.__version__}; CPU {units} bfloat16 units (AMX, AVX512-BF16)")
    precisions = list(dict.fromkeys(resolve_precision(spec, device) for spec in args.precision))
    train, val = load(args.data, "train", 28_709), load(args.data, "val", 3_589)
    archs = args.arch or ["vgg:width=32", "vgg:width=24", "resnet18:width=16", "mini_xception:width=32"]
    for batch_size in args.batch_size:
        print(f"batch {batch_size}")
        augmentation_speed(train.images, device, batch_size)
        for spec in archs:
            arch, options = parse_arch(spec)
            compare_precisions(arch, options, train, val, device, batch_size, args.steps, args.full_epoch, precisions)


if __name__ == "__main__":
    main()
