"""Conditional quantile regression with non-crossing quantiles, and quantile morphing.

The building blocks of chained quantile regression (CMS, "Electromagnetic shower corrections in
CMS", 2023): a network predicts K conditional quantiles of a variable y given X at once, and an MC
value is morphed onto data through the two predicted quantile functions.

**Quantile network.** For levels τ_1 < … < τ_K, :class:`QuantileNetwork` returns

    q_c(x) = m + s · a_c(x)                                      (c: the level nearest 0.5)
    q_k(x) = q_{k−1}(x) + s · (softplus(a_k(x)) + δ)   for k > c,
    q_k(x) = q_{k+1}(x) − s · (softplus(a_k(x)) + δ)   for k < c,

with a = MLP(standardised x), (m, s) a location and scale of y fixed from the training sample, and
δ = 10⁻⁴ a floor on the step. Positive steps make the quantiles non-crossing by construction, for
every x, not only where the training data were (δ keeps them strictly increasing where float32
softplus would underflow to zero). Building outward from the median matters for training: the
step below q_2 moves q_1 alone, so the weak pinball gradient of a 1 % quantile is not drowned in
those of the other twenty levels.

**Loss.** The pinball (check) loss of Koenker & Bassett (1978), Econometrica 46, 33,

    L(y, q) = Σ_k w · max(τ_k (y − q_k), (τ_k − 1)(y − q_k)),

whose minimiser over q_k is the τ_k-quantile of y | x; per-object weights w allow weighted MC.

**Morphing.** :class:`QuantileMorph` maps y with the source (MC) quantiles q^s and target (data)
quantiles q^t of the same object: F_s(y) is the piecewise-linear interpolation of (q^s_k, τ_k), and
y' = F_t^{-1}(F_s(y)) the piecewise-linear interpolation of (τ_k, q^t_k). On each segment the
composition is linear, so

    y' = q^t_i + (y − q^s_i) · (q^t_{i+1} − q^t_i) / (q^s_{i+1} − q^s_i),   q^s_i ≤ y < q^s_{i+1}.

Below q^s_1 and above q^s_K the first and last segments continue linearly: the tails are mapped by
the same affine map as between the outermost quantiles (0.01–0.05 and 0.95–0.99). Where data and MC
differ by an affine map (a shift and a stretch) the morphing is therefore exact everywhere, tails
included.

Every module here is TorchScript-compatible: the standardisation constants are buffers, so an
exported module is self-contained.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["LEVELS", "QuantileNetwork", "QuantileMorph", "pinball_loss", "fit"]

#: Floor on the step between consecutive quantiles, in units of the target scale.
MIN_STEP = 1e-4
#: The 21 quantile levels of the CMS method.
LEVELS: tuple[float, ...] = (0.01, *(round(0.05 * k, 2) for k in range(1, 20)), 0.99)


class QuantileNetwork(nn.Module):
    """x [n, d] → non-crossing quantiles [n, K] of y | x (module docstring).

    ``input_mean``/``input_scale`` standardise x; ``target_location``/``target_scale`` set the units
    of y, so the network works on O(1) numbers whatever the variable. Untrained, it predicts the
    quantiles of N(target_location, target_scale²) for every x; ``seed`` fixes the initial weights.
    """

    def __init__(
        self,
        input_mean: Sequence[float],
        input_scale: Sequence[float],
        target_location: float,
        target_scale: float,
        levels: Sequence[float] = LEVELS,
        hidden: Sequence[int] = (64, 64),
        seed: int | None = None,
    ):
        super().__init__()
        if list(levels) != sorted(levels) or len(set(levels)) != len(levels):
            raise ValueError(f"quantile levels must be strictly increasing, got {levels}")
        if target_scale <= 0:
            raise ValueError(f"target_scale must be positive, got {target_scale}")
        self.register_buffer("levels", torch.tensor(list(levels), dtype=torch.float32))
        self.register_buffer("input_mean", torch.tensor(list(input_mean), dtype=torch.float32))
        self.register_buffer("input_scale", torch.tensor(list(input_scale), dtype=torch.float32))
        self.register_buffer("target_location", torch.tensor(float(target_location)))
        self.register_buffer("target_scale", torch.tensor(float(target_scale)))
        self.min_step = MIN_STEP
        self.centre = int(np.argmin(np.abs(np.asarray(levels, dtype=np.float64) - 0.5)))
        with torch.random.fork_rng():
            if seed is not None:
                torch.manual_seed(seed)
            layers: list[nn.Module] = []
            width = len(input_mean)
            for size in hidden:
                layers += [nn.Linear(width, size), nn.SiLU()]
                width = size
            output = nn.Linear(width, len(levels))
            self._start_gaussian(output, levels, self.centre)
            self.net = nn.Sequential(*layers, output)

    @staticmethod
    def _start_gaussian(output: nn.Linear, levels: Sequence[float], centre: int) -> None:
        """Start at the standard normal quantiles (in target units): biases that reproduce them
        and small weights, so training refines a sensible shape instead of first undoing a
        spread of K·softplus(0) scale units."""
        from scipy.special import ndtri

        normal = ndtri(np.asarray(levels, dtype=np.float64))
        gaps = np.diff(normal) - MIN_STEP  # gap k joins levels k and k+1
        steps = np.log(np.expm1(gaps))  # softplus⁻¹
        # Output k < centre is the step from level k+1 down to k; k > centre the step from k−1 up.
        bias = np.concatenate([steps[:centre], normal[centre : centre + 1], steps[centre:]])
        with torch.no_grad():
            output.weight.mul_(0.1)
            output.bias.copy_(torch.from_numpy(bias))

    @classmethod
    def for_sample(
        cls,
        x: np.ndarray,
        y: np.ndarray,
        levels: Sequence[float] = LEVELS,
        hidden: Sequence[int] = (64, 64),
        seed: int | None = None,
    ) -> "QuantileNetwork":
        """A network standardised on a training sample: x by mean and standard deviation, y by
        median and IQR/1.349 (the σ of a Gaussian with that IQR); initial weights from ``seed``."""
        x = np.asarray(x, dtype=np.float64)
        scale = x.std(axis=0)
        q25, q50, q75 = np.quantile(np.asarray(y, dtype=np.float64), [0.25, 0.5, 0.75])
        spread = (q75 - q25) / 1.349 or float(np.std(y)) or 1.0
        return cls(x.mean(axis=0), np.where(scale > 0, scale, 1.0), q50, spread, levels, hidden, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.net((x - self.input_mean) / self.input_scale)
        c = self.centre
        median = raw[:, c : c + 1]
        above = torch.cumsum(nn.functional.softplus(raw[:, c + 1 :]) + self.min_step, dim=1)
        below_steps = torch.flip(nn.functional.softplus(raw[:, :c]) + self.min_step, [1])
        below = torch.flip(torch.cumsum(below_steps, dim=1), [1])
        standard = torch.cat([median - below, median, median + above], dim=1)
        return self.target_location + self.target_scale * standard


class QuantileMorph(nn.Module):
    """y [n], source quantiles [n, K], target quantiles [n, K] → F_t⁻¹(F_s(y)) [n] (module docstring)."""

    def forward(self, y: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n_levels = source.shape[1]
        # Segment i with source[i] <= y < source[i+1], clamped to the first/last segment so that
        # values beyond the outermost quantiles continue those segments linearly.
        upper = torch.searchsorted(source.contiguous(), y.unsqueeze(1).contiguous(), right=True)
        upper = upper.clamp(1, n_levels - 1)
        lower = upper - 1
        s_low, s_high = source.gather(1, lower).squeeze(1), source.gather(1, upper).squeeze(1)
        t_low, t_high = target.gather(1, lower).squeeze(1), target.gather(1, upper).squeeze(1)
        width = s_high - s_low
        # A segment of zero width (equal source quantiles) maps everything in it to its lower end.
        slope = torch.where(width > 0, (t_high - t_low) / width, torch.zeros_like(width))
        return t_low + (y - s_low) * slope


def pinball_loss(
    predicted: torch.Tensor, target: torch.Tensor, levels: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Weighted mean over objects of the pinball loss summed over levels (module docstring)."""
    residual = target.unsqueeze(1) - predicted
    loss = torch.maximum(levels * residual, (levels - 1.0) * residual).sum(dim=1)
    if weights is None:
        return loss.mean()
    return (weights * loss).sum() / weights.sum()


def fit(
    network: QuantileNetwork,
    x: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    epochs: int = 30,
    batch_size: int = 4096,
    learning_rate: float = 3e-3,
    seed: int = 0,
    device: str = "cpu",
    on_epoch: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``network`` by minimising the pinball loss with Adam; returns the loss per epoch.

    Deterministic on CPU for a given seed and a network built with a given seed (the shuffling uses
    its own generator). ``on_epoch`` receives (epoch, mean loss), e.g. to drive a progress bar.
    """
    generator = torch.Generator().manual_seed(seed)
    network.to(device).train()
    inputs = torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)
    targets = torch.as_tensor(np.asarray(y, dtype=np.float32), device=device)
    sample_weights = None if weights is None else torch.as_tensor(np.asarray(weights, dtype=np.float32), device=device)
    optimiser = torch.optim.Adam(network.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(epochs, 1))
    history = []
    for epoch in range(epochs):
        order = torch.randperm(inputs.shape[0], generator=generator).to(device)
        total, count = 0.0, 0
        for start in range(0, inputs.shape[0], batch_size):  # loop over mini-batches, not objects
            rows = order[start : start + batch_size]
            batch_weights = None if sample_weights is None else sample_weights[rows]
            loss = pinball_loss(network(inputs[rows]), targets[rows], network.levels, batch_weights)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * rows.numel()
            count += rows.numel()
        schedule.step()
        history.append(total / count)
        if on_epoch is not None:
            on_epoch(epoch, history[-1])
    network.eval()
    return history
