"""CIFAR classifiers with normalisation inside and the penultimate features exposed.

Every model takes images in [0, 1] and normalises them itself, so attacks never need to
know the dataset statistics. ``model.features(x)`` returns the penultimate activations,
``model.head`` maps them to logits. The paper architectures follow the common CIFAR
variants (3x3 stem, no initial max-pool); ``small_cnn`` and ``tiny_cnn`` stand in for
them in the ``cpu`` and ``smoke`` profiles, and ``vgg11_small`` (VGG-11 at an eighth of its
width) stands in for VGG-11. ``micro_cnn`` (half of ``tiny_cnn``'s width) is the smallest student of
the RRM chapter; ``resnet50`` is its paper's student.

``build_model(..., feature_dim=d)`` appends a linear map from the body's features to ``d``
dimensions (see :func:`build_model`): representation matching compares a student's features with
a teacher's, so both must have the teacher's dimension.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

__all__ = ["Classifier", "MODELS", "build_model"]


# The modules a body may end with after its last convolutional block: the global pooling (a fixed
# max-pool in VGG, whose last 2x2 map it reduces to 1x1 on 32x32 images), Flatten, and the
# projection that build_model(feature_dim=...) appends.
_TAIL = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d, nn.Flatten, nn.Linear)


def _tail_start(body: nn.Module) -> int | None:
    """Index of the first module of ``body``'s trailing run of :data:`_TAIL` modules; ``None`` when
    ``body`` is not an ``nn.Sequential`` or has no such tail (then it has no feature map to split)."""
    if not isinstance(body, nn.Sequential):
        return None
    start = len(body)
    while start > 0 and isinstance(body[start - 1], _TAIL):
        start -= 1
    return start if 0 < start < len(body) else None


class Classifier(nn.Module):
    """``head(body(normalise(x)))``; ``features`` is ``body(normalise(x))``.

    ``feature_map(x)`` is the body's last convolutional feature map (B, C, H, W), the output of the
    body before its tail of global pooling, Flatten and optional projection; ``features_from_map``
    runs that tail, so ``features(x)`` equals ``features_from_map(feature_map(x))`` (the same modules
    in the same order). The split point is an int found once here, not a submodule, so the
    ``state_dict`` keys (and every cached model) stay as they were.
    """

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int, *,
                 mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.body = body
        self.head = nn.Linear(feature_dim, num_classes)
        self._split_at = _tail_start(body)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self.mean) / self.std)

    def _split(self) -> int:
        if self._split_at is None:
            raise ValueError("feature_map needs a body nn.Sequential ending in global pooling and Flatten, "
                             f"got {type(self.body).__name__}")
        return self._split_at

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolutional feature map (B, C, H, W) of the images ``x`` in [0, 1]: the map
        the AGKD-BML reference's WideResNet returns as ``feature`` (``custom_models/model.py`` l.89,
        after the last BN-ReLU, before ``avg_pool2d``, l.90). In every zoo body it follows an
        activation, so it is non-negative."""
        out = (x - self.mean) / self.std
        for layer in self.body[:self._split()]:
            out = layer(out)
        return out

    def features_from_map(self, fmap: torch.Tensor) -> torch.Tensor:
        """The penultimate features from a :meth:`feature_map`: the body's pooling, Flatten and
        projection; ``head`` of it gives the logits, so one pass through the body yields the map,
        the features and the logits together."""
        out = fmap
        for layer in self.body[self._split():]:
            out = layer(out)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _small_cnn(width: int) -> tuple[nn.Module, int]:
    # Six 3x3 conv-BN-ReLU layers with three 2x poolings: about 0.1M parameters at width 16,
    # ~600 training images/s on 2 CPU cores (channels_last), enough for ~75% on CIFAR-10.
    w = width
    body = nn.Sequential(
        _conv_bn(3, w), _conv_bn(w, 2 * w), nn.MaxPool2d(2),
        _conv_bn(2 * w, 2 * w), _conv_bn(2 * w, 4 * w), nn.MaxPool2d(2),
        _conv_bn(4 * w, 4 * w), nn.MaxPool2d(2),
        _conv_bn(4 * w, 8 * w), nn.AdaptiveMaxPool2d(1), nn.Flatten())
    return body, 8 * w


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class _PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, drop: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.drop = drop
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = F.relu(self.bn2(out))
        if self.drop:
            out = F.dropout(out, self.drop, self.training)
        return self.conv2(out) + skip


def _stage(block: Callable, cin: int, cout: int, n: int, stride: int) -> nn.Sequential:
    layers = [block(cin, cout, stride)] + [block(cout, cout, 1) for _ in range(n - 1)]
    return nn.Sequential(*layers)


class _Bottleneck(nn.Module):
    """ResNet's bottleneck block (1x1 reduce, 3x3 with the stride, 1x1 expand to 4x ``planes``), as
    the RRM reference code's ``robustness/cifar_models/resnet.py`` l.40-67 builds it."""
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        cout = self.expansion * planes
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


def _resnet50() -> tuple[nn.Module, int]:
    # The CIFAR ResNet-50 of the RRM reference (robustness/cifar_models/resnet.py l.70-128): 3x3 stem,
    # no max-pool, [3, 4, 6, 3] bottleneck blocks, 2048-d features. The reference pools with
    # avg_pool2d(out, 4), which is the global average on 32x32 images; the adaptive pool is the same
    # there and also serves the 8x8 synthetic images of the tests. Its added_linear (2048 -> 512,
    # l.89-93) is left out here: build_model(..., feature_dim=512) adds it where a teacher needs it.
    layers, cin = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)], 64
    for planes, n, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        blocks = []
        for i in range(n):
            blocks.append(_Bottleneck(cin, planes, stride if i == 0 else 1))
            cin = planes * _Bottleneck.expansion
        layers.append(nn.Sequential(*blocks))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), cin


def _resnet18() -> tuple[nn.Module, int]:
    body = nn.Sequential(
        nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
        _stage(_BasicBlock, 64, 64, 2, 1), _stage(_BasicBlock, 64, 128, 2, 2),
        _stage(_BasicBlock, 128, 256, 2, 2), _stage(_BasicBlock, 256, 512, 2, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return body, 512


def _preact_resnet18() -> tuple[nn.Module, int]:
    body = nn.Sequential(
        nn.Conv2d(3, 64, 3, 1, 1, bias=False),
        _stage(_PreActBlock, 64, 64, 2, 1), _stage(_PreActBlock, 64, 128, 2, 2),
        _stage(_PreActBlock, 128, 256, 2, 2), _stage(_PreActBlock, 256, 512, 2, 2),
        nn.BatchNorm2d(512), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return body, 512


def _wide_resnet(depth: int = 34, widen: int = 10) -> tuple[nn.Module, int]:
    n = (depth - 4) // 6
    w = [16, 16 * widen, 32 * widen, 64 * widen]
    body = nn.Sequential(
        nn.Conv2d(3, w[0], 3, 1, 1, bias=False),
        _stage(_PreActBlock, w[0], w[1], n, 1), _stage(_PreActBlock, w[1], w[2], n, 2),
        _stage(_PreActBlock, w[2], w[3], n, 2),
        nn.BatchNorm2d(w[3]), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return body, w[3]


def _vgg11_bn(divisor: int = 1) -> tuple[nn.Module, int]:
    cfg = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
    layers, cin = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers.append(_conv_bn(cin, v // divisor))
            cin = v // divisor
    return nn.Sequential(*layers, nn.Flatten()), 512 // divisor


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, expansion: int, stride: int):
        super().__init__()
        hidden = cin * expansion
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.block(x)
        return x + out if self.use_res else out


def _mobilenet_v2() -> tuple[nn.Module, int]:
    # (expansion, out channels, repeats, stride); strides of the first stages set to 1 for 32x32.
    cfg = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    layers, cin = [_conv_bn(3, 32)], 32
    for t, c, n, s in cfg:
        for i in range(n):
            layers.append(_InvertedResidual(cin, c, t, s if i == 0 else 1))
            cin = c
    layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6(inplace=True),
               nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), 1280


MODELS: dict[str, Callable[[], tuple[nn.Module, int]]] = {
    "tiny_cnn": lambda: _small_cnn(8),
    "small_cnn": lambda: _small_cnn(16),
    "resnet18": _resnet18,
    "preact_resnet18": _preact_resnet18,
    "vgg11_bn": _vgg11_bn,
    "vgg11_small": lambda: _vgg11_bn(divisor=8),  # VGG-11's layout at 1/8 width: the cpu stand-in for VGG-11
    "mobilenet_v2": _mobilenet_v2,
    "wrn34_10": _wide_resnet,
    "wrn28_10": lambda: _wide_resnet(depth=28, widen=10),   # AGKD-BML supplement Table 2's narrower network
    "wrn40_2": lambda: _wide_resnet(depth=40, widen=2),   # Raghunathan et al. 2019's model (LEC-T1), 2.2M parameters
    "micro_cnn": lambda: _small_cnn(4),   # the RRM chapter's smallest student (32-d features)
    "resnet50": _resnet50,  # the RRM paper's student, 23.5M parameters (2048-d features)
}


def build_model(name: str, *, num_classes: int, mean: tuple[float, ...], std: tuple[float, ...],
                feature_dim: int | None = None) -> Classifier:
    """Build a model from :data:`MODELS`; an unknown name fails with the valid choices.

    ``feature_dim``: the dimension of ``features()``. When it differs from the body's own, a linear
    map ``nn.Linear(body_dim, feature_dim)`` (no activation after it) becomes the body's last layer
    and the head reads its output: the RRM reference's ``added_linear``
    (``robustness/cifar_models/resnet.py`` l.89-93, which maps ResNet-50's 2048-d features to 512
    before the classifier). It is appended to the body's ``nn.Sequential``, so the keys of every
    other layer stay those of the model without it. ``None`` or the body's dimension: the model
    exactly as without the argument.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    if feature_dim is not None and (not isinstance(feature_dim, int) or isinstance(feature_dim, bool)
                                    or feature_dim < 1):
        raise ValueError(f"feature_dim must be None or an int >= 1, got {feature_dim!r}")
    body, dim = MODELS[name]()
    if feature_dim is not None and feature_dim != dim:
        body, dim = nn.Sequential(*body, nn.Linear(dim, feature_dim)), feature_dim
    return Classifier(body, dim, num_classes, mean=mean, std=std)
