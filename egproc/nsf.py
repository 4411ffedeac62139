"""Conditional neural spline flow: monotonic rational-quadratic spline coupling layers.

The flow of Durkan, Bekasov, Murray & Papamakarios, "Neural Spline Flows", NeurIPS 2019
(arXiv:1906.04032): an invertible map z = f(x | c) of D features x given C context features c,
built from coupling layers whose element-wise transform is a monotonic rational-quadratic spline,
with a standard-normal base, so that

    log p(x | c) = log N(f(x | c); 0, 1) + log |det ∂f/∂x|.

**Spline.** K bins cover [−B, B] in x and in y. From unnormalised parameters (θ^w, θ^h, θ^d) of
one element,

    w_k = δ_w + (1 − K δ_w) · softmax(θ^w)_k            (bin widths, in units of 2B),
    h_k = δ_h + (1 − K δ_h) · softmax(θ^h)_k            (bin heights, likewise),
    d_k = δ_d + softplus(θ^d_k + ln(e^{1−δ_d} − 1)),    k = 1 … K−1 (interior knot slopes),
    d_0 = d_K = 1,

so the knots are x_k = −B + 2B Σ_{j≤k} w_j (and y_k likewise), every bin is at least δ wide and
high, and every slope at least δ_d (δ = 10⁻³ by default). The shift inside the softplus makes
θ = 0 the identity: equal widths and heights give bin slopes s_k = h_k / w_k = 1 and all d_k = 1.
Within bin k, with ξ = (x − x_k)/(x_{k+1} − x_k), s = (y_{k+1} − y_k)/(x_{k+1} − x_k),

    y = y_k + (y_{k+1} − y_k) · [s ξ² + d_k ξ(1 − ξ)] / [s + (d_k + d_{k+1} − 2s) ξ(1 − ξ)],
    dy/dx = s² [d_{k+1} ξ² + 2s ξ(1 − ξ) + d_k (1 − ξ)²] / [s + (d_k + d_{k+1} − 2s) ξ(1 − ξ)]²

(the paper's §3.1). Outside [−B, B] the map is the identity; since the boundary slopes
are 1, it is continuous with a continuous derivative there ("linear tails", log-det 0).
The inverse solves the quadratic a ξ² + b ξ + c = 0 with, for Δy = y − y_k,

    a = (y_{k+1} − y_k)(s − d_k) + Δy (d_k + d_{k+1} − 2s),
    b = (y_{k+1} − y_k) d_k − Δy (d_k + d_{k+1} − 2s),
    c = −s Δy,

through the root ξ = 2c / (−b − √(b² − 4ac)) (the paper's closed form), which avoids the
cancellation of the textbook form.

**Coupling layer.** A binary mask splits x into an identity part x_A and a transformed part x_B:
y_A = x_A, and each element of x_B goes through its own spline whose 3K − 1 parameters an MLP
computes from (x_A, c). The Jacobian is triangular, so log |det| is the sum of the spline
log-derivatives. The MLP's output layer starts at zero, so an untrained layer is the identity.
The conditioner may also see *indicators* 1[x_j ≤ a_j] of identity features: any function of
x_A keeps the layer invertible with the same Jacobian, and a conditional density that steps where
another feature crosses a_j (a dequantised zero peak's edge, :mod:`egproc.flow`) is otherwise
only approached by the steep ramps a ReLU or SiLU network can make.

**Flow.** :class:`SplineFlow` stacks coupling layers in pairs: with a fixed permutation π of
the features (the identity for the first pair, a seeded random one for later pairs), the first
layer of a pair transforms π's second half given its first, the second layer the reverse. Every
feature is thus transformed once per pair and conditions the others. The permutation is expressed
through the masks, so features are never reordered and no permutation layers are needed.

Inputs (and context) should be standardised: the spline acts on [−B, B] with B = 5 by default and
is the identity beyond. Every module here is TorchScript-compatible, with `transform`, `inverse`
and `log_prob` exported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from egproc import training

__all__ = [
    "MIN_BIN_WIDTH", "MIN_BIN_HEIGHT", "MIN_DERIVATIVE", "ACTIVATIONS",
    "rational_quadratic_spline", "packed_rational_quadratic_spline", "CouplingLayer", "SplineFlow",
]

#: Floor on a bin's width, as a fraction of the spline's range 2B.
MIN_BIN_WIDTH = 1e-3
#: Floor on a bin's height, as a fraction of 2B.
MIN_BIN_HEIGHT = 1e-3
#: Floor on the slope at an interior knot.
MIN_DERIVATIVE = 1e-3
#: The conditioners' hidden activations, by name.
ACTIVATIONS: dict[str, type[nn.Module]] = {"silu": nn.SiLU, "relu": nn.ReLU}


def _knot_grid(
    bins: int, bound: float, min_bin_width: float, min_bin_height: float, dim: int, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The parts of the knots that do not depend on the parameters, for parameters whose bin axis
    is ``dim``: offsets [2, K − 1, 1…] = 2B·δ·k − B (k = 1 … K − 1) and ranges [2, 1, 1…] =
    2B(1 − Kδ), for x (index 0) and y (index 1), and the outer knots (−B, B) [2, 1…]. A layer
    holds them, as buffers, instead of building a dozen small tensors on every call."""
    minimum = _pair(min_bin_width, min_bin_height, like)
    trailing = [1] * (-dim - 1)
    ranges = (2.0 * bound * (1.0 - minimum * bins)).reshape([2, 1] + trailing)
    steps = torch.arange(1, bins, dtype=like.dtype, device=like.device).reshape([1, bins - 1] + trailing)
    offsets = (2.0 * bound) * minimum.reshape([2, 1] + trailing) * steps - bound
    return offsets, ranges, _pair(-bound, bound, like).reshape([2] + trailing)


def _interior_knots(
    sizes: torch.Tensor, offsets: torch.Tensor, ranges: torch.Tensor, dim: int, triangle: Optional[torch.Tensor]
) -> torch.Tensor:
    """Interior knots [..., 2, K − 1, ...] of x (index 0 of the new axis before ``dim``) and y
    (index 1), from the unnormalised bin widths and heights [..., 2, K, ...] and
    :func:`_knot_grid`'s offsets and ranges; the outer knots are ∓bound exactly and left to the
    caller. With the bins on axis −2, ``triangle`` (the K × K lower-triangular ones) makes the
    running sums one matrix product, which took 0.65 of ``cumsum``'s time over that strided axis
    on a CPU."""
    n_bins = sizes.shape[dim]
    # With S_k the cumulative sums of e^θ, knot k is at −B + 2B (δ k + (1 − δK) S_k / S_K): the
    # softmax's normalisation is applied to the K − 1 sums in one fused multiply-add instead of to
    # every bin size before summing, half the elementwise passes of the textbook order (same map,
    # floats equal to rounding). The maximum is subtracted so that no exponential overflows.
    exponentials = torch.exp(sizes - sizes.detach().amax(dim=dim, keepdim=True))
    sums = torch.matmul(triangle, exponentials) if triangle is not None else torch.cumsum(exponentials, dim=dim)
    return torch.addcmul(offsets, sums.narrow(dim, 0, n_bins - 1), ranges / sums.narrow(dim, n_bins - 1, 1))


def _pair(first: float, second: float, like: torch.Tensor) -> torch.Tensor:
    """[first, second] in ``like``'s dtype and device. (TorchScript's torch.tensor of a list of
    floats rounds them to float32 first, whatever the dtype asked for.)"""
    return torch.stack([torch.full([], first, dtype=like.dtype, device=like.device),
                        torch.full([], second, dtype=like.dtype, device=like.device)])


def _check_bin_axis(inputs: torch.Tensor, parameters: torch.Tensor, dim: int) -> None:
    if dim >= 0 or parameters.dim() != inputs.dim() + 1 or dim < -parameters.dim():
        raise ValueError(
            "the bin axis must be given from the end, and the parameters need one more axis than the inputs"
        )


def rational_quadratic_spline(
    inputs: torch.Tensor,
    unnormalized_widths: torch.Tensor,
    unnormalized_heights: torch.Tensor,
    unnormalized_derivatives: torch.Tensor,
    inverse: bool = False,
    bound: float = 5.0,
    min_bin_width: float = MIN_BIN_WIDTH,
    min_bin_height: float = MIN_BIN_HEIGHT,
    min_derivative: float = MIN_DERIVATIVE,
    log_derivative: bool = True,
    dim: int = -1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Element-wise monotonic rational-quadratic spline on [−bound, bound], identity outside
    (module docstring).

    ``inputs`` [...] with unnormalised widths and heights [..., K] and interior derivatives
    [..., K − 1] per element. Returns (outputs [...], log |d outputs / d inputs| [...]); with
    ``inverse`` the inverse map and its own log-derivative (minus the forward one at the output).
    Without ``log_derivative`` (applying a trained flow) the second output is zeros, not computed.
    ``dim`` (negative) is the parameters' bin axis, the one ``inputs`` lacks: with −2, inputs
    [T, n] and widths [T, K, n], every per-bin operation runs over n contiguous elements, which
    on a CPU took 0.7 of the time of the layout with the bins last (same map; the bin sizes are
    summed in another order, so the floats agree to rounding).
    """
    _check_bin_axis(inputs, unnormalized_widths, dim)
    n_bins = unnormalized_widths.shape[dim]
    if unnormalized_heights.shape[dim] != n_bins or unnormalized_derivatives.shape[dim] != n_bins - 1:
        raise ValueError("need K widths, K heights and K - 1 interior derivatives per element")
    return packed_rational_quadratic_spline(
        inputs,
        torch.cat([unnormalized_widths, unnormalized_heights, unnormalized_derivatives], dim=dim),
        n_bins, inverse, bound, min_bin_width, min_bin_height, min_derivative, log_derivative, dim,
    )


def packed_rational_quadratic_spline(
    inputs: torch.Tensor,
    parameters: torch.Tensor,
    bins: int,
    inverse: bool = False,
    bound: float = 5.0,
    min_bin_width: float = MIN_BIN_WIDTH,
    min_bin_height: float = MIN_BIN_HEIGHT,
    min_derivative: float = MIN_DERIVATIVE,
    log_derivative: bool = True,
    dim: int = -1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rational_quadratic_spline` with its parameters packed along ``dim`` as a
    conditioner puts them out: [..., 3K − 1, ...] = widths, heights, interior derivatives. Widths
    and heights then go through each per-bin operation together, as one tensor."""
    _check_bin_axis(inputs, parameters, dim)
    if parameters.shape[dim] != 3 * bins - 1:
        raise ValueError(
            f"need 3K - 1 = {3 * bins - 1} parameters per element for {bins} bins, got {parameters.shape[dim]}"
        )
    if bins < 2:
        raise ValueError(f"need at least 2 bins, got {bins}")
    if min_bin_width * bins >= 1.0 or min_bin_height * bins >= 1.0:
        raise ValueError("the minimum bin width and height times the number of bins must be below 1")
    offsets, ranges, outer_knots = _knot_grid(bins, bound, min_bin_width, min_bin_height, dim, inputs)
    end_steps = torch.tensor([-1, 0], device=inputs.device).reshape([2] + [1] * (-dim - 1))
    triangle = torch.ones(bins, bins, dtype=inputs.dtype, device=inputs.device).tril() if dim == -2 else None
    return _spline_on_grid(
        inputs, parameters, bins, inverse, bound, min_derivative, log_derivative, dim,
        offsets, ranges, outer_knots, end_steps, triangle,
    )


def _spline_on_grid(
    inputs: torch.Tensor,
    parameters: torch.Tensor,
    bins: int,
    inverse: bool,
    bound: float,
    min_derivative: float,
    log_derivative: bool,
    dim: int,
    offsets: torch.Tensor,
    ranges: torch.Tensor,
    outer_knots: torch.Tensor,
    end_steps: torch.Tensor,
    triangle: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`packed_rational_quadratic_spline` with its checks done and its constant tensors
    given (:func:`_knot_grid`; ``end_steps`` = [−1, 0] [2, 1…], the offsets of a bin's two ends
    from the count of knots below; ``triangle``: :func:`_interior_knots`)."""
    position_of_bins = parameters.dim() + dim
    shape = list(parameters.shape)
    sizes_shape = shape[:position_of_bins] + [2, bins] + shape[position_of_bins + 1 :]
    knots = _interior_knots(
        parameters.narrow(dim, 0, 2 * bins).reshape(sizes_shape), offsets, ranges, dim, triangle
    )  # [..., 2 (x, y), K − 1, ...]

    inside = inputs.abs() <= bound
    # Evaluate the spline on clamped values everywhere and select afterwards: finite values (and
    # finite gradients) in the unused branch, instead of indexing rows in and out.
    clamped = inputs.clamp(-bound, bound)
    # The bin is the number of interior knots at or below the value: K − 1 comparisons beat a
    # binary search over so few knots (the upper bound itself falls in the last bin).
    search = knots.select(dim - 1, 1 if inverse else 0)
    found = (clamped.unsqueeze(dim) >= search).sum(dim=dim, keepdim=True)
    # Only the bin's two ends are needed: gather them from the interior knots (and the raw
    # derivative parameters, so that the softplus runs on 2 values, not K − 1); an end that is an
    # outer knot (−bound or +bound, slope 1) was clamped into range and is replaced below.
    unclamped_ends = found + end_steps
    ends = unclamped_ends.clamp(0, bins - 2)
    outer = unclamped_ends != ends
    both_axes = list(knots.shape)
    both_axes[position_of_bins + 1] = 2
    knot_ends = torch.where(outer.unsqueeze(dim - 1), outer_knots, knots.gather(dim, ends.unsqueeze(dim - 1).expand(both_axes)))
    x_low, x_high = knot_ends.select(dim - 1, 0).unbind(dim)
    y_low, y_high = knot_ends.select(dim - 1, 1).unbind(dim)
    # Offset so that θ = 0 gives slope 1, the identity (softplus(offset) = 1 − min_derivative).
    offset = math.log(math.expm1(1.0 - min_derivative))
    interior = min_derivative + F.softplus(parameters.narrow(dim, 2 * bins, bins - 1).gather(dim, ends) + offset)
    d_low, d_high = torch.where(outer, 1.0, interior).unbind(dim)
    width, height = x_high - x_low, y_high - y_low
    slope = height / width
    curvature = torch.add(d_low + d_high, slope, alpha=-2.0)

    if inverse:
        rise = clamped - y_low
        # The paper's a, b and −c; the root is ξ = 2c / (−b − √(b² − 4ac)), written with −c.
        a = torch.addcmul(height * (slope - d_low), rise, curvature)
        b = torch.addcmul(height * d_low, rise, curvature, value=-1.0)
        minus_c = slope * rise
        discriminant = torch.addcmul(b * b, a, minus_c, value=4.0).clamp_min(0.0)  # ≥ 0 in exact arithmetic
        position = (2.0 * minus_c) / (b + torch.sqrt(discriminant))
        outputs = torch.addcmul(x_low, position, width)
    else:
        position = (clamped - x_low) / width
        mixed = position * (1.0 - position)
        numerator = torch.addcmul(slope * position * position, d_low, mixed)
        outputs = torch.addcmul(y_low, height, numerator / torch.addcmul(slope, curvature, mixed))

    outputs = torch.where(inside, outputs, inputs)
    if not log_derivative:
        return outputs, torch.zeros_like(outputs)
    mixed = position * (1.0 - position)
    denominator = torch.addcmul(slope, curvature, mixed)
    complement = 1.0 - position
    numerator = slope * slope * (d_high * position * position + 2.0 * slope * mixed + d_low * complement * complement)
    log_slope = torch.log(numerator) - 2.0 * torch.log(denominator)
    if inverse:
        log_slope = -log_slope
    return outputs, torch.where(inside, log_slope, torch.zeros_like(log_slope))


class CouplingLayer(nn.Module):
    """x [D, n], context [C, n] → (y [D, n], log |det ∂y/∂x| [n]) (module docstring): the
    features and context come *features first*, one row per feature, as :class:`SplineFlow`
    passes them.

    ``mask`` [D]: true (non-zero) for the features this layer transforms, false for those it
    passes through and conditions on. The conditioner is an MLP on [identity features, context,
    indicators] with ``hidden`` layers of ``activation`` (one of :data:`ACTIVATIONS`) and a linear
    ``head``; the head starts at zero, so a fresh layer is the identity. ``indicators`` are pairs
    (j, a) of an identity feature and a threshold: the conditioner sees 1[x_j ≤ a] (module
    docstring).

    Features first, every step of a layer runs on whole rows: the conditioner's inputs are
    gathered rows, its layers are W h with the n objects as the long, contiguous axis, and its
    output is already the spline's layout (parameters [T, 3K − 1, n], ``dim`` = −2), where every
    per-bin operation runs over n contiguous values. On a CPU that took 0.7 of the time of the
    objects-first layout for the spline alone.
    """

    def __init__(
        self,
        features: int,
        context: int,
        mask: Sequence[bool] | Sequence[int],
        bins: int = 8,
        hidden: Sequence[int] = (64, 64),
        bound: float = 5.0,
        min_bin_width: float = MIN_BIN_WIDTH,
        min_bin_height: float = MIN_BIN_HEIGHT,
        min_derivative: float = MIN_DERIVATIVE,
        activation: str = "silu",
        indicators: Sequence[tuple[int, float]] = (),
    ):
        super().__init__()
        transformed = [bool(m) for m in mask]
        if len(transformed) != features:
            raise ValueError(f"mask has {len(transformed)} entries for {features} features")
        if not any(transformed):
            raise ValueError("the mask transforms no feature")
        if bins < 2:
            raise ValueError(f"need at least 2 bins, got {bins}")
        if max(min_bin_width, min_bin_height) * bins >= 1.0:
            raise ValueError("the minimum bin width and height times the number of bins must be below 1")
        if bound <= 0:
            raise ValueError(f"bound must be positive, got {bound}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        identity_index = [i for i, t in enumerate(transformed) if not t]
        transform_index = [i for i, t in enumerate(transformed) if t]
        if not identity_index and context == 0:
            raise ValueError("a layer that transforms every feature needs context to condition on")
        for feature, _ in indicators:
            if not 0 <= feature < features or transformed[feature]:
                raise ValueError(
                    f"indicator of feature {feature}: only a feature the layer passes through can condition it"
                )
        self.register_buffer("identity_index", torch.tensor(identity_index, dtype=torch.long))
        self.register_buffer("transform_index", torch.tensor(transform_index, dtype=torch.long))
        self.register_buffer("indicator_index", torch.tensor([int(j) for j, _ in indicators], dtype=torch.long))
        self.register_buffer("indicator_threshold", torch.tensor([float(a) for _, a in indicators], dtype=torch.float32))
        self.bins = bins
        self.n_transformed = len(transform_index)
        self.bound = float(bound)
        self.min_bin_width = float(min_bin_width)
        self.min_bin_height = float(min_bin_height)
        self.min_derivative = float(min_derivative)
        # The spline's constant tensors (_spline_on_grid), derived from the settings above and not
        # part of the state dict.
        offsets, ranges, outer_knots = _knot_grid(bins, self.bound, self.min_bin_width, self.min_bin_height, -2, torch.zeros(()))
        self.register_buffer("knot_offsets", offsets, persistent=False)
        self.register_buffer("knot_ranges", ranges, persistent=False)
        self.register_buffer("outer_knots", outer_knots, persistent=False)
        self.register_buffer("end_steps", torch.tensor([-1, 0]).reshape(2, 1), persistent=False)
        self.register_buffer("triangle", torch.ones(bins, bins).tril(), persistent=False)
        width = len(identity_index) + context + len(indicators)
        linears = []
        for size in hidden:
            linears.append(nn.Linear(width, size))
            width = size
        self.hidden = nn.ModuleList(linears)
        self.activation = ACTIVATIONS[activation]()
        self.head = nn.Linear(width, self.n_transformed * (3 * bins - 1))
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def _spline(
        self, x: torch.Tensor, context: torch.Tensor, inverse: bool, log_det: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        indicators = x.index_select(0, self.indicator_index) <= self.indicator_threshold.unsqueeze(1)
        h = torch.cat([x.index_select(0, self.identity_index), context, indicators.to(x.dtype)], dim=0)
        # W h, then + b in place (mm's gradient does not need its output). addmm would round
        # differently once TorchScript splits it into mm and add, and the exported module would no
        # longer give the eager floats.
        for linear in self.hidden:
            h = self.activation(torch.mm(linear.weight, h).add_(linear.bias.unsqueeze(1)))
        parameters = (
            torch.mm(self.head.weight, h)
            .add_(self.head.bias.unsqueeze(1))
            .reshape(self.n_transformed, 3 * self.bins - 1, x.shape[1])
        )
        outputs, log_derivative = _spline_on_grid(
            x.index_select(0, self.transform_index), parameters, self.bins, inverse, self.bound, self.min_derivative,
            log_det, -2, self.knot_offsets, self.knot_ranges, self.outer_knots, self.end_steps, self.triangle,
        )
        return x.index_copy(0, self.transform_index, outputs), log_derivative.sum(dim=0)

    def forward(self, x: torch.Tensor, context: torch.Tensor, log_det: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(y [D, n], log |det ∂y/∂x| [n]); without ``log_det`` the second is zeros, not computed."""
        return self._spline(x, context, False, log_det)

    @torch.jit.export
    def inverse(self, y: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # The identity features are untouched, so the conditioner sees the same inputs as forward.
        return self._spline(y, context, True, False)[0]


class SplineFlow(nn.Module):
    """Conditional density of x [n, D] given context [n, C]: z = f(x | c) ~ N(0, 1) (module docstring).

    ``transforms`` coupling layers of ``bins`` spline bins on [−``bound``, ``bound``] with
    ``hidden`` conditioner layers of ``activation``; ``seed`` fixes the initial weights. The mask
    permutations are fixed (by default :meth:`masks`, which depend on ``features`` and ``transforms`` only), so two
    flows of the same shape share their structure whatever their seeds; ``masks`` gives each
    layer's transformed features instead, and ``indicators`` each layer's conditioner indicators
    (:class:`CouplingLayer`). Untrained, the flow is the identity.
    ``forward`` is ``log_prob``.
    """

    def __init__(
        self,
        features: int,
        context: int,
        transforms: int = 6,
        bins: int = 8,
        hidden: Sequence[int] = (64, 64),
        bound: float = 5.0,
        seed: int | None = None,
        masks: Sequence[Sequence[bool]] | None = None,
        activation: str = "silu",
        indicators: Sequence[Sequence[tuple[int, float]]] | None = None,
    ):
        super().__init__()
        if features < 1 or context < 0 or transforms < 1:
            raise ValueError(
                f"need features ≥ 1, context ≥ 0, transforms ≥ 1; got {features}, {context}, {transforms}"
            )
        if masks is None:
            masks = self.masks(features, transforms)
        elif len(masks) != transforms:
            raise ValueError(f"{len(masks)} masks for {transforms} transforms")
        if indicators is None:
            indicators = [()] * transforms
        elif len(indicators) != transforms:
            raise ValueError(f"indicators for {len(indicators)} layers, but {transforms} transforms")
        self.features = features
        self.context = context
        with training.seeded(seed):
            self.layers = nn.ModuleList(
                [
                    CouplingLayer(features, context, mask, bins, hidden, bound, activation=activation, indicators=steps)
                    for mask, steps in zip(masks, indicators)
                ]
            )
        self.log_normaliser = 0.5 * features * math.log(2.0 * math.pi)

    @staticmethod
    def masks(features: int, transforms: int) -> list[list[bool]]:
        """The transformed-feature mask of each layer: pairs of complementary halves of a fixed
        permutation per pair (the identity first, then seeded draws); with one feature, every
        layer transforms it given the context alone."""
        if features == 1:
            return [[True] for _ in range(transforms)]
        # A private generator: the structure must not depend on, nor disturb, the global RNG.
        generator = torch.Generator().manual_seed(0)
        masks: list[list[bool]] = []
        for layer in range(transforms):
            if layer % 2 == 0:
                order = torch.arange(features) if layer == 0 else torch.randperm(features, generator=generator)
                second_half = set(order[features // 2 :].tolist())
                mask = [i in second_half for i in range(features)]
            else:
                mask = [not m for m in masks[-1]]
            masks.append(mask)
        return masks

    @torch.jit.export
    def transform(
        self, x: torch.Tensor, context: torch.Tensor, log_det: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [n, D] → (z [n, D], log |det ∂z/∂x| [n]); without ``log_det`` (applying a trained
        flow) the log-determinant is zeros, not computed."""
        logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        # The layers take one row per feature (CouplingLayer).
        rows, context_rows = x.t().contiguous(), context.t().contiguous()
        for layer in self.layers:
            rows, layer_logdet = layer(rows, context_rows, log_det)
            logdet = logdet + layer_logdet
        return rows.t(), logdet

    @torch.jit.export
    def inverse(self, z: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """z [n, D] → x [n, D] with f(x | c) = z."""
        rows, context_rows = z.t().contiguous(), context.t().contiguous()
        for i in range(len(self.layers) - 1, -1, -1):
            # TorchScript cannot index a ModuleList with a variable, nor iterate it reversed.
            for j, layer in enumerate(self.layers):
                if j == i:
                    rows = layer.inverse(rows, context_rows)
        return rows.t()

    @torch.jit.export
    def log_prob(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """log p(x | c) [n]."""
        z, logdet = self.transform(x, context, True)
        return logdet - 0.5 * (z * z).sum(dim=1) - self.log_normaliser

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x, context)
