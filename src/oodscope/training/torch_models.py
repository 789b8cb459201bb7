"""PyTorch versions of the reference models: the toy convnet, the toy MLP and the CIFAR ResNet-20.

Every model ends in an ``nn.Linear`` named ``head`` that outputs **logits** (train it with
``nn.CrossEntropyLoss``), registered last, so it is the last leaf module: oodscope's torch backend finds it
with the default ``head_layer_id=-1`` and ``"penultimate"`` is its input. Inputs are channels-first
``[B, C, H, W]``. Each model keeps the ``input_shape`` and ``num_classes`` it was built with as plain
attributes, which :func:`oodscope.training.train_torch_model` records next to saved weights so that
:func:`oodscope.training.load_torch_model` can rebuild it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from ._common import check_input_shape, check_model_name, check_num_classes

__all__ = [
    "BasicBlock",
    "ResNet20",
    "ToyConvNet",
    "ToyMLP",
    "build_model",
    "resnet20",
    "toy_convnet",
    "toy_mlp",
]


def _image_shape(input_shape: Sequence[int], what: str) -> tuple[int, int, int]:
    shape = tuple(int(size) for size in input_shape)
    if len(shape) != 3:
        raise ValueError(f"{what} needs a channels-first input_shape (C, H, W); got {shape}.")
    if shape[0] > 4 and shape[-1] <= 4:
        raise ValueError(
            f"{what} takes channels-first inputs [B, C, H, W], so input_shape is (C, H, W); got {shape}, "
            f"which looks channels-last. Did you mean {(shape[-1], *shape[:-1])}?"
        )
    return shape  # type: ignore[return-value]


class ToyConvNet(nn.Sequential):
    """The toy convnet of the seed notebooks, in PyTorch.

    Modules (names as in ``named_modules()``): ``conv1`` Conv2d(C, 32, 3) -> ``relu1`` -> ``pool1``
    MaxPool2d(2) -> ``conv2`` Conv2d(32, 64, 3) -> ``relu2`` -> ``pool2`` MaxPool2d(2) -> ``flatten`` ->
    ``dropout`` Dropout(0.5) -> ``head`` Linear(64 * h * w, num_classes), logits. Initialised like the
    Keras model (Glorot-uniform weights, zero biases), so that both frameworks train the same network: on
    MNIST[0-4] vs [5-9], PyTorch's default initialisation gave a wider seed-to-seed spread of GEN AUROC
    (0.85-0.91 over three seeds, against 0.90-0.93).

    Parameters
    ----------
    input_shape : tuple of int, default (1, 28, 28)
        ``(C, H, W)``; H and W must be at least 10.
    num_classes : int, default 10
    """

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10) -> None:
        channels, height, width = _image_shape(input_shape, "ToyConvNet")
        side_h, side_w = ((height - 2) // 2 - 2) // 2, ((width - 2) // 2 - 2) // 2
        if side_h < 1 or side_w < 1:
            raise ValueError(f"ToyConvNet needs images of at least 10x10; got {height}x{width}.")
        super().__init__(
            OrderedDict(
                conv1=nn.Conv2d(channels, 32, 3),
                relu1=nn.ReLU(),
                pool1=nn.MaxPool2d(2),
                conv2=nn.Conv2d(32, 64, 3),
                relu2=nn.ReLU(),
                pool2=nn.MaxPool2d(2),
                flatten=nn.Flatten(),
                dropout=nn.Dropout(0.5),
                head=nn.Linear(64 * side_h * side_w, num_classes),
            )
        )
        self.input_shape = (channels, height, width)
        self.num_classes = int(num_classes)
        _init_like_keras(self)


def _init_like_keras(model: nn.Module) -> None:
    """Glorot-uniform weights and zero biases, as the Keras layers of the seed's model start."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class ToyMLP(nn.Sequential):
    """A small MLP: ``flatten`` -> ``fc1`` Linear(D, 300) -> ``relu1`` -> ``fc2`` Linear(300, 150) ->
    ``relu2`` -> ``head`` Linear(150, num_classes), logits.

    Parameters
    ----------
    input_shape : tuple of int, default (1, 28, 28)
        Any shape without the batch axis; it is flattened.
    num_classes : int, default 10
    """

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10) -> None:
        shape = tuple(int(size) for size in input_shape)
        n_inputs = 1
        for size in shape:
            n_inputs *= size
        super().__init__(
            OrderedDict(
                flatten=nn.Flatten(),
                fc1=nn.Linear(n_inputs, 300),
                relu1=nn.ReLU(),
                fc2=nn.Linear(300, 150),
                relu2=nn.ReLU(),
                head=nn.Linear(150, num_classes),
            )
        )
        self.input_shape = shape
        self.num_classes = int(num_classes)


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int) -> nn.Sequential:
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
    return nn.Sequential(OrderedDict(conv=conv, bn=nn.BatchNorm2d(out_channels)))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU; option-B (1x1 conv + BN) projection
    shortcut where the shape changes, identity elsewhere."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.branch1 = _conv_bn(in_channels, out_channels, 3, stride)
        self.relu1 = nn.ReLU()
        self.branch2 = _conv_bn(out_channels, out_channels, 3, 1)
        self.shortcut = (
            _conv_bn(in_channels, out_channels, 1, stride)
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.branch2(self.relu1(self.branch1(x)))
        return self.relu2(y + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 for CIFAR-sized images (He et al., "Deep Residual Learning for Image Recognition", CVPR
    2016, section 4.2; https://arxiv.org/abs/1512.03385), in PyTorch.

    ``stem`` (conv3x3 with 16 channels + BN, then ``stem_relu``), three stages ``stage1``..``stage3`` of three
    :class:`BasicBlock` each with 16, 32 and 64 channels (the first block of stages 2 and 3 has stride 2),
    ``pool`` (global average pooling), ``flatten``, ``head`` (Linear(64, num_classes), logits).

    Shortcuts are **option B**: identity where the shape is unchanged, a 1x1 convolution with stride 2 +
    BN where it changes (two places); the paper's CIFAR networks use option A (zero-padded identity).
    Option B adds 2,752 trainable parameters to the 0.27M and matches the Keras version exactly in
    structure. Convolutions have no bias and He-normal (fan-in) initialisation.

    Layer ids for oodscope: ``"stage3"`` (last feature map, [B, 64, H/4, W/4]), ``"stage2.0"`` (a block),
    ``"penultimate"`` (the 64-D pooled features).

    Parameters
    ----------
    input_shape : tuple of int, default (3, 32, 32)
        ``(C, H, W)``; any size works thanks to the global pooling.
    num_classes : int, default 10
    """

    def __init__(self, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10) -> None:
        super().__init__()
        channels = _image_shape(input_shape, "ResNet20")[0]
        self.stem = _conv_bn(channels, 16, 3, 1)
        self.stem_relu = nn.ReLU()
        self.stage1 = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 16), BasicBlock(16, 16))
        self.stage2 = nn.Sequential(BasicBlock(16, 32, 2), BasicBlock(32, 32), BasicBlock(32, 32))
        self.stage3 = nn.Sequential(BasicBlock(32, 64, 2), BasicBlock(64, 64), BasicBlock(64, 64))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(64, num_classes)  # registered last: the last leaf module
        self.input_shape = tuple(int(size) for size in input_shape)
        self.num_classes = int(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_relu(self.stem(x))
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.head(self.flatten(self.pool(x)))


def toy_convnet(input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10) -> ToyConvNet:
    """A :class:`ToyConvNet`."""
    return ToyConvNet(input_shape, num_classes)


def toy_mlp(input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10) -> ToyMLP:
    """A :class:`ToyMLP`."""
    return ToyMLP(input_shape, num_classes)


def resnet20(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10) -> ResNet20:
    """A :class:`ResNet20`."""
    return ResNet20(input_shape, num_classes)


ARCHITECTURES: dict[str, type[nn.Module]] = {
    "toy_convnet": ToyConvNet,
    "toy_mlp": ToyMLP,
    "resnet20": ResNet20,
}


def build_model(name: str, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """One of the built-in models by name: ``"toy_convnet"``, ``"toy_mlp"`` or ``"resnet20"``; the shape of
    one input must be positive ints and ``num_classes`` at least 1."""
    input_shape, num_classes = check_input_shape(input_shape), check_num_classes(num_classes)
    return ARCHITECTURES[check_model_name(name)](input_shape, num_classes)


def architecture_of(model: nn.Module) -> str | None:
    """The built-in name of ``model``'s class, or None for any other module."""
    return next((name for name, cls in ARCHITECTURES.items() if type(model) is cls), None)
