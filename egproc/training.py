"""The mini-batch training loop every egproc network uses: weighted loss, Adam, cosine schedule.

One loop, so that seeding, devices, weights and progress reporting behave the same for quantile
networks, zero-peak classifiers and later models. Deterministic on CPU for a given seed: the
shuffling draws from its own generator, and the network's initial weights come from its builder.

Networks are built under :func:`seeded` and independent trainings may run side by side in threads
(:func:`split_cpu_threads`): the small networks of egproc gain little from a second CPU thread
within one operation, so two networks at a time on two cores take about the time of one.

Optionally the loop stops early (:class:`EarlyStopping`): the loss of held-out rows is evaluated
every few steps and the weights of the best evaluation are the ones returned. A network with many
parameters per training object (the endcap flows) goes on lowering its training loss while its
held-out loss rises; the step count alone cannot be right for every region and sample size.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["Loss", "EarlyStopping", "held_out_events", "epochs_for_steps", "minimise", "seeded", "split_cpu_threads"]

#: loss(module output, targets, weights or None) → scalar (a weighted mean over the batch).
Loss = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


_SEEDING = threading.Lock()


@contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Draw from torch's global generator under ``seed`` (None: as it stands) and restore it
    afterwards; one thread at a time, so that networks built while others train in other threads
    get the weights their seeds give."""
    with _SEEDING, torch.random.fork_rng():
        if seed is not None:
            torch.manual_seed(seed)
        yield


@contextmanager
def split_cpu_threads(ways: int, device: str = "cpu") -> Iterator[None]:
    """Give each of ``ways`` concurrent trainings an equal share of torch's CPU threads (at least
    one) for the duration; restored afterwards. A no-op for a GPU device. torch's thread count is
    per process, so this belongs around the whole concurrent section, not inside one thread."""
    threads = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(max(1, threads // ways))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class EarlyStopping:
    """Held-out rows that choose which weights :func:`minimise` returns.

    Every ``every`` optimiser steps (and after the last) the loss of the held-out rows is
    evaluated; the weights of the lowest evaluation are restored at the end. With ``patience``,
    training ends once that many evaluations in a row have not improved on the best; with None it
    runs all its epochs. The held-out rows must not be in the training rows.
    """

    inputs: np.ndarray
    targets: np.ndarray
    weights: np.ndarray | None = None
    every: int = 250
    patience: int | None = None
    #: Rows per forward pass of the evaluation (memory, not results).
    chunk: int = 65536

    def __post_init__(self) -> None:
        if len(self.inputs) == 0:
            raise ValueError("early stopping needs held-out rows, got none")
        if len(self.targets) != len(self.inputs) or (self.weights is not None and len(self.weights) != len(self.inputs)):
            raise ValueError(
                f"early stopping: {len(self.inputs)} input rows but {len(self.targets)} targets"
                + ("" if self.weights is None else f" and {len(self.weights)} weights")
            )
        if self.every < 1 or (self.patience is not None and self.patience < 1):
            raise ValueError(f"early stopping: every ({self.every}) and patience ({self.patience}) must be ≥ 1")


def held_out_events(event: np.ndarray) -> np.ndarray:
    """The rows whose loss picks the weights (:class:`EarlyStopping`): one event in 20, by event
    number over 2, so that each split half (event-number parity) holds out its share too and the
    choice does not depend on how the probes were read or chunked."""
    return np.asarray(event, dtype=np.int64) // 2 % 20 == 7


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
    early_stopping: EarlyStopping | None = None,
    on_evaluation: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Minimise ``loss(module(inputs), targets, weights)`` with Adam and a cosine-annealed learning
    rate; returns the weighted mean loss per epoch. ``on_epoch`` receives (epoch, loss), e.g. to
    drive a progress bar; ``on_evaluation`` receives (steps done, held-out loss) of every
    :class:`EarlyStopping` evaluation. The module is left in eval mode on ``device``, with the
    best evaluation's weights when stopping early."""
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
    monitor = None if early_stopping is None else _Monitor(module, loss, early_stopping, device, on_evaluation)
    history = []
    step = 0
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
            step += 1
            batch_norm = float(rows.numel()) if batch_weights is None else float(batch_weights.sum())
            total += float(value.detach()) * batch_norm
            norm += batch_norm
            if monitor is not None and step % monitor.every == 0 and not monitor.evaluate(step):
                break
        history.append(total / norm if norm else float("nan"))
        if on_epoch is not None:
            on_epoch(epoch, history[-1])
        if monitor is not None and monitor.stopped:
            break
    if monitor is not None:
        if step % monitor.every != 0:
            monitor.evaluate(step)
        monitor.restore_best()
    module.eval()
    return history


class _Monitor:
    """The state of :class:`EarlyStopping` during one :func:`minimise`."""

    def __init__(self, module: nn.Module, loss: Loss, rule: EarlyStopping, device: str, report: Callable[[int, float], None] | None):
        self.module, self.loss, self.rule, self.report = module, loss, rule, report
        self.every = rule.every
        self.x = torch.as_tensor(np.asarray(rule.inputs, dtype=np.float32), device=device)
        self.y = torch.as_tensor(np.asarray(rule.targets, dtype=np.float32), device=device)
        self.w = None if rule.weights is None else torch.as_tensor(np.asarray(rule.weights, dtype=np.float32), device=device)
        self.best_loss = math.inf
        self.best_state: dict[str, torch.Tensor] | None = None
        self.since_best = 0
        self.stopped = False

    def evaluate(self, step: int) -> bool:
        """Held-out loss after ``step`` steps; False once training should stop."""
        self.module.eval()
        total, norm = 0.0, 0.0
        with torch.no_grad():
            for start in range(0, self.x.shape[0], self.rule.chunk):
                rows = slice(start, start + self.rule.chunk)
                weights = None if self.w is None else self.w[rows]
                part = float(self.loss(self.module(self.x[rows]), self.y[rows], weights))
                size = float(self.x[rows].shape[0]) if weights is None else float(weights.sum())
                total, norm = total + part * size, norm + size
        self.module.train()
        value = total / norm
        if self.report is not None:
            self.report(step, value)
        if value < self.best_loss:
            self.best_loss, self.since_best = value, 0
            self.best_state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        else:
            self.since_best += 1
        self.stopped = self.rule.patience is not None and self.since_best >= self.rule.patience
        return not self.stopped

    def restore_best(self) -> None:
        if self.best_state is not None:
            self.module.load_state_dict(self.best_state)
