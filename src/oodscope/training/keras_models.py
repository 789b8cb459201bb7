"""Keras 3 builders of the reference models: the toy convnet, the toy MLP and the CIFAR ResNet-20.

Every model is a functional ``keras.Model`` (its ``InputLayer`` is ``model.layers[0]``) ending in a
``Dense(num_classes, activation="softmax")`` layer named ``"head"``: ``model(x)`` gives probabilities, as in
the reference notebooks, and oodscope's Keras backend recovers the pre-softmax logits from the head's
weights. Only built-in layers are used, so the models save to ``.keras`` and legacy ``.h5`` files and load
back without custom objects. Inputs are channels-last ``[B, H, W, C]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from ._common import check_input_shape, check_model_name, check_num_classes

__all__ = ["build_model", "resnet20", "toy_convnet", "toy_mlp"]

L = keras.layers


def _input(input_shape: Sequence[int]) -> keras.KerasTensor:
    shape = tuple(int(size) for size in input_shape)
    if len(shape) not in (1, 2, 3):
        raise ValueError(
            f"input_shape must be (H, W, C), (H, W) or (D,) without the batch axis; got {shape}."
        )
    return keras.Input(shape, name="input")


def toy_convnet(input_shape: Sequence[int] = (28, 28, 1), num_classes: int = 10) -> keras.Model:
    """The toy convnet of the seed notebooks (about 35k weights for 28x28x1 inputs and 10 classes).

    Layers (names in quotes): ``"conv1"`` Conv2D(32, 3, ReLU) -> ``"pool1"`` MaxPooling2D(2) -> ``"conv2"``
    Conv2D(64, 3, ReLU) -> ``"pool2"`` MaxPooling2D(2) -> ``"flatten"`` -> ``"dropout"`` Dropout(0.5) ->
    ``"head"`` Dense(num_classes, softmax). Keras' default initialisers (Glorot uniform, zero biases).

    Parameters
    ----------
    input_shape : tuple of int, default (28, 28, 1)
        ``(H, W, C)``; 2-D ``(H, W)`` inputs get a channel axis of 1 through a ``Reshape`` layer.
    num_classes : int, default 10

    Returns
    -------
    keras.Model
        Uncompiled, named ``"toy_convnet"``.
    """
    inputs = _input(input_shape)
    x = inputs
    if len(inputs.shape) == 3:  # (B, H, W): add the channel axis
        x = L.Reshape((*inputs.shape[1:], 1), name="add_channel")(x)
    elif len(inputs.shape) != 4:
        raise ValueError(f"toy_convnet needs image inputs (H, W, C) or (H, W); got {tuple(input_shape)}.")
    x = L.Conv2D(32, 3, activation="relu", name="conv1")(x)
    x = L.MaxPooling2D(2, name="pool1")(x)
    x = L.Conv2D(64, 3, activation="relu", name="conv2")(x)
    x = L.MaxPooling2D(2, name="pool2")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dropout(0.5, name="dropout")(x)
    outputs = L.Dense(num_classes, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="toy_convnet")


def toy_mlp(input_shape: Sequence[int] = (28, 28, 1), num_classes: int = 10) -> keras.Model:
    """A small MLP: ``"flatten"`` -> ``"fc1"`` Dense(300, ReLU) -> ``"fc2"`` Dense(150, ReLU) -> ``"head"``
    Dense(num_classes, softmax).

    Parameters
    ----------
    input_shape : tuple of int, default (28, 28, 1)
        Any shape without the batch axis; it is flattened.
    num_classes : int, default 10

    Returns
    -------
    keras.Model
        Uncompiled, named ``"toy_mlp"``.
    """
    inputs = _input(input_shape)
    x = L.Flatten(name="flatten")(inputs)
    x = L.Dense(300, activation="relu", name="fc1")(x)
    x = L.Dense(150, activation="relu", name="fc2")(x)
    outputs = L.Dense(num_classes, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="toy_mlp")


def _conv_bn(x: keras.KerasTensor, filters: int, kernel: int, strides: int, name: str) -> keras.KerasTensor:
    x = L.Conv2D(
        filters,
        kernel,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)
    # momentum / epsilon as torch's BatchNorm2d defaults, so both frameworks train the same network
    return L.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn")(x)


def _basic_block(x: keras.KerasTensor, filters: int, strides: int, name: str) -> keras.KerasTensor:
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:  # option B: 1x1 projection where the shape changes
        shortcut = _conv_bn(x, filters, 1, strides, f"{name}_shortcut")
    y = _conv_bn(x, filters, 3, strides, f"{name}_1")
    y = L.Activation("relu", name=f"{name}_1_relu")(y)
    y = _conv_bn(y, filters, 3, 1, f"{name}_2")
    y = L.Add(name=f"{name}_add")([y, shortcut])
    return L.Activation("relu", name=name)(y)


def resnet20(input_shape: Sequence[int] = (32, 32, 3), num_classes: int = 10) -> keras.Model:
    """ResNet-20 for CIFAR-sized images (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016,
    section 4.2; https://arxiv.org/abs/1512.03385).

    A 3x3 conv (16 filters) + BN + ReLU stem, then three stages of three basic blocks with 16, 32 and 64
    filters (the first block of stages 2 and 3 has stride 2), global average pooling and a linear head with
    softmax: 6 * 3 + 2 = 20 weighted layers. Basic block: conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut,
    then ReLU.

    Shortcuts are **option B**: identity where the shape is unchanged, a 1x1 convolution with stride 2 + BN
    where it changes (two places). The paper's CIFAR networks use option A (zero-padded identity, no
    weights); option B adds 2 x (1x1 conv + BN) = 2,752 weights to the 0.27M and needs no custom layer, so
    the model saves and loads with built-in layers only. Convolutions have no bias and He-normal
    initialisation; BN uses momentum 0.9 and epsilon 1e-5 (torch's defaults).

    Layer names: ``"stem_conv"``, ``"stem_bn"``, ``"stem_relu"``; block outputs ``"stage{s}_block{b}"``
    (s, b in 1..3; ``"stage3_block3"`` is the last feature map); ``"pool"`` (global average pooling, the
    penultimate features, 64-D); ``"head"``.

    Parameters
    ----------
    input_shape : tuple of int, default (32, 32, 3)
        ``(H, W, C)``; any size works thanks to the global pooling.
    num_classes : int, default 10

    Returns
    -------
    keras.Model
        Uncompiled, named ``"resnet20"``.
    """
    inputs = _input(input_shape)
    if len(inputs.shape) != 4:
        raise ValueError(f"resnet20 needs image inputs (H, W, C); got {tuple(input_shape)}.")
    x = _conv_bn(inputs, 16, 3, 1, "stem")
    x = L.Activation("relu", name="stem_relu")(x)
    for stage, filters in enumerate((16, 32, 64), start=1):
        for block in range(1, 4):
            strides = 2 if stage > 1 and block == 1 else 1
            x = _basic_block(x, filters, strides, f"stage{stage}_block{block}")
    x = L.GlobalAveragePooling2D(name="pool")(x)
    outputs = L.Dense(num_classes, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="resnet20")


def build_model(name: str, input_shape: Sequence[int], num_classes: int) -> keras.Model:
    """One of the built-in models by name: ``"toy_convnet"``, ``"toy_mlp"`` or ``"resnet20"``; the shape of
    one input must be positive ints and ``num_classes`` at least 1."""
    input_shape, num_classes = check_input_shape(input_shape), check_num_classes(num_classes)
    builders = {"toy_convnet": toy_convnet, "toy_mlp": toy_mlp, "resnet20": resnet20}
    return builders[check_model_name(name)](input_shape, num_classes)
