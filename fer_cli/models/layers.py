"""The torch building blocks of the architectures that torch itself does not have (see ``architectures``)."""

from __future__ import annotations

import torch
from torch import nn


class SeparableResidual(nn.Module):
    """Two depthwise-separable convs and a max-pool, with a strided 1x1 shortcut (Xception's block)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, groups=cout, bias=False),
            nn.Conv2d(cout, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=2, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))
