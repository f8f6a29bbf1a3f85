"""What a training run is told: ``TrainConfig``, its option checks, and the defaults a user leaves out (a fresh
run's, or a fine-tuning's with ``--init``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from ...inputs.augment import Augmentation
from ...models.architectures import check_input_size, check_model_options
from ..calibration import check_prior_correction

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "onecycle", "plateau", "none")
BALANCING = ("none", "sampler", "loss", "logit-adjusted")
# Starting from a trained model (--init), what a user does not say: fewer epochs, AdamW at half its usual rate
# (measured on FER+ votes from the shipped FER2013 models: see weights/README.md).
FINE_TUNING = {"epochs": 10, "optimizer": "adamw", "lr_factor": 0.5, "freeze_epochs": 1}
TARGETS = ("distribution", "majority")


@dataclass(frozen=True)
class TrainConfig:
    data: str  # labelled folder, a root with train/ and val/, or a FER2013 CSV
    out: str  # best checkpoint path; history and resume state are written beside it
    val: str | None = None  # labelled folder or CSV; default: DATA/val, the CSV's PublicTest rows, or 10% held out
    arch: str = "vgg"
    arch_options: dict = field(default_factory=dict)
    epochs: int | None = None  # default: 30, or FINE_TUNING's with init
    batch_size: int = 64
    optimizer: str | None = None  # sgd (Nesterov momentum 0.9) or adamw; default: sgd, or FINE_TUNING's with init
    lr: float | None = None  # default: 0.01 for sgd, 0.001 for adamw; half that with init
    weight_decay: float | None = None  # default: 5e-4 for sgd, 0.05 for adamw (decoupled)
    schedule: str = "onecycle"  # onecycle | cosine | plateau (on val accuracy) | none
    label_smoothing: float = 0.1
    mixup: float = 0.0  # MixUp's Beta(a, a) parameter; 0 = off (with cutmix too, each batch picks one)
    cutmix: float = 0.0  # CutMix's Beta(a, a) parameter; 0 = off
    augment: str = "default"  # 'default', 'none' or a comma list of flip,crop,shift,rotate,erase
    balance: str = "none"  # class imbalance: none | sampler (weighted sampling) | loss (weighted loss) |
    # logit-adjusted (the loss sees logits + log class prior: Menon et al. 2021)
    size: int = 48  # square input side in pixels
    channels: int = 1  # 1 = grayscale, 3 = RGB
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16 (device.resolve_precision: bf16 on CPUs with bfloat16 units)
    workers: int = 2  # processes decoding the images (once, before the first epoch)
    half: bool = False  # store the best checkpoint's weights as float16 (half the size)
    tensorboard: str | None = None  # folder to log epochs to for TensorBoard (needs the tensorboard package)
    resume: bool = False
    overwrite: bool = False  # replace an earlier run's files at ``out`` (else refused)
    init: str | None = None  # start from this model's weights (a shipped name or a .pt): its architecture and input
    freeze_epochs: int | None = None  # with init: only the classifier head trains for this many first epochs (default:
    # 1 when most of the head is new, else 0)
    teachers: tuple[str, ...] = ()  # distil from these models (shipped names or files): their softened probabilities
    distill_weight: float = 0.9  # the share of the loss that is the teachers' (the rest: the labels')
    distill_temperature: float = 4.0  # the softmax temperature of teachers and student in that share
    teacher_cache: str | None = None  # where the teachers' logits are cached; default: distill.default_cache_dir()
    votes: str | None = None  # a votes CSV: each image's label distribution (DATA holds the images; see inputs.votes)
    targets: str = "distribution"  # with votes: learn the vote shares, or the majority class (one-hot)
    label_weight: float = 0.0  # with votes: this share of each target is the image's own single label (FER2013's)
    allow_missing: bool = False  # with votes: train on the images found even when most are missing (else an error)
    prior_correction: str = "auto"  # tau of logits - tau * log(class prior): 'auto' (chosen on val), 'none', a number
    command: str = ""  # the command line, recorded for provenance
    given: tuple[str, ...] = ()  # the options the user wrote (the command line's parameter names), for --resume

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return {"sgd": 0.01, "adamw": 1e-3}[self.optimizer] * (FINE_TUNING["lr_factor"] if self.init else 1.0)

    def with_defaults(self, head_rows_new: float = 0.0) -> TrainConfig:
        """The settings a user left out filled in: a fresh run's, or with ``init`` a fine-tuning's (FINE_TUNING;
        ``head_rows_new``: the share of the classifier head that starts untrained)."""
        tuning = bool(self.init)
        freeze = self.freeze_epochs
        if freeze is None:
            freeze = FINE_TUNING["freeze_epochs"] if tuning and head_rows_new > 0.5 else 0
        return replace(
            self,
            epochs=self.epochs or (FINE_TUNING["epochs"] if tuning else 30),
            optimizer=self.optimizer or (FINE_TUNING["optimizer"] if tuning else "sgd"),
            freeze_epochs=freeze,
        )

    @property
    def decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return {"sgd": 5e-4, "adamw": 0.05}[self.optimizer or "sgd"]

    def validate(self) -> None:
        for value, valid, option in (
            (self.optimizer or "sgd", OPTIMIZERS, "--optimizer"),
            (self.schedule, SCHEDULES, "--schedule"),
            (self.balance, BALANCING, "--balance"),
            (self.targets, TARGETS, "--targets"),
        ):
            if value not in valid:
                raise ValueError(f"{option} must be one of {', '.join(valid)}, not '{value}'")
        if (self.epochs is not None and self.epochs < 1) or self.batch_size < 1:
            raise ValueError("--epochs and --batch-size must be at least 1")
        if self.channels not in (1, 3):
            raise ValueError("--channels must be 1 (grayscale) or 3 (RGB)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError("--label-smoothing must be in [0, 1)")
        if self.mixup < 0 or self.cutmix < 0:
            raise ValueError("--mixup and --cutmix must be 0 (off) or positive")
        check_prior_correction(self.prior_correction)
        if not 0.0 <= self.label_weight <= 1.0:
            raise ValueError("--label-weight must be in [0, 1]")
        if not self.votes and (self.label_weight or self.targets != "distribution"):
            raise ValueError("--label-weight and --targets need --votes (they say how to learn from votes)")
        if (self.freeze_epochs or 0) < 0 or (self.freeze_epochs and not self.init):
            raise ValueError("--freeze-epochs needs --init (the layers to freeze come from that model)")
        if self.teachers:
            if not 0.0 <= self.distill_weight <= 1.0:
                raise ValueError("--distill-weight must be in [0, 1]")
            if self.distill_temperature <= 0:
                raise ValueError("--distill-temperature must be positive")
            if self.mixup or self.cutmix:
                raise ValueError(
                    "--teacher does not combine with --mixup or --cutmix (the teachers saw unmixed images)"
                )
        Augmentation.parse(self.augment)
        check_model_options(self.arch, self.arch_options)  # fail before decoding any data
        check_input_size(self.arch, self.arch_options, self.size, self.channels)


def plain_config(config: TrainConfig) -> dict:
    return {
        k: v
        for k, v in asdict(config).items()
        if k not in ("resume", "overwrite", "command", "tensorboard", "teacher_cache", "given")
    }
