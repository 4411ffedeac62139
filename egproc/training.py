"""The mini-batch training loop every egproc network uses: weighted loss, Adam, cosine schedule.

One loop, so that seeding, devices, weights and progress reporting behave the same for quantile
networks, zero-peak classifiers and later models. Deterministic on CPU for a given seed: the
shuffling draws from its own generator, and the network's initial weights come from its builder.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

__all__ = ["Loss", "epochs_for_steps", "minimise"]

#: loss(module output, targets, weights or None) → scalar (a weighted mean over the batch).
Loss = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def epochs_for_steps(steps: int, n_rows: int, batch_size: int) -> int:
    """Passes over ``n_rows`` that give at least ``steps`` optimiser steps of ``batch_size``.

    Training length is set in steps because what a network needs to converge depends little on
    the sample size: ten epochs are 600 steps on 500 k probes but 80 on 65 k, which leaves the
    outer quantiles of a small sample visibly untrained.
    """
    batches = max(1, math.ceil(n_rows / batch_size))
    return max(1, math.ceil(steps / batches))


def minimise(
    module: nn.Module,
    loss: Loss,
    inputs: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    epochs: int = 30,
    batch_size: int = 4096,
    learning_rate: float = 3e-3,
    seed: int = 0,
    device: str = "cpu",
    on_epoch: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Minimise ``loss(module(inputs), targets, weights)`` with Adam and a cosine-annealed learning
    rate; returns the weighted mean loss per epoch. ``on_epoch`` receives (epoch, loss), e.g. to
    drive a progress bar. The module is left in eval mode on ``device``."""
    if len(inputs) == 0:
        raise ValueError("cannot train on an empty sample")
    generator = torch.Generator().manual_seed(seed)
    module.to(device).train()
    x = torch.as_tensor(np.asarray(inputs, dtype=np.float32), device=device)
    y = torch.as_tensor(np.asarray(targets, dtype=np.float32), device=device)
    w = None if weights is None else torch.as_tensor(np.asarray(weights, dtype=np.float32), device=device)
    optimiser = torch.optim.Adam(module.parameters(), lr=learning_rate)
    # Annealed per step, so that a run of few long epochs decays as smoothly as one of many.
    total_steps = max(1, epochs * math.ceil(x.shape[0] / batch_size))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=total_steps)
    history = []
    for epoch in range(epochs):
        order = torch.randperm(x.shape[0], generator=generator).to(device)
        total, norm = 0.0, 0.0
        for start in range(0, x.shape[0], batch_size):  # loop over mini-batches, not objects
            rows = order[start : start + batch_size]
            batch_weights = None if w is None else w[rows]
            value = loss(module(x[rows]), y[rows], batch_weights)
            optimiser.zero_grad(set_to_none=True)
            value.backward()
            optimiser.step()
            schedule.step()
            batch_norm = float(rows.numel()) if batch_weights is None else float(batch_weights.sum())
            total += float(value.detach()) * batch_norm
            norm += batch_norm
        history.append(total / norm if norm else float("nan"))
        if on_epoch is not None:
            on_epoch(epoch, history[-1])
    module.eval()
    return history
