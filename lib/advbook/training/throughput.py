"""Training and attack throughput on the device that runs it, for the training benchmark
(``scripts/bench_train.py``) and the coming ``gpu`` profile.

Written for a GPU, testable on the CPU:

* :func:`augment_on_device` crops (pad 4) and flips a batch held on the device as uint8, with a
  generator on that device: no DataLoader, no copy from the host per step.
* :func:`step_functions` builds one standard training step, one PGD-10 adversarial-training step and
  one PGD-20 evaluation batch, each optionally under bf16 autocast, on channels-last inputs. Nothing
  in them reads a value back to the host (no ``.item()``, no printing), so a loop of them queues
  work on the GPU without waiting.
* :func:`time_steps` synchronises only before and after the timed loop.
* :func:`flops_per_image` counts the floating-point operations of one call with PyTorch's
  ``FlopCounterMode`` (matrix products and convolutions, forward and backward), so that a throughput
  can be set against the device's peak; :func:`matmul_peak` measures that peak with a large matrix
  product, rather than trusting a datasheet.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F

from advbook.attacks.core import pgd

__all__ = ["augment_on_device", "step_functions", "time_steps", "flops_per_image", "step_flops", "matmul_peak",
           "STEPS"]

STEPS = ("standard", "pgd10_at", "pgd20_eval")


def augment_on_device(images: torch.Tensor, *, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crops of the zero-padded images (offsets uniform in [0, 2 pad]) and horizontal flips
    (probability 1/2), as :func:`advbook.training.train.augment` does on the host, computed on the
    images' device with ``generator`` (which must live there) by one gather: (B, C, H, W) uint8 or
    float in, the same dtype out. Deterministic for a seeded generator."""
    if images.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(images.shape)}")
    if generator.device != images.device:
        raise ValueError(f"the generator is on {generator.device}, the images on {images.device}: use one device")
    b, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=images.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=images.device)
    flip = torch.rand(b, generator=generator, device=images.device) < 0.5
    rows = dy[:, None] + torch.arange(h, device=images.device)[None, :]                       # (B, H)
    cols = dx[:, None] + torch.arange(w, device=images.device)[None, :]                       # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=images.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]              # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


def step_functions(model: torch.nn.Module, *, lr: float = 0.05, amp: bool = False, eps: float = 8 / 255,
                   step_size: float = 2 / 255) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """The benchmark's three kinds of work on ``model`` (already on its device), each a function of a
    float batch ``x`` in [0, 1] and labels ``y`` returning a tensor left on the device (the loss, or
    the flags of the evaluation): ``standard`` (SGD step on the cross-entropy), ``pgd10_at`` (PGD-10
    from a random start, then the step on the examples) and ``pgd20_eval`` (PGD-20 in eval mode, the
    examples' correctness). ``amp``: the forward passes under bf16 autocast."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def forward(x):
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp):
            return model(x).float()

    def train_on(x, y):
        model.train()
        loss = F.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    def attack(x, y, steps):
        model.eval()
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp):
            return pgd(model, x, y, norm="linf", eps=eps, step_size=step_size, steps=steps, random_start=True,
                       stop_on_success=False, seed=0).x_adv

    def evaluate(x, y):
        x_adv = attack(x, y, 20)
        with torch.no_grad():
            return forward(x_adv).argmax(1) == y

    return {"standard": train_on, "pgd10_at": lambda x, y: train_on(attack(x, y, 10), y), "pgd20_eval": evaluate}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(fn: Callable, batches: list[tuple[torch.Tensor, torch.Tensor]], *, warmup: int = 1) -> float:
    """Seconds per batch of ``fn`` over ``batches`` (after ``warmup`` untimed calls on the first),
    the device synchronised only around the timed loop."""
    if not batches:
        raise ValueError("time_steps needs at least one batch")
    device = batches[0][0].device
    for _ in range(warmup):
        fn(*batches[0])
    _sync(device)
    t0 = time.perf_counter()
    for x, y in batches:
        fn(x, y)
    _sync(device)
    return (time.perf_counter() - t0) / len(batches)


def flops_per_image(fn: Callable, x: torch.Tensor, y: torch.Tensor) -> float:
    """Floating-point operations of one call ``fn(x, y)`` per image, as PyTorch's ``FlopCounterMode``
    counts them (2 per multiply-add of matrix products and convolutions, forward and backward; the
    element-wise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn(x, y)
    return counter.get_total_flops() / len(x)


def step_flops(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """FLOPs per image of each of :data:`STEPS` for ``model``: the standard step counted directly
    (forward and backward to the weights); one attack iteration counted directly as a forward pass
    and a backward pass to the input (``loss.backward(inputs=[x])``: ``FlopCounterMode`` cannot
    follow the ``torch.autograd.grad`` the attacks use); then PGD-10 AT = 10 attack iterations + the
    standard step, PGD-20 evaluation = 20 attack iterations + a forward pass. Leaves the weights and
    their gradients as they were."""
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def forward_only(x, y):
        with torch.no_grad():
            model(x)

    def input_gradient(x, y):
        x = x.detach().requires_grad_(True)
        F.cross_entropy(model(x), y).backward(inputs=[x])

    def standard(x, y):
        F.cross_entropy(model(x), y).backward()

    was = model.training
    model.eval()
    fwd, att = flops_per_image(forward_only, x, y), flops_per_image(input_gradient, x, y)
    model.train()
    std = flops_per_image(standard, x, y)
    model.zero_grad(set_to_none=True)
    model.load_state_dict(state)
    model.train(was)
    return {"standard": std, "pgd10_at": 10 * att + std, "pgd20_eval": 20 * att + fwd, "forward": fwd,
            "attack_iteration": att}


def matmul_peak(device: torch.device | str, *, dtype: torch.dtype = torch.float32, n: int = 4096,
                repeats: int = 10) -> float:
    """The device's measured matrix-product throughput in FLOP/s: ``repeats`` products of two n x n
    matrices of ``dtype`` (2 n^3 operations each), the best of three rounds."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(3):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 * repeats / best
