"""The shared training loop: early stopping on held-out rows keeps the best weights it saw."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from egproc import training


def mse(predicted: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    squared = (predicted.squeeze(-1) - target) ** 2
    return squared.mean() if weights is None else (weights * squared).sum() / weights.sum()


def overfitting_problem(seed: int = 0):
    """Targets that are pure noise: a wide network memorises the 64 training rows, so the held-out
    loss falls (towards the mean) and then rises while the training loss keeps falling."""
    rng = np.random.default_rng(seed)
    x_train, x_held = rng.normal(size=(64, 4)), rng.normal(size=(2000, 4))
    y_train, y_held = rng.normal(1.0, 1.0, 64), rng.normal(1.0, 1.0, 2000)
    torch.manual_seed(seed)
    network = nn.Sequential(nn.Linear(4, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 1))
    return network, x_train, y_train, x_held, y_held


def held_out_loss(network: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float(mse(network(torch.as_tensor(x, dtype=torch.float32)), torch.as_tensor(y, dtype=torch.float32), None))


def test_early_stopping_returns_the_best_evaluated_weights_and_stops_after_patience():
    network, x, y, x_held, y_held = overfitting_problem()
    evaluations: list[tuple[int, float]] = []
    history = training.minimise(
        network, mse, x, y, epochs=400, batch_size=64, learning_rate=3e-3,
        early_stopping=training.EarlyStopping(x_held, y_held, every=5, patience=3),
        on_evaluation=lambda step, loss: evaluations.append((step, loss)),
    )
    losses = [loss for _, loss in evaluations]
    best = int(np.argmin(losses))
    assert len(history) < 400, "training should have stopped early"
    assert len(evaluations) == best + 1 + 3  # three evaluations without improvement after the best
    assert [step for step, _ in evaluations] == [5 * (k + 1) for k in range(len(evaluations))]
    assert held_out_loss(network, x_held, y_held) == pytest.approx(losses[best], rel=1e-6)
    assert losses[-1] > losses[best]
    # Memorising noise: training loss far below the held-out loss it was stopped at.
    assert history[-1] < losses[best]


def test_without_patience_all_epochs_run_and_the_best_weights_are_kept():
    network, x, y, x_held, y_held = overfitting_problem(1)
    evaluations: list[tuple[int, float]] = []
    history = training.minimise(
        network, mse, x, y, epochs=150, batch_size=32, learning_rate=3e-3,
        early_stopping=training.EarlyStopping(x_held, y_held, every=7),
        on_evaluation=lambda step, loss: evaluations.append((step, loss)),
    )
    assert len(history) == 150
    # 300 steps: evaluations every 7 steps, and one after the last step.
    assert [step for step, _ in evaluations] == [*range(7, 300, 7), 300]
    losses = [loss for _, loss in evaluations]
    assert held_out_loss(network, x_held, y_held) == pytest.approx(min(losses), rel=1e-6)
    assert min(losses) < losses[-1]


def test_early_stopping_rejects_inconsistent_held_out_rows():
    with pytest.raises(ValueError, match="held-out rows"):
        training.EarlyStopping(np.zeros((0, 3)), np.zeros(0))
    with pytest.raises(ValueError, match="10 input rows but 9 targets"):
        training.EarlyStopping(np.zeros((10, 3)), np.zeros(9))
    with pytest.raises(ValueError, match="patience"):
        training.EarlyStopping(np.zeros((10, 3)), np.zeros(10), patience=0)
