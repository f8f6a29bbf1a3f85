"""Architectures for small face crops, built from scratch, behind one registry.

Every builder takes ``num_classes`` and ``in_channels`` plus its own keyword options, and the
(name, options) pair is what a checkpoint stores to rebuild the network. The registry (names,
options, descriptions) is read without torch, for `fer models`; building a network imports it.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import ModelError

if TYPE_CHECKING:
    from torch import nn
    from torchvision.models import resnet

ModelBuilder = Callable[..., "nn.Module"]
_REGISTRY: dict[str, ModelBuilder] = {}

# The sides of the square inputs a network may declare (a checkpoint's preprocess.size, training's --size). Faces
# are detected at any size but carry about 48 px of expression (FER2013's crops are 48 px); a network's cost grows
# with the square of its side (a vgg at 4096 px took 49 s and 5 GB for one face, each upload to `fer serve` the
# same), 256 px already costs 28 times 48's, and vgg pools its input down 16-fold (16 px leaves it 1 px).
MIN_INPUT_SIDE, MAX_INPUT_SIDE = 16, 256

# The ranges of the builders' options: a width is a memory lever (10^6 would allocate terabytes before any weight is
# read), a dropout of 1 or more is no network. A width of 512 is eight times the shipped vgg's.
OPTION_RANGES: dict[str, tuple[type, float, float]] = {"width": (int, 2, 512), "dropout": (float, 0.0, 0.9)}


def register_model(builder: ModelBuilder) -> ModelBuilder:
    """Make ``builder`` available under its function name; a second builder with that name is a bug."""
    name = builder.__name__
    if name in _REGISTRY:
        raise ValueError(f"architecture '{name}' is registered twice")
    _REGISTRY[name] = builder
    return builder


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def describe_model(name: str) -> str:
    """The builder's one-line summary, for `fer models`."""
    return (inspect.getdoc(_builder(name)) or "").splitlines()[0]


def model_options(name: str) -> dict[str, object]:
    """The architecture's tunable options and their defaults."""
    parameters = inspect.signature(_builder(name)).parameters
    return {
        key: p.default
        for key, p in parameters.items()
        if key not in ("num_classes", "in_channels") and p.default is not inspect.Parameter.empty
    }


def check_model_options(name: str, options: dict) -> None:
    """Raise ModelError, listing the valid choices, for an unknown architecture or option, or a value out of its
    range (``OPTION_RANGES``): nothing is built with it."""
    valid = model_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ModelError(
            f"architecture '{name}' has no option {', '.join(unknown)}; "
            f"valid options: {', '.join(f'{k}={v}' for k, v in valid.items()) or 'none'}"
        )
    for key, value in options.items():
        if key in OPTION_RANGES and not _in_range(value, *OPTION_RANGES[key]):
            kind, low, high = OPTION_RANGES[key]
            whole = "a whole number" if kind is int else "a number"
            raise ModelError(f"architecture '{name}': {key} {value!r} is out of range ({whole} from {low} to {high})")


def _in_range(value, kind: type, low: float, high: float) -> bool:
    if isinstance(value, bool) or not isinstance(value, int if kind is int else int | float):
        return False
    return low <= value <= high


def check_input_size(name: str, options: dict, size: int, channels: int) -> None:
    """Raise ModelError when architecture ``name`` cannot take ``size`` x ``size`` inputs: a side outside
    ``MIN_INPUT_SIDE``..``MAX_INPUT_SIDE``, or one the network cannot reduce. One tiny forward pass, before any data
    is decoded."""
    import torch

    if not MIN_INPUT_SIDE <= size <= MAX_INPUT_SIDE:
        raise ModelError(f"inputs of {size} px are out of range: {MIN_INPUT_SIDE} to {MAX_INPUT_SIDE} px (--size)")
    model = create_model(name, 2, channels, **options).eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, channels, size, size))
    except RuntimeError:
        smallest = next((side for side in range(size + 1, MAX_INPUT_SIDE + 1) if _takes(model, side, channels)), None)
        at_least = f"; it needs at least {smallest} px" if smallest else ""
        raise ModelError(f"architecture '{name}' cannot take {size}x{size} inputs{at_least} (--size)") from None


def _takes(model: nn.Module, side: int, channels: int) -> bool:
    import torch

    try:
        with torch.no_grad():
            model(torch.zeros(2, channels, side, side))
        return True
    except RuntimeError:
        return False


def create_model(name: str, num_classes: int, in_channels: int = 1, **options) -> nn.Module:
    """Build architecture ``name``; unknown names and options are errors that list the valid ones."""
    check_model_options(name, options)
    return _builder(name)(num_classes=num_classes, in_channels=in_channels, **options)


def _builder(name: str) -> ModelBuilder:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ModelError(f"unknown architecture '{name}'; valid ones: {', '.join(list_models())}.{hint}")
    return _REGISTRY[name]


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    from torch import nn

    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@register_model
def vgg(num_classes: int, in_channels: int = 1, width: int = 64, dropout: float = 0.4) -> nn.Module:
    """VGG-style net: 4 blocks of 2x(conv-BN-ReLU) + max-pool, widths w..8w, as in Khaireddin & Chen 2021."""
    from torch import nn

    layers: list[nn.Module] = []
    cin = in_channels
    for multiple in (1, 2, 4, 8):
        cout = width * multiple
        layers += _conv_bn_relu(cin, cout) + _conv_bn_relu(cout, cout) + [nn.MaxPool2d(2)]
        cin = cout
    return nn.Sequential(
        *layers,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(cin, cin),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(cin, num_classes),
    )


@register_model
def resnet18(num_classes: int, in_channels: int = 1, width: int = 64) -> nn.Module:
    """torchvision ResNet-18 with a small-input stem (3x3 conv, stride 1, no max-pool) for 48 px faces."""
    from torch import nn
    from torchvision.models import resnet

    model = resnet.ResNet(resnet.BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    if width != 64:  # torchvision fixes the widths; rebuild with scaled ones
        model = _scaled_resnet(resnet.BasicBlock, [2, 2, 2, 2], num_classes, width)
    model.conv1 = nn.Conv2d(in_channels, model.bn1.num_features, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _scaled_resnet(block, layers, num_classes: int, width: int) -> resnet.ResNet:
    from torch import nn
    from torchvision.models import resnet

    model = resnet.ResNet(block, layers, num_classes=num_classes)
    model.inplanes = width
    model.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(width)
    model.layer1 = model._make_layer(block, width, layers[0])
    model.layer2 = model._make_layer(block, width * 2, layers[1], stride=2)
    model.layer3 = model._make_layer(block, width * 4, layers[2], stride=2)
    model.layer4 = model._make_layer(block, width * 8, layers[3], stride=2)
    model.fc = nn.Linear(width * 8 * block.expansion, num_classes)
    return model


@register_model
def mini_xception(num_classes: int, in_channels: int = 1, width: int = 32, dropout: float = 0.2) -> nn.Module:
    """Smallest net (0.2M parameters): conv stem + 4 depthwise-separable residual blocks (mini-Xception family)."""
    from torch import nn

    from .layers import SeparableResidual

    stem = nn.Sequential(*_conv_bn_relu(in_channels, width // 2), *_conv_bn_relu(width // 2, width))
    widths = [width, width, width * 2, width * 4, width * 8]
    blocks = [SeparableResidual(cin, cout) for cin, cout in zip(widths, widths[1:])]
    return nn.Sequential(
        stem,
        *blocks,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(width * 8, num_classes),
    )
