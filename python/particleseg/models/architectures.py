"""Segmentation networks in Keras 3: MultiRes UNet, UNet and FCN.

All are fully convolutional, take ``(None, None, channels)`` inputs whose sides are multiples
of ``2 ** depth``, and end in one or more *heads*, 1x1 convolutions concatenated into one
output tensor so that every runtime (Keras, SavedModel, ONNX, DeepImageJ) sees a single
``(N, H, W, K)`` array. Only ``keras.layers`` and ``keras.ops`` are used, so the networks run
on the TensorFlow, JAX and PyTorch backends alike.

References
----------
.. [1] N. Ibtehaz, M. S. Rahman, "MultiResUNet: Rethinking the U-Net architecture for
       multimodal biomedical image segmentation", Neural Networks 121, 74-87 (2020).
.. [2] O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional networks for biomedical
       image segmentation", MICCAI 2015, LNCS 9351, 234-241.
.. [3] J. Long, E. Shelhamer, T. Darrell, "Fully convolutional networks for semantic
       segmentation", CVPR 2015, 3431-3440.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Keras is imported inside the functions that build networks, never here: this module is imported
# on the ONNX inference path and by ``particleseg train --help`` (lazy imports, docs/architecture.md).

ARCHITECTURES = ("multires-unet", "unet", "fcn")
NORMALIZATIONS = ("batch", "group", "none")


@dataclass(frozen=True)
class Head:
    """One output of a network: ``channels`` maps with an activation.

    ``kind`` says how post-processing uses it: ``foreground`` (particle probability),
    ``distance`` (distance to the particle border, normalised to 1 at each particle's centre;
    seeds for the watershed), ``boundary`` (probability of a particle border) or ``classes``
    (softmax over ``channels`` classes).
    """

    kind: str
    channels: int = 1
    activation: str = "sigmoid"

    def __post_init__(self):
        """Check the head's kind and activation (ValueError)."""
        if self.kind not in ("foreground", "distance", "boundary", "classes"):
            raise ValueError(f"unknown head kind {self.kind!r}")
        if self.activation not in ("sigmoid", "softmax", "linear"):
            raise ValueError(f"unknown activation {self.activation!r}")


@dataclass(frozen=True)
class NetworkConfig:
    """Everything needed to build a network again (stored in the bundle metadata)."""

    architecture: str = "multires-unet"
    input_channels: int = 1
    heads: tuple[Head, ...] = (Head("foreground"),)
    depth: int = 4
    base_filters: int = 16
    dropout: float = 0.0
    normalization: str = "batch"
    alpha: float = 1.67  # MultiRes UNet filter multiplier, as in the paper

    def __post_init__(self):
        """Check the settings (ValueError) and turn heads given as dicts into :class:`Head`."""
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {self.normalization!r}; choose one of {', '.join(NORMALIZATIONS)}")
        if not 1 <= self.depth <= 6:
            raise ValueError(f"depth must be between 1 and 6, got {self.depth}")
        if self.input_channels < 1 or self.base_filters < 1:
            raise ValueError("input_channels and base_filters must be positive")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        heads = tuple(h if isinstance(h, Head) else Head(**h) for h in self.heads)
        object.__setattr__(self, "heads", heads)
        if not heads:
            raise ValueError("a network needs at least one head")

    @property
    def multiple_of(self) -> int:
        """Input sides must be multiples of this."""
        return 2**self.depth

    @property
    def output_channels(self) -> int:
        """Channels of the network's output: the sum over its heads."""
        return sum(h.channels for h in self.heads)

    def to_dict(self) -> dict:
        """Return the settings as a JSON-ready dict (heads as dicts), as bundle metadata stores them."""
        d = asdict(self)
        d["heads"] = [asdict(h) for h in self.heads]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "NetworkConfig":
        """Make a config from :meth:`to_dict`'s dict; unknown settings raise ValueError."""
        d = dict(d)
        d["heads"] = tuple(Head(**h) for h in d.get("heads", [{"kind": "foreground"}]))
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown network settings: {', '.join(sorted(unknown))}")
        return cls(**d)


def build_network(config: NetworkConfig):
    """Build an uncompiled Keras model from a :class:`NetworkConfig`."""
    import keras

    inputs = keras.Input((None, None, config.input_channels), name="image")
    body = {"multires-unet": _multires_unet, "unet": _unet, "fcn": _fcn}[config.architecture]
    features = body(inputs, config)
    outputs = []
    for i, head in enumerate(config.heads):
        x = keras.layers.Conv2D(head.channels, 1, name=f"head{i}_{head.kind}")(features)
        # float32 activations keep probabilities exact under mixed precision
        x = keras.layers.Activation(head.activation, dtype="float32", name=f"head{i}_{head.kind}_{head.activation}")(x)
        outputs.append(x)
    out = outputs[0] if len(outputs) == 1 else keras.layers.Concatenate(name="heads")(outputs)
    return keras.Model(inputs, out, name=config.architecture.replace("-", "_"))


# --------------------------------------------------------------------------------------------
# building blocks


def _norm(x, config: NetworkConfig, name: str):
    import keras

    if config.normalization == "batch":
        return keras.layers.BatchNormalization(name=name)(x)
    if config.normalization == "group":
        groups = next(g for g in (8, 4, 2, 1) if x.shape[-1] % g == 0)
        return keras.layers.GroupNormalization(groups=groups, name=name)(x)
    return x


def _conv(x, filters, config, name, kernel=3, activation="relu"):
    import keras

    x = keras.layers.Conv2D(filters, kernel, padding="same", use_bias=config.normalization == "none", name=name)(x)
    x = _norm(x, config, name + "_norm")
    if activation:
        x = keras.layers.Activation(activation, name=name + "_act")(x)
    return x


def _dropout(x, config, name):
    import keras

    return keras.layers.SpatialDropout2D(config.dropout, name=name)(x) if config.dropout > 0 else x


def _up(x, filters, name):
    import keras

    return keras.layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=name)(x)


def _unet(inputs, config: NetworkConfig):
    import keras

    skips = []
    x = inputs
    for level in range(config.depth):
        f = config.base_filters * 2**level
        x = _conv(x, f, config, f"enc{level}_a")
        x = _conv(x, f, config, f"enc{level}_b")
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{level}")(x)
    f = config.base_filters * 2**config.depth
    x = _conv(x, f, config, "bottom_a")
    x = _dropout(x, config, "bottom_drop")
    x = _conv(x, f, config, "bottom_b")
    for level in reversed(range(config.depth)):
        f = config.base_filters * 2**level
        x = _up(x, f, f"up{level}")
        x = keras.layers.Concatenate(name=f"cat{level}")([x, skips[level]])
        x = _conv(x, f, config, f"dec{level}_a")
        x = _conv(x, f, config, f"dec{level}_b")
    return x


def _multires_block(x, u, config, name):
    """MultiRes block [1]: three chained 3x3 convolutions concatenated, plus a shortcut.

    The chained convolutions are a factorised 3x3/5x5/7x7 bank; the shortcut is a 1x1 residual one.
    """
    import keras

    w = config.alpha * u
    f1, f2, f3 = int(w / 6), int(w / 3), int(w / 2)
    shortcut = _conv(x, f1 + f2 + f3, config, name + "_short", kernel=1, activation=None)
    a = _conv(x, f1, config, name + "_c3")
    b = _conv(a, f2, config, name + "_c5")
    c = _conv(b, f3, config, name + "_c7")
    y = keras.layers.Concatenate(name=name + "_cat")([a, b, c])
    y = _norm(y, config, name + "_catnorm")
    y = keras.layers.Add(name=name + "_add")([shortcut, y])
    y = keras.layers.Activation("relu", name=name + "_relu")(y)
    return _norm(y, config, name + "_out")


def _res_path(x, filters, length, config, name):
    """Res path [1]: a chain of 3x3 convolutions with 1x1 shortcuts on a skip connection.

    It narrows the semantic gap between encoder and decoder features.
    """
    import keras

    for i in range(length):
        shortcut = _conv(x, filters, config, f"{name}_{i}_short", kernel=1, activation=None)
        y = _conv(x, filters, config, f"{name}_{i}_conv")
        x = keras.layers.Add(name=f"{name}_{i}_add")([shortcut, y])
        x = keras.layers.Activation("relu", name=f"{name}_{i}_relu")(x)
        x = _norm(x, config, f"{name}_{i}_out")
    return x


def _multires_unet(inputs, config: NetworkConfig):
    import keras

    skips = []
    x = inputs
    for level in range(config.depth):
        u = config.base_filters * 2**level
        x = _multires_block(x, u, config, f"mres_enc{level}")
        skips.append(_res_path(x, u, config.depth - level, config, f"respath{level}"))
        x = keras.layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = _multires_block(x, config.base_filters * 2**config.depth, config, "mres_bottom")
    x = _dropout(x, config, "bottom_drop")
    for level in reversed(range(config.depth)):
        u = config.base_filters * 2**level
        x = _up(x, u, f"up{level}")
        x = keras.layers.Concatenate(name=f"cat{level}")([x, skips[level]])
        x = _multires_block(x, u, config, f"mres_dec{level}")
    return x


def _fcn(inputs, config: NetworkConfig):
    """FCN after Long et al. [3]: a VGG-like encoder whose class scores are upsampled and summed.

    The class scores at strides 2**depth, 2**(depth-1) and 2**(depth-2) are upsampled and summed
    (the FCN-8s skip architecture at ``depth=5``), then upsampled to the input size. Cheaper than
    a UNet decoder, which suits many small fields of view (SIMS).
    """
    import keras

    x = inputs
    pools = []
    for level in range(config.depth):
        f = config.base_filters * 2 ** min(level, 3)
        x = _conv(x, f, config, f"enc{level}_a")
        x = _conv(x, f, config, f"enc{level}_b")
        x = keras.layers.MaxPooling2D(2, name=f"pool{level}")(x)
        pools.append(x)
    width = config.base_filters * 8
    x = _conv(x, width, config, "fc6", kernel=3)
    x = _dropout(x, config, "fc6_drop")
    x = _conv(x, width, config, "fc7", kernel=1)
    score_ch = config.base_filters
    score = keras.layers.Conv2D(score_ch, 1, name="score_last")(x)
    # fuse with the two previous pooling levels (strides / 2 and / 4)
    for k, level in enumerate(range(config.depth - 2, max(config.depth - 4, -1), -1)):
        score = _up(score, score_ch, f"score_up{k}")
        skip = keras.layers.Conv2D(score_ch, 1, name=f"score_pool{level}")(pools[level])
        score = keras.layers.Add(name=f"fuse{k}")([score, skip])
    remaining = config.depth - min(2, config.depth - 1)
    if config.depth == 1:
        remaining = 1
    score = keras.layers.UpSampling2D(2**remaining, interpolation="bilinear", name="score_full")(score)
    return _conv(score, score_ch, config, "refine")
