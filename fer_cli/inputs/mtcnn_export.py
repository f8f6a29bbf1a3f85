"""MTCNN's three networks in torch, built from ``mtcnn.pt``, and their export to the ONNX files the face
detector runs (``face_detector``, on onnxruntime, never importing torch):

    python -m fer_cli.inputs.mtcnn_export      # writes fer_cli/inputs/mtcnn_{pnet,rnet,onet}.onnx

The weights are the original authors' Caffe weights as converted to PyTorch by facenet-pytorch 2.6.0 (MIT
licence, see ``MTCNN-LICENSE.txt``), merged into one state dict (``pnet.*``, ``rnet.*``, ``onet.*``); the nets
below reproduce that layout. Each exported net ends with its face probability (the softmax's second column),
as the detector reads it. The tests hold the ONNX detector to these nets run by the torch pipeline it replaced
(tests/mtcnn_reference.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

WEIGHTS = Path(__file__).with_name("mtcnn.pt")
ONNX_FILES = {name: Path(__file__).with_name(f"mtcnn_{name}.onnx") for name in ("pnet", "rnet", "onet")}


class _ProposalNet(nn.Module):
    """12x12 receptive field, fully convolutional: a face score and a box offset per 2 pixels."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)  # face / not face
        self.conv4_2 = nn.Conv2d(32, 4, 1)  # box offsets

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)[:, 1]


class _RefineNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(_caffe_flatten(x)))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)[:, 1]


class _OutputNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)  # landmarks: 5 x's, then 5 y's, relative to the box

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu5(self.dense5(_caffe_flatten(self.prelu4(self.conv4(x)))))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)[:, 1]


def _caffe_flatten(x: torch.Tensor) -> torch.Tensor:
    """The converted dense layers expect Caffe's (W, H, C) flattening order."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class _Cascade(nn.Module):
    def __init__(self):
        super().__init__()
        self.pnet, self.rnet, self.onet = _ProposalNet(), _RefineNet(), _OutputNet()


def load_nets() -> _Cascade:
    nets = _Cascade()
    nets.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return nets.eval()


def export(files: dict[str, Path] = ONNX_FILES) -> None:
    """Write the three nets as ONNX (float32, opset 17): P takes images of any size, R and O batches of crops."""
    nets = load_nets()
    shapes = {"pnet": (1, 3, 40, 56), "rnet": (2, 3, 24, 24), "onet": (2, 3, 48, 48)}
    outputs = {"pnet": ["offsets", "probability"], "rnet": ["offsets", "probability"],
               "onet": ["offsets", "landmarks", "probability"]}  # fmt: skip
    for name, path in files.items():
        if name == "pnet":  # one image of any size: outputs one cell per 2 pixels
            axes = {"pixels": {2: "height", 3: "width"}}
        else:  # a batch of crops
            axes = {"pixels": {0: "batch"}, **{output: {0: "batch"} for output in outputs[name]}}
        # TorchScript's exporter: these small nets need nothing of the dynamo exporter, and its graph of a
        # PNet taking any height and width is the plainer one
        torch.onnx.export(
            getattr(nets, name),
            (torch.zeros(shapes[name]),),
            str(path),
            input_names=["pixels"],
            output_names=outputs[name],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


if __name__ == "__main__":
    export()
    for path in ONNX_FILES.values():
        print(f"{path} ({path.stat().st_size:,} bytes)")
