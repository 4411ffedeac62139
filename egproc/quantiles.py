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

from egproc import training

__all__ = [
    "LEVELS", "QuantileNetwork", "QuantileMorph", "quantile_function", "morph_columns", "quantile_function_columns",
    "hidden_layers", "pinball_loss", "fit",
]

#: Floor on the step between consecutive quantiles, in units of the target scale.
MIN_STEP = 1e-4
#: The 21 quantile levels of the CMS method.
LEVELS: tuple[float, ...] = (0.01, *(round(0.05 * k, 2) for k in range(1, 20)), 0.99)


def hidden_layers(n_inputs: int, hidden: Sequence[int]) -> tuple[list[nn.Module], int]:
    """The SiLU hidden stack of the quantile networks and classifiers, and the width of its last layer."""
    layers: list[nn.Module] = []
    width = n_inputs
    for size in hidden:
        layers += [nn.Linear(width, size), nn.SiLU()]
        width = size
    return layers, width


class QuantileNetwork(nn.Module):
    """x [n, d] → non-crossing quantiles [n, K] of y | x (module docstring).

    ``input_mean``/``input_scale`` standardise x, after clamping it to [``input_low``, ``input_high``]
    (the training range, see :meth:`for_sample`); ``target_location``/``target_scale`` set the units
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
        input_low: Sequence[float] | None = None,
        input_high: Sequence[float] | None = None,
    ):
        super().__init__()
        if list(levels) != sorted(levels) or len(set(levels)) != len(levels):
            raise ValueError(f"quantile levels must be strictly increasing, got {levels}")
        if target_scale <= 0:
            raise ValueError(f"target_scale must be positive, got {target_scale}")
        self.register_buffer("levels", torch.tensor(list(levels), dtype=torch.float32))
        self.register_buffer("input_mean", torch.tensor(list(input_mean), dtype=torch.float32))
        self.register_buffer("input_scale", torch.tensor(list(input_scale), dtype=torch.float32))
        n_inputs = len(input_mean)
        low = [-np.inf] * n_inputs if input_low is None else list(input_low)
        high = [np.inf] * n_inputs if input_high is None else list(input_high)
        self.register_buffer("input_low", torch.tensor(low, dtype=torch.float32))
        self.register_buffer("input_high", torch.tensor(high, dtype=torch.float32))
        self.register_buffer("target_location", torch.tensor(float(target_location)))
        self.register_buffer("target_scale", torch.tensor(float(target_scale)))
        self.min_step = MIN_STEP
        self.centre = int(np.argmin(np.abs(np.asarray(levels, dtype=np.float64) - 0.5)))
        # The outward cumulative sums as one matrix: quantile k = Σ_j v_j A[j, k] with v the
        # median and the positive steps (one small matmul, several times faster than cumsums of
        # flipped slices on CPU).
        n_levels = len(levels)
        outward = np.zeros((n_levels, n_levels), dtype=np.float32)
        outward[self.centre, :] = 1.0
        for k in range(n_levels):
            if k > self.centre:
                outward[self.centre + 1 : k + 1, k] = 1.0
            elif k < self.centre:
                outward[k : self.centre, k] = -1.0
        self.register_buffer("outward", torch.from_numpy(outward))
        is_median = np.zeros(n_levels, dtype=bool)
        is_median[self.centre] = True
        self.register_buffer("is_median", torch.from_numpy(is_median))
        with training.seeded(seed):
            layers, width = hidden_layers(len(input_mean), hidden)
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
        median and IQR/1.349 (the σ of a Gaussian with that IQR); inputs clamped to the sample's
        range; initial weights from ``seed``."""
        x = np.asarray(x, dtype=np.float64)
        scale = x.std(axis=0)
        q25, q50, q75 = np.quantile(np.asarray(y, dtype=np.float64), [0.25, 0.5, 0.75])
        spread = (q75 - q25) / 1.349 or float(np.std(y)) or 1.0
        return cls(
            x.mean(axis=0), np.where(scale > 0, scale, 1.0), q50, spread, levels, hidden, seed,
            input_low=x.min(axis=0), input_high=x.max(axis=0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # No extrapolation in the inputs: beyond the training range an MLP's output grows without
        # bound, and in a chain one wild value would feed every later network.
        inside = torch.clamp(x, self.input_low, self.input_high)
        raw = self.net((inside - self.input_mean) / self.input_scale)
        increments = torch.where(self.is_median, raw, nn.functional.softplus(raw) + self.min_step)
        return self.target_location + self.target_scale * (increments @ self.outward)


class QuantileMorph(nn.Module):
    """y [n], source quantiles [n, K], target quantiles [n, K] → F_t⁻¹(F_s(y)) [n] (module docstring).

    ``tails="shift"`` replaces the linear continuation beyond the outermost quantiles by a shift,
    y' = y + (q^t − q^s) at the nearest outermost level. Use it where the slope of the outermost
    segments is poorly constrained and values lie far out, e.g. ln y of a heavy-tailed positive
    variable, where it keeps the ratio y'/y fixed instead of raising y to a power.
    """

    def __init__(self, tails: str = "linear"):
        super().__init__()
        if tails not in ("linear", "shift"):
            raise ValueError(f"tails must be 'linear' or 'shift', got {tails!r}")
        self.shift_tails = tails == "shift"

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
        morphed = t_low + (y - s_low) * slope
        if self.shift_tails:
            below = y < source[:, 0]
            above = y > source[:, n_levels - 1]
            morphed = torch.where(below, y + target[:, 0] - source[:, 0], morphed)
            morphed = torch.where(above, y + target[:, n_levels - 1] - source[:, n_levels - 1], morphed)
        return morphed


def quantile_function(quantiles: torch.Tensor, levels: torch.Tensor, probability: torch.Tensor) -> torch.Tensor:
    """F⁻¹(p) per object [n] from its quantiles [n, K] at ``levels`` [K]: the piecewise-linear
    interpolation of (τ_k, q_k), continued linearly beyond the outermost levels as in the morphing
    (so draws below τ_1 or above τ_K extend the 0.01–0.05 and 0.95–0.99 segments)."""
    n_levels = levels.shape[0]
    upper = torch.searchsorted(levels, probability.contiguous(), right=True).clamp(1, n_levels - 1)
    lower = upper - 1
    q_low = quantiles.gather(1, lower.unsqueeze(1)).squeeze(1)
    q_high = quantiles.gather(1, upper.unsqueeze(1)).squeeze(1)
    tau_low, tau_high = levels[lower], levels[upper]
    return q_low + (probability - tau_low) * (q_high - q_low) / (tau_high - tau_low)


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
    early_stopping: training.EarlyStopping | None = None,
    on_evaluation: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``network`` by minimising the pinball loss (:func:`egproc.training.minimise`, which
    also documents ``early_stopping`` and ``on_evaluation``); returns the loss per epoch."""

    def loss(predicted: torch.Tensor, target: torch.Tensor, batch_weights: torch.Tensor | None) -> torch.Tensor:
        return pinball_loss(predicted, target, network.levels, batch_weights)

    return training.minimise(
        network, loss, x, y, weights, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
        seed=seed, device=device, on_epoch=on_epoch, early_stopping=early_stopping, on_evaluation=on_evaluation,
    )


def morph_columns(y: torch.Tensor, source: torch.Tensor, target: torch.Tensor, shift_tails: bool) -> torch.Tensor:
    """:class:`QuantileMorph` (``tails="shift"`` where ``shift_tails``) on quantiles stored one level
    per row, [K, n]: the layout of the fused CQR export. The same floats; the segment is found by
    counting the source quantiles not above y, which for ascending quantiles is the index
    ``searchsorted(..., right=True)`` gives, and a sum along the rows, unlike a search per object,
    runs vectorised over the objects."""
    n_levels = source.shape[0]
    upper = (source <= y).sum(dim=0).clamp(1, n_levels - 1).unsqueeze(0)
    lower = upper - 1
    s_low, s_high = source.gather(0, lower).squeeze(0), source.gather(0, upper).squeeze(0)
    t_low, t_high = target.gather(0, lower).squeeze(0), target.gather(0, upper).squeeze(0)
    width = s_high - s_low
    slope = torch.where(width > 0, (t_high - t_low) / width, torch.zeros_like(width))
    morphed = t_low + (y - s_low) * slope
    if shift_tails:
        below = y < source[0]
        above = y > source[n_levels - 1]
        morphed = torch.where(below, y + target[0] - source[0], morphed)
        morphed = torch.where(above, y + target[n_levels - 1] - source[n_levels - 1], morphed)
    return morphed


def quantile_function_columns(quantiles: torch.Tensor, levels: torch.Tensor, probability: torch.Tensor) -> torch.Tensor:
    """:func:`quantile_function` on quantiles stored one level per row, [K, n]."""
    n_levels = levels.shape[0]
    upper = torch.searchsorted(levels, probability.contiguous(), right=True).clamp(1, n_levels - 1)
    lower = upper - 1
    q_low = quantiles.gather(0, lower.unsqueeze(0)).squeeze(0)
    q_high = quantiles.gather(0, upper.unsqueeze(0)).squeeze(0)
    tau_low, tau_high = levels[lower], levels[upper]
    return q_low + (probability - tau_low) * (q_high - q_low) / (tau_high - tau_low)
