"""Defended models for the lecture's defenses (LEC-F11): wrappers that are still classifiers.

Each wrapper is an ``nn.Module`` that takes images in [0, 1] and returns the wrapped model's logits,
so every attack of :mod:`advbook.attacks` runs on it unchanged: first the plain attack, which these
defenses were built to stop, then the adaptive one of :mod:`advbook.attacks.adaptive` that breaks
them (Athalye, Carlini & Wagner 2018, "Obfuscated gradients give a false sense of security").

* :class:`RandomResizePad`: Xie et al. (2018), "Mitigating adversarial effects through
  randomization": a random resize, then a random zero padding. *Stochastic* gradients: EOT.
* :class:`NoiseLayers`: Gaussian noise on the input, the input layer of Liu et al.'s (2018) Random
  Self-Ensemble. *Stochastic* gradients: EOT.
* :class:`Purified` with :class:`Purifier`: a denoising autoencoder before the classifier, the
  stand-in for MagNet's reformer (Meng & Chen 2017) and Defense-GAN's projection (Samangouei et al.
  2018), both of which map an input back towards the clean images before classifying it.
* :class:`Purified` with :class:`Quantize`: bit-depth reduction (Xu et al. 2018, feature squeezing;
  Guo et al. 2018 quantise too), a *non-differentiable* pre-processor: its gradient is zero almost
  everywhere (*shattered* gradients), which BPDA replaces by the identity's.

**Randomness.** A randomised wrapper has ``randomized = True`` and draws from a
:class:`torch.Generator` of its own (one per device, made on the first call there), seeded with
``seed`` and restarted by :meth:`~_Seeded.reseed`; never the global RNG. Two wrappers with the same
seed, called on the same inputs in the same order, give the same outputs; a draw on a GPU differs
from one on the CPU. Each sample gets its own draw, so a sample's transformation does not depend
on the other samples' values (it does depend on its position in the call sequence).
Deterministic wrappers have ``randomized = False``; :func:`is_randomized` looks through a whole
module tree.

**Caching and evaluation.** A randomised model's output is a random variable: two calls on the
same input differ, and a result is reproducible only with the same seed and the same sequence of
calls. An evaluation cache (such as :func:`advbook.evaluation.evaluate.evaluate`'s resume files)
must not treat its flags as a deterministic function of (settings, inputs): key them by the seed
and reseed the model before each evaluation, or do not cache them. Robust accuracy under a
randomised defense should be read from fresh draws (or averaged over draws), not from the one
draw an attack happened to stop at.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

__all__ = ["RandomResizePad", "NoiseLayers", "Purified", "Purifier", "Quantize", "is_randomized"]


def is_randomized(model) -> bool:
    """True if ``model`` or any of its submodules draws randomness on each call (``randomized``)."""
    parts = model.modules() if isinstance(model, nn.Module) else [model]
    return any(bool(getattr(m, "randomized", False)) for m in parts)


class _Seeded(nn.Module):
    """A module with its own random stream: one :class:`torch.Generator` per device, seeded with
    ``seed``; :meth:`reseed` restarts every stream."""

    randomized = True

    def __init__(self, *, seed: int):
        super().__init__()
        self.seed = int(seed)
        self._generators: dict[torch.device, torch.Generator] = {}

    def reseed(self, seed: int) -> None:
        """Restart the random stream at ``seed``: the next calls repeat those after construction."""
        self.seed = int(seed)
        self._generators.clear()

    def generator(self, device: torch.device) -> torch.Generator:
        device = torch.device(device)
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]


def _place(images: torch.Tensor, *, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """Each image (m, C, s, s) on a zero canvas of ``size`` x ``size`` with its upper-left corner at
    (``top``, ``left``): one gather from the images padded by ``size - s`` on every side."""
    m, c, s, _ = images.shape
    pad = size - s
    padded = F.pad(images, (pad, pad, pad, pad))
    ar = torch.arange(size, device=images.device)
    rows = (pad - top)[:, None] + ar                  # canvas row i shows padded row i + pad - top
    cols = (pad - left)[:, None] + ar
    return padded[torch.arange(m, device=images.device)[:, None, None, None],
                  torch.arange(c, device=images.device)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


class RandomResizePad(_Seeded):
    """Xie et al. (2018): resize each image to a random size, zero-pad it at a random place, classify.

    For an ``s`` x ``s`` input, the size ``r`` is uniform on the integers of [s, ``out_size``) and
    the resize is nearest-neighbour; the offsets of the image on the ``out_size`` x ``out_size``
    canvas are uniform on [0, ``out_size`` - r), so at least one row and one column of zeros follow
    it (all as in Xie et al.'s code: 299 -> [299, 331) -> 331 for Inception; ``out_size = 36`` is
    the same ratio for CIFAR's 32). Xie et al. draw one size and one offset per batch; here each
    sample draws its own, so its result does not depend on how the samples are batched.

    The model then sees ``out_size`` x ``out_size`` images. Every model of :mod:`advbook.models.zoo`
    except the VGGs ends in adaptive pooling and takes any size (``tiny_cnn`` and ``small_cnn``
    from 8 pixels, the ResNets, WideResNet and MobileNetV2 from 1); ``vgg11_bn`` and ``vgg11_small``
    flatten after five 2x poolings and take 32 to 63 pixels only. With ``resize_back`` the canvas is
    resized (bilinear) to the input size before the model, for a model that needs that size.
    The gradient exists everywhere (resize and pad are linear in the pixels): the obstacle to a
    gradient attack is only the randomness.
    """

    def __init__(self, model: nn.Module, *, out_size: int, resize_back: bool = False, seed: int = 0):
        super().__init__(seed=seed)
        self.model, self.out_size, self.resize_back = model, int(out_size), bool(resize_back)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The randomly resized and padded images (N, C, out_size, out_size), or at the input size
        with ``resize_back``; one draw per sample."""
        n, c, h, w = x.shape
        if h != w or not self.out_size > h:
            raise ValueError(f"RandomResizePad needs square inputs smaller than out_size={self.out_size}, "
                             f"got {h}x{w}")
        g = self.generator(x.device)
        sizes = torch.randint(h, self.out_size, (n,), generator=g, device=x.device)
        room = (self.out_size - sizes).to(x.dtype)
        top = (torch.rand(n, generator=g, device=x.device, dtype=x.dtype) * room).long()
        left = (torch.rand(n, generator=g, device=x.device, dtype=x.dtype) * room).long()
        out = x.new_zeros(n, c, self.out_size, self.out_size)
        for s in sizes.unique().tolist():
            idx = (sizes == s).nonzero().squeeze(1)
            resized = F.interpolate(x[idx], size=(s, s), mode="nearest")
            out = out.index_put((idx,), _place(resized, top=top[idx], left=left[idx], size=self.out_size))
        if self.resize_back:
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.transform(x))


class NoiseLayers(_Seeded):
    """Gaussian noise of standard deviation ``sigma`` added to the input, then the model.

    Random Self-Ensemble (Liu et al. 2018; the lecture's "random noising") puts a noise layer before
    *every* convolution, the first with a larger sigma ("init" noise), trains with them, and
    predicts by averaging the softmax over several noisy passes. This wrapper keeps the input layer
    only, at test time, around any trained model (a model trained with Gaussian augmentation is the
    closer stand-in): it has the property the lesson is about, a different gradient at every call.
    The ensemble is the attacker's EOT applied by the defender (:class:`advbook.attacks.adaptive.EOT`
    with ``average="probs"``). The noisy input is not clipped to [0, 1], as RSE does not clip:
    the model normalises whatever it gets. ``sigma`` is on the [0, 1] scale (``sigma / std`` on the
    model's normalised input).
    """

    def __init__(self, model: nn.Module, *, sigma: float, seed: int = 0):
        if not sigma >= 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        super().__init__(seed=seed)
        self.model, self.sigma = model, float(sigma)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` plus one Gaussian draw of standard deviation ``sigma`` per pixel."""
        noise = torch.randn(x.shape, generator=self.generator(x.device), device=x.device, dtype=x.dtype)
        return x + self.sigma * noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.transform(x))


class Purified(nn.Module):
    """``model(purifier(x))``: a pre-processor before the classifier.

    Randomised exactly when the purifier or the model is (``randomized`` looks at both).
    With a differentiable purifier (:class:`Purifier`) a gradient attack on this module simply
    differentiates through both networks, which is how Athalye et al. break MagNet; with a
    non-differentiable one (:class:`Quantize`) the gradient is zero and the adaptive attack is
    :class:`advbook.attacks.adaptive.BPDA` ``(purified.purifier, purified.model)``.
    """

    def __init__(self, model: nn.Module, purifier: nn.Module):
        super().__init__()
        self.model, self.purifier = model, purifier

    @property
    def randomized(self) -> bool:
        return is_randomized(self.purifier) or is_randomized(self.model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.purifier(x))


class Quantize(nn.Module):
    """Bit-depth reduction to ``bits`` bits per channel: ``round(x (2^bits - 1)) / (2^bits - 1)``.

    Xu et al.'s (2018) squeezer, deterministic; its output stays in [0, 1]. ``torch.round`` has a
    zero derivative everywhere (autograd's convention at the jumps too), so the gradient of anything
    behind it with respect to ``x`` is exactly zero: a gradient attack does not move at all.
    """

    randomized = False
    differentiable = False

    def __init__(self, *, bits: int):
        if not 1 <= bits <= 16:
            raise ValueError(f"bits must be in 1..16, got {bits}")
        super().__init__()
        self.bits = int(bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = 2 ** self.bits - 1
        return torch.round(x * levels) / levels


class Purifier(nn.Module):
    """A tiny convolutional denoising autoencoder, trained by :meth:`fit` to map noisy images to
    clean ones.

    A stand-in for the purification defenses of the lecture (Defense-GAN projects on a GAN's range,
    MagNet's reformer is an autoencoder trained on noisy clean images): three 3x3 convolutions of
    ``width`` channels, ReLU between them and a sigmoid at the end, so the output is an image in
    (0, 1) of the input's size (MagNet's CIFAR reformer is of this shape, with sigmoids). Its
    weights are initialised from a generator seeded with ``seed``. Deterministic once trained.
    """

    randomized = False

    def __init__(self, *, channels: int = 3, width: int = 16, seed: int = 0):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(width, channels, 3, padding=1), nn.Sigmoid())
        g = torch.Generator().manual_seed(seed)
        for m in self.net:
            if isinstance(m, nn.Conv2d):  # PyTorch's default initialisation, from our generator
                nn.init.kaiming_uniform_(m.weight, a=5 ** 0.5, generator=g)
                bound = 1 / (m.weight[0].numel() ** 0.5)
                nn.init.uniform_(m.bias, -bound, bound, generator=g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def fit(self, images: torch.Tensor, *, sigma: float = 0.1, steps: int = 500, batch_size: int = 128,
            lr: float = 1e-2, seed: int = 0) -> list[float]:
        """Train on ``images`` (float, in [0, 1]) to minimise the mean squared error between
        ``self(clip(x + sigma * noise))`` and ``x`` (MagNet trains its reformer the same way, on
        noisy clean images, so it never sees an adversarial example). Adam, ``steps`` steps of
        ``batch_size`` images drawn with replacement; batches and noise from a generator seeded
        with ``seed``. Returns the loss of every step. Leaves the module in eval mode."""
        if steps < 1 or batch_size < 1 or not sigma >= 0:
            raise ValueError(f"steps and batch_size must be >= 1 and sigma >= 0, got {steps}, {batch_size}, {sigma}")
        device = next(self.parameters()).device
        images = images.to(device)
        g = torch.Generator(device=device).manual_seed(seed)
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        self.train()
        losses = []
        for _ in range(steps):
            x = images[torch.randint(0, len(images), (batch_size,), generator=g, device=device)]
            noisy = (x + sigma * torch.randn(x.shape, generator=g, device=device, dtype=x.dtype)).clamp(0, 1)
            loss = F.mse_loss(self(noisy), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        self.eval()
        return losses
