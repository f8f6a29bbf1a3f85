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

import warnings
from pathlib import Path

import torch
from torch import nn
from torchvision.ops import roi_align

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


class _OnBoxes(nn.Module):
    """A refine or output net fed the whole image and boxes in it: each box cropped and resampled to the net's
    input by ``roi_align`` (exported as ONNX's RoiAlign, which onnxruntime computes as torchvision does), then
    normalised, so that one call runs a whole stage."""

    def __init__(self, net: nn.Module, size: int):
        super().__init__()
        self.net, self.size = net, size

    def forward(self, image: torch.Tensor, boxes: torch.Tensor):
        rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes], dim=1)
        crops = roi_align(image, rois, output_size=self.size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        return self.net(normalize(crops))


class _OnPixels(nn.Module):
    """The proposal net fed pixel values (0-255), normalised here."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor):
        return self.net(normalize(image))


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - 127.5) * 0.0078125


def export(files: dict[str, Path] = ONNX_FILES) -> None:
    """Write the three stages as ONNX (float32, opset 17). Each takes float32 pixel values (1, 3, H, W) of any
    size: P gives a face probability (and box offsets) per 2 pixels of it; R and O also take boxes (N, 4) as
    (x1, y1, x2, y2) and give each box's offsets and probability (and O its landmarks)."""
    nets = load_nets()
    image = torch.zeros((1, 3, 40, 56))
    boxes = torch.tensor([[1.0, 2.0, 30.0, 31.0], [5.0, 5.0, 20.0, 20.0]])
    stages = {
        "pnet": (_OnPixels(nets.pnet), (image,), ["pixels"], ["offsets", "probability"]),
        "rnet": (_OnBoxes(nets.rnet, 24), (image, boxes), ["pixels", "boxes"], ["offsets", "probability"]),
        "onet": (_OnBoxes(nets.onet, 48), (image, boxes), ["pixels", "boxes"], ["offsets", "landmarks", "probability"]),
    }
    for name, path in files.items():
        module, example, inputs, outputs = stages[name]
        axes = {"pixels": {2: "height", 3: "width"}}
        if name != "pnet":
            axes.update({"boxes": {0: "boxes"}, **{output: {0: "boxes"} for output in outputs}})
        with warnings.catch_warnings():
            # TorchScript's exporter, deprecated: these small nets need nothing of the dynamo exporter, and its
            # graphs taking any height and width, and roi_align, are the plainer ones
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.eval(), example, str(path), input_names=inputs, output_names=outputs, dynamic_axes=axes,
                opset_version=17, dynamo=False,
            )  # fmt: skip


if __name__ == "__main__":
    export()
    for path in ONNX_FILES.values():
        print(f"{path} ({path.stat().st_size:,} bytes)")
