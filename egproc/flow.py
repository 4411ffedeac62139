"""One normalizing flow with a data/MC switch: every shower-shape and isolation variable at once.

The method of "One flow to correct them all" (CMS; a single conditional normalizing flow with a
boolean condition). Per ECAL region, one conditional density p(x | c, s) of the D corrected
variables x, given the conditions c = (pT, η_SC, φ, ρ) and the switch s (1 for data, 0 for MC), is
learnt by maximum likelihood on data and MC together. An MC object is corrected by

    z = f(x | c, s = 0),        x' = f⁻¹(z | c, s = 1),

i.e. it keeps its place z in the base distribution and is read back through the data density.
Where f is the exact density of both samples this is the optimal-transport-like map of the flow's
triangular structure, and it moves all D variables jointly: correlations are corrected with the
marginals, with no chain to order. f is the neural spline flow of :mod:`egproc.nsf` (Durkan et
al. 2019): coupling layers of monotonic rational-quadratic splines, so f⁻¹ is one pass as well.

**Where the switch enters** (:class:`SwitchedFlow`). Only the first coupling layers, nearest x,
see s; the layers after them are shared by data and MC (they see c only): f_s = G ∘ H_s. Then

    f_1⁻¹ ∘ f_0 = H_1⁻¹ ∘ G⁻¹ ∘ G ∘ H_0 = H_1⁻¹ ∘ H_0,

so the correction never evaluates G, exactly (not approximately), and costs H twice instead of
the whole flow twice. H_s maps data and MC onto one intermediate density, which G models for
both: the data/MC difference has to live in H, G carries what the samples share. H must then be
able to change how any two variables depend on each other, and a coupling layer cannot do that
for two variables it transforms together (each spline sees only the other half). So H is a
*sweep*: one coupling layer per variable, each transforming its variable given all the others,
c and s, in CQR's order; its conditioners are small, since each predicts one spline. On the
toy, H as the first pair of halves instead left H/E and the isolations (one half) correlated as
in MC (README, "One normalizing flow"). ``Settings.switch = "every-layer"`` gives the plain flow
of the paper, the switch in every layer and no G.

**Encoding.** The flow sees every variable through a fixed, invertible per-variable map
(:class:`Encoding`), fitted on the pooled training sample:

* zero-peak variables (isolations, H/E, preshower) are *dequantised*: a tail value y > 0 becomes
  v = ln(1 + y/s) (s: the pooled tail median, so heavy tails stay compact), a peak value (y = 0)
  becomes v = −w·u with u a per-object uniform on [0, 1) and w = :data:`PEAK_WIDTH`. So the
  peak is a block of v < 0 beside the tail at v > 0, and decoding maps v' ≤ 0 back to exactly
  zero: corrected isolations keep a real zero peak, with the fraction the data density gives.
  u comes from a correctionlib ``hashprng`` of (run, luminosityBlock, event, raw pT, η, φ) with a
  per-variable salt, as in CQR: results never depend on chunking, workers or selection;
* then every variable goes through its *normal scores*: the piecewise-linear map from the pooled
  empirical quantiles at the levels Φ(t_k), t_k evenly spaced on [−T, T], to t_k (continued
  linearly beyond), so that the flow works on O(1), roughly Gaussian marginals whatever the units
  (r9's low tail, a 100-fold range of isolations). T = min(4, Φ⁻¹(1 − m/n)) leaves
  m = ``Settings.tail_objects`` of the n pooled objects beyond each outer knot. A knot is an
  empirical quantile, as noisy as the few objects beyond it: with T = 4, the endcap's 129 k pooled
  probes had 4 objects beyond the outer knots and 30 beyond 3.5, the H/E knots rose from 0.18 to
  0.56 over that last half score, and the flow's correction, smooth in score, put 9 corrected
  MC photons of the demo above H/E = 0.3 where data has 2 (README, "One normalizing flow").

**Peak indicators.** How often two zero peaks coincide, P(y_a = 0, y_b = 0), is a step in the
density of the encoded features: the conditional density of a steps where b crosses the edge of
its dequantised peak. A ReLU conditioner can only approach a step by a steep ramp, and maximum
likelihood rewards the last bit of steepness little: without help, the flow moved the endcap's
coincidence of pfPhoIso03 and pfChargedIsoPFPV zeros, cov(1[a = 0], 1[b = 0]), from raw MC's
0.018 to 0.019 where data has 0.028 (with the indicators below, 0.024; README, "Peak
indicators"). So each sweep layer's conditioner also sees the indicators
1[x_j ≤ e_j] of the zero-peak variables j after its own, with e_j the peak edge
(:meth:`Encoding.peak_edges`; :class:`egproc.nsf.CouplingLayer`). The variables after layer i are
in the encoding's space when layer i runs, forward and inverse alike, so e_j is a fixed value
there; the ones before it are not (their own layers moved them), and get no indicator.

**Structure carried over from CQR.** ``pfChargedIsoWorstVtx`` is modelled as its excess over
``pfChargedIsoPFPV`` (:data:`egproc.cqr.ABOVE`) and added back, so the order holds exactly;
``esEnergyOverRawE`` is zero exactly where the corrected ``esEffSigmaRR`` is
(:data:`egproc.cqr.FOLLOWS`), and where the leader is in its tail but the follower decodes to the
peak, the follower takes the smallest tail value data had in training; each output is clamped to
the range data covered in training. The flow sees the same conditioning features as CQR
(:class:`egproc.cqr.ConditionFeatures`), clamped to the training range and standardised.

**Systematic variation (split sample)** exactly as CQR: the flow is trained on all probes and on
the halves of even and odd event numbers; up/down = nominal ± (half_a − half_b)/2 per variable
(:class:`egproc.cqr.SplitVariation`).

**Training.** One event in 20, by event number, is held out. Its loss, evaluated every
``Settings.evaluate_every`` steps, picks the weights kept, and training ends after
``Settings.patience`` evaluations without improvement: the endcap flows have about a quarter of the
barrel's probes for more variables, and trained to the full step count they overfit (the first
shipped bundle's endcap halves: 13.17 nats on training events, 14.35 on held-out data), while the
barrel's held-out loss still falls at the end.

**Export.** One TorchScript module per region and variation, with CQR's signature: float32
[pT, η_SC, φ, ρ, y_1…y_D, u_1…u_m] → [y_1'…y_D'] (one uniform per zero-peak variable, in variable
order), so bundles, processors and the engine treat both methods alike. The bundle's correctionlib
JSON holds ``flow_validity``, the ``flow_uniform_<var>`` corrections and the ρ reweighting.
:func:`reexport` writes a bundle's modules again from the weights, encoding and settings they hold,
with the current code (a faster export needs no retraining).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from egproc import bundle as bundle_format
from egproc import cqr, engine, nsf, training

__all__ = [
    "VARIABLES",
    "PEAK_WIDTH",
    "Settings",
    "Encoding",
    "SwitchedFlow",
    "FlowCorrection",
    "train_flow",
    "train",
    "correction_from_torchscript",
    "reexport",
]

#: The corrected variables per region: CQR's, in CQR's order (the flow has no chain, the order
#: only fixes the module's columns).
VARIABLES: dict[str, tuple[str, ...]] = dict(cqr.CHAINS)
#: Width of the dequantised zero peak, in the units of v = ln(1 + y/s).
PEAK_WIDTH = 1.0
#: The largest outer normal score of the encoding (module docstring, "Encoding").
SCORE_RANGE = 4.0
#: Number of context features: the CQR conditioning features and the data/MC switch.
N_CONTEXT = 8
#: Where the data/MC switch can enter the flow (``Settings.switch``).
SWITCHES = ("sweep", "every-layer")


@dataclass(frozen=True)
class Settings:
    """Flow shape and training schedule (defaults: the shipped toy bundle)."""

    #: Coupling layers of :class:`egproc.nsf.SplineFlow` (pairs over halves of the variables).
    transforms: int = 4
    #: Where the data/MC switch enters (:class:`SwitchedFlow`): "sweep", a sweep of one switched
    #: coupling layer per variable in front of the ``transforms`` layers, which are shared by data
    #: and MC and cancel out of the correction; "every-layer", each of the ``transforms`` layers
    #: (the plain flow of the paper).
    switch: str = "sweep"
    #: Hidden layer sizes of the sweep's conditioners. They run twice per variable on every
    #: corrected object, so their width sets the cost of a correction; 16 units closed the toy as
    #: 32 did (README, "Where the switch enters").
    sweep_hidden: tuple[int, ...] = (16, 16)
    #: Whether each sweep layer's conditioner also sees, for every zero-peak variable after its
    #: own, whether that variable is in its peak (module docstring, "Peak indicators"; the
    #: every-layer flow has no sweep and no indicators).
    peak_indicators: bool = True
    #: Hidden activation of the sweep's conditioners (:data:`egproc.nsf.ACTIVATIONS`): ReLU, as
    #: the correction's cost is these networks and SiLU's exponential was a third of a
    #: conditioner's time on a CPU (README, "Speed"); the shared layers keep SiLU.
    sweep_activation: str = "relu"
    bins: int = 8
    hidden: tuple[int, ...] = (64, 64)
    steps: int = 5000
    batch_size: int = 4096
    learning_rate: float = 1e-3
    #: Knots of each variable's normal-score map.
    knots: int = 81
    #: Pooled training objects beyond each outer knot of the normal-score map (module docstring,
    #: "Encoding"): the outer scores are ±min(4, Φ⁻¹(1 − m/n)).
    tail_objects: int = 100
    #: Optimiser steps between evaluations of the held-out loss; the flow returned is the one of
    #: the best evaluation (:class:`egproc.training.EarlyStopping`).
    evaluate_every: int = 250
    #: Evaluations in a row without improvement that end training early (0: run all steps).
    patience: int = 4

    def __post_init__(self) -> None:
        if self.switch not in SWITCHES:
            raise ValueError(f"switch must be one of {SWITCHES}, got {self.switch!r}")
        if self.sweep_activation not in nsf.ACTIVATIONS:
            raise ValueError(f"sweep_activation must be one of {sorted(nsf.ACTIVATIONS)}, got {self.sweep_activation!r}")
        if self.tail_objects < 1:
            raise ValueError(f"tail_objects must be at least 1, got {self.tail_objects}")


# --------------------------------------------------------------------------------------------
# Modules (all TorchScript-compatible)
# --------------------------------------------------------------------------------------------


def _piecewise_linear(values: torch.Tensor, x_knots: torch.Tensor, y_knots: torch.Tensor) -> torch.Tensor:
    """Per column j, interpolate ``values`` [n, D] through (x_knots[j], y_knots[j]) [D, K],
    continuing the outermost segments linearly."""
    n_knots = x_knots.shape[1]
    columns = values.t().contiguous()
    upper = torch.searchsorted(x_knots, columns, right=True).clamp(1, n_knots - 1)
    lower = upper - 1
    x_low, x_high = x_knots.gather(1, lower), x_knots.gather(1, upper)
    y_low, y_high = y_knots.gather(1, lower), y_knots.gather(1, upper)
    return (y_low + (columns - x_low) * (y_high - y_low) / (x_high - x_low)).t()


def _piecewise_linear_from_grid(
    values: torch.Tensor, low: float, step: float, y_knots: torch.Tensor
) -> torch.Tensor:
    """:func:`_piecewise_linear` for the x knots low + k · step, k = 0 … K − 1, shared by every
    column: the segment is found by arithmetic instead of a binary search, which took 3 % of a
    flow correction on a CPU."""
    n_knots = y_knots.shape[1]
    position = (values.t() - low) / step
    lower = position.floor().clamp(0.0, n_knots - 2.0)
    # A NaN has no segment: index 0 keeps the gather in range, and the NaN passes to the output
    # through the fraction, as through the binary search.
    index = torch.nan_to_num(lower, nan=0.0).long()
    y_low, y_high = y_knots.gather(1, index), y_knots.gather(1, index + 1)
    return (y_low + (position - lower) * (y_high - y_low)).t()


class Encoding(nn.Module):
    """Raw variables y [n, D] (with the per-object uniforms of the zero-peak ones) ↔ the flow's
    features [n, D]: dequantisation of zero peaks, then normal scores (module docstring).

    ``zero_peak`` [D] marks dequantised columns, ``tail_scales`` [D] their s (1 elsewhere),
    ``knots`` [D, K] each column's pooled quantiles in v at the levels of ``scores`` [K].
    """

    def __init__(self, zero_peak: Sequence[bool], tail_scales: Sequence[float], knots: np.ndarray, scores: np.ndarray):
        super().__init__()
        self.register_buffer("zero_peak", torch.tensor(list(zero_peak), dtype=torch.bool))
        self.register_buffer("tail_scales", torch.tensor(list(tail_scales), dtype=torch.float32))
        self.register_buffer("knots", torch.from_numpy(np.ascontiguousarray(knots, dtype=np.float32)))
        scores = np.asarray(scores, dtype=np.float64)
        steps = np.diff(scores)
        if scores.ndim != 1 or len(scores) < 2 or not np.allclose(steps, steps[0], rtol=1e-4) or steps[0] <= 0:
            raise ValueError("the normal scores must be at least two increasing, evenly spaced values")
        repeated = np.repeat(scores.astype(np.float32)[None, :], len(knots), axis=0)
        self.register_buffer("scores", torch.from_numpy(np.ascontiguousarray(repeated)))
        # Decoding finds its segment on this grid by arithmetic (:func:`_piecewise_linear_from_grid`).
        self.score_low = float(scores[0])
        self.score_step = float(steps.mean())
        self.peak_width = PEAK_WIDTH
        # The columns the uniforms belong to, in order.
        self.uniform_columns = [i for i, z in enumerate(zero_peak) if z]

    @classmethod
    def for_sample(
        cls,
        values: np.ndarray,
        zero_peak: Sequence[bool],
        uniforms: np.ndarray,
        n_knots: int,
        tail_objects: int = Settings.tail_objects,
    ) -> "Encoding":
        """Fit the tail scales and normal-score knots on a pooled sample ``values`` [n, D] with
        its uniforms [n, m]; ``tail_objects`` of the sample lie beyond each outer knot (module
        docstring, "Encoding")."""
        from scipy.special import ndtr, ndtri

        values = np.asarray(values, dtype=np.float32)
        outer_score = min(SCORE_RANGE, float(ndtri(1.0 - tail_objects / len(values))))
        if not outer_score >= 1.0:
            raise ValueError(
                f"{len(values)} pooled objects are too few for {tail_objects} beyond each outer knot of the "
                "normal-score map (the knots would not reach one standard deviation); lower tail_objects"
            )
        scales = [
            float(np.median(values[values[:, j] > 0, j])) if z and np.any(values[:, j] > 0) else 1.0
            for j, z in enumerate(zero_peak)
        ]
        scores = np.linspace(-outer_score, outer_score, n_knots)
        probe = cls(zero_peak, scales, np.tile(scores, (values.shape[1], 1)), scores)
        with torch.inference_mode():
            dequantised = probe.dequantise(torch.from_numpy(values), torch.from_numpy(np.asarray(uniforms, np.float32)))
        knots = np.quantile(dequantised.numpy().astype(np.float64), ndtr(scores), axis=0).T
        # Strictly increasing knots: a flat stretch (ties) would make the map non-invertible.
        spacing = 1e-6 * np.maximum(np.abs(knots).max(axis=1, keepdims=True), 1e-12)
        for k in range(1, knots.shape[1]):
            knots[:, k] = np.maximum(knots[:, k], knots[:, k - 1] + spacing[:, 0])
        return cls(zero_peak, scales, knots, scores)

    def peak_edges(self) -> list[float | None]:
        """Per column, the feature value at the edge of the dequantised peak (v = 0; a feature at
        or below it decodes to exactly zero), or None for a column without a zero peak."""
        with torch.inference_mode():
            edges = _piecewise_linear(torch.zeros(1, len(self.knots)), self.knots, self.scores)[0]
        return [float(edge) if peak else None for edge, peak in zip(edges.tolist(), self.zero_peak.tolist())]

    def dequantise(self, y: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        u = torch.zeros_like(y)
        for k, column in enumerate(self.uniform_columns):
            u[:, column] = uniforms[:, k]
        tail = torch.log1p(y.clamp_min(0.0) / self.tail_scales)
        peak = -self.peak_width * u
        return torch.where(self.zero_peak & (y <= 0.0), peak, torch.where(self.zero_peak, tail, y))

    def encode(self, y: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        return _piecewise_linear(self.dequantise(y, uniforms), self.knots, self.scores)

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        v = _piecewise_linear_from_grid(features, self.score_low, self.score_step, self.knots)
        tail = self.tail_scales * torch.expm1(v.clamp_min(0.0))
        return torch.where(self.zero_peak, torch.where(v > 0.0, tail, torch.zeros_like(v)), v)


class SwitchedFlow(nn.Module):
    """Conditional density of x [n, D] given context [n, C + 1] whose last column is the data/MC
    switch s: z = f(x | c, s) = G(H(x | c, s) | c) (module docstring, "Where the switch enters").

    With ``sweep``, H is one coupling layer per feature, in column order, each transforming its
    feature given all the others, c and s (conditioners of ``sweep_hidden`` units), and G is the
    ``transforms`` coupling layers of :meth:`egproc.nsf.SplineFlow.masks`, which see c only.
    ``peak_edges`` (:meth:`Encoding.peak_edges`) give each sweep layer's conditioner the peak
    indicators of the zero-peak features after its own (module docstring, "Peak indicators").
    Without ``sweep``, H is those ``transforms`` layers, each seeing s, and there is no G.
    :meth:`correct` is f⁻¹(f(x | c, 0) | c, 1) = H⁻¹(H(x | c, 0) | c, 1): G cancels.
    """

    def __init__(
        self,
        features: int,
        context: int,
        transforms: int = 4,
        bins: int = 8,
        hidden: Sequence[int] = (64, 64),
        seed: int | None = None,
        sweep: bool = True,
        sweep_hidden: Sequence[int] = (16, 16),
        sweep_activation: str = "relu",
        peak_edges: Sequence[float | None] | None = None,
    ):
        super().__init__()
        if context < 1:
            raise ValueError("the context must hold at least the switch column")
        self.features = features
        if peak_edges is not None and len(peak_edges) != features:
            raise ValueError(f"{len(peak_edges)} peak edges for {features} features")
        if sweep:
            one_each = [[j == i for j in range(features)] for i in range(features)]
            # Layer i sees the peak indicators of the features after it: those are still (forward)
            # or again (inverse) in the encoding's space, where the edge is a fixed value.
            edges = list(peak_edges or [None] * features)
            indicators = [[(j, edges[j]) for j in range(i + 1, features) if edges[j] is not None] for i in range(features)]
            self.switch = nsf.SplineFlow(
                features, context, features, bins, sweep_hidden, seed=seed, masks=one_each, activation=sweep_activation,
                indicators=indicators,
            )
        else:
            self.switch = nsf.SplineFlow(features, context, transforms, bins, hidden, seed=seed)
        # A list of none or one flow: TorchScript has no optional submodules.
        self.shared = nn.ModuleList(
            [nsf.SplineFlow(features, context - 1, transforms, bins, hidden, seed=None if seed is None else seed + 1)]
            if sweep
            else []
        )

    @torch.jit.export
    def transform(
        self, x: torch.Tensor, context: torch.Tensor, log_det: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [n, D] → (z [n, D], log |det ∂z/∂x| [n]), through every layer."""
        z, logdet = self.switch.transform(x, context, log_det)
        for shared in self.shared:
            z, shared_logdet = shared.transform(z, context[:, :-1], log_det)
            logdet = logdet + shared_logdet
        return z, logdet

    @torch.jit.export
    def inverse(self, z: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """z [n, D] → x [n, D] with f(x | c, s) = z, through every layer."""
        for shared in self.shared:
            z = shared.inverse(z, context[:, :-1])
        return self.switch.inverse(z, context)

    @torch.jit.export
    def correct(self, x: torch.Tensor, mc_context: torch.Tensor, data_context: torch.Tensor) -> torch.Tensor:
        """f⁻¹(f(x | c, s = 0) | c, s = 1) [n, D], the shared layers left out (they cancel)."""
        return self.switch.inverse(self.switch.transform(x, mc_context, False)[0], data_context)

    @torch.jit.export
    def log_prob(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """log p(x | c, s) [n]."""
        z, logdet = self.transform(x, context, True)
        return logdet - 0.5 * (z * z).sum(dim=1) - self.switch.log_normaliser

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x, context)


class FlowCorrection(nn.Module):
    """One region's complete flow correction:
    float32 [pT, η_SC, φ, ρ, y_1…y_D, u_1…u_m] → corrected [y_1…y_D] (module docstring).

    ``references`` [D]: the column a variable is modelled as an excess over, or −1;
    ``leaders`` [D]: the column whose zero peak a variable shares, or −1; ``ranges`` [D]: the data
    training range of each (excess) variable; ``follower_floor`` [D]: the smallest data tail value
    of each follower.
    """

    def __init__(
        self,
        features: cqr.ConditionFeatures,
        context_low: Sequence[float],
        context_high: Sequence[float],
        context_mean: Sequence[float],
        context_scale: Sequence[float],
        encoding: Encoding,
        flow: SwitchedFlow,
        references: Sequence[int],
        leaders: Sequence[int],
        ranges: Sequence[tuple[float, float]],
        follower_floor: Sequence[float],
    ):
        super().__init__()
        self.features = features
        for name, values in (
            ("context_low", context_low), ("context_high", context_high),
            ("context_mean", context_mean), ("context_scale", context_scale),
        ):
            self.register_buffer(name, torch.tensor(list(values), dtype=torch.float32))
        self.encoding = encoding
        self.flow = flow
        self.n_variables = len(references)
        self.references = list(references)
        self.leaders = list(leaders)
        self.lows = [float(low) for low, _ in ranges]
        self.highs = [float(high) for _, high in ranges]
        self.follower_floor = [float(f) for f in follower_floor]

    def context(self, conditions: torch.Tensor, is_data: float) -> torch.Tensor:
        """Standardised conditioning features [n, 7] of raw (pT, η_SC, φ, ρ) [n, 4], plus the
        switch column."""
        return self._switched(self._standardised(conditions), is_data)

    def _standardised(self, conditions: torch.Tensor) -> torch.Tensor:
        x = torch.clamp(self.features(conditions), self.context_low, self.context_high)
        return (x - self.context_mean) / self.context_scale

    @staticmethod
    def _switched(standardised: torch.Tensor, is_data: float) -> torch.Tensor:
        return torch.cat([standardised, torch.full_like(standardised[:, :1], is_data)], dim=1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        n_conditions = 4
        conditions = inputs[:, :n_conditions]
        raw = inputs[:, n_conditions : n_conditions + self.n_variables]
        uniforms = inputs[:, n_conditions + self.n_variables :]
        encoded = self.encoding.encode(as_modelled(raw, self.references), uniforms)
        standardised = self._standardised(conditions)
        moved = self.flow.correct(encoded, self._switched(standardised, 0.0), self._switched(standardised, 1.0))
        decoded = self.encoding.decode(moved).unbind(1)
        corrected: list[torch.Tensor] = []
        for i in range(self.n_variables):
            value = decoded[i].clamp(self.lows[i], self.highs[i])
            leader = self.leaders[i]
            if leader >= 0:
                value = torch.where(
                    corrected[leader] <= 0.0, torch.zeros_like(value), value.clamp_min(self.follower_floor[i])
                )
            reference = self.references[i]
            if reference >= 0:
                value = value + corrected[reference]
            corrected.append(value)
        return torch.stack(corrected, dim=1)


def as_modelled(raw: torch.Tensor, references: list[int]) -> torch.Tensor:
    """The variables [n, D] as the flow models them: those with a reference as their excess."""
    columns = raw.unbind(1)
    return torch.stack([columns[i] - columns[r] if r >= 0 else columns[i] for i, r in enumerate(references)], dim=1)


class _LogLikelihood(nn.Module):
    """Training view of the flow: [features | context] [n, D + C] → log p [n]."""

    def __init__(self, flow: SwitchedFlow):
        super().__init__()
        self.flow = flow

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        d = self.flow.features
        return self.flow.log_prob(rows[:, :d], rows[:, d:])


def _negative_log_likelihood(log_prob: torch.Tensor, _: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return -log_prob.mean()
    return -(weights * log_prob).sum() / weights.sum()


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _structure(variables: Sequence[str]) -> tuple[list[bool], list[int], list[int]]:
    """Zero-peak flags, references (:data:`egproc.cqr.ABOVE`) and leaders (:data:`egproc.cqr.FOLLOWS`)."""
    position = {name: i for i, name in enumerate(variables)}
    zero_peak = [v in cqr.ZERO_PEAK for v in variables]
    references = [position[cqr.ABOVE[v]] if position.get(cqr.ABOVE.get(v, ""), len(variables)) < i else -1
                  for i, v in enumerate(variables)]
    return zero_peak, references, cqr.leader_columns(variables)


def train_flow(
    data: cqr.TrainingSample,
    mc: cqr.TrainingSample,
    variables: Sequence[str],
    *,
    settings: Settings = Settings(),
    seed: int = 0,
    device: str = "cpu",
    label: str = "",
    on_step: Callable[[int], None] | None = None,
) -> tuple[FlowCorrection, dict[str, float]]:
    """Train one region's flow on data and MC probes (module docstring). Returns the correction
    (on the CPU) and training facts (steps run, the step of the weights kept, last epoch's training
    loss, held-out loss of data and MC). 1 in 20 events, by event number, is held out of training;
    their loss picks the weights (``Settings.evaluate_every``, ``Settings.patience``).
    ``on_step`` receives the number of steps just done."""
    zero_peak, references, leaders = _structure(variables)
    features = cqr.ConditionFeatures()

    def modelled(sample: cqr.TrainingSample) -> np.ndarray:
        raw = np.stack([sample.values[v] for v in variables], axis=1).astype(np.float32)
        with torch.inference_mode():
            return as_modelled(torch.from_numpy(raw), references).numpy()

    y_data, y_mc = modelled(data), modelled(mc)
    rng = np.random.default_rng(cqr._seed(seed, label, "dequantisation"))
    n_uniforms = sum(zero_peak)
    u_data = rng.random((len(data), n_uniforms), dtype=np.float32)
    u_mc = rng.random((len(mc), n_uniforms), dtype=np.float32)
    encoding = Encoding.for_sample(
        np.concatenate([y_data, y_mc]), zero_peak, np.concatenate([u_data, u_mc]), settings.knots, settings.tail_objects
    )
    with torch.inference_mode():
        x_data = features(torch.from_numpy(data.conditions)).numpy()
        x_mc = features(torch.from_numpy(mc.conditions)).numpy()
    pooled = np.concatenate([x_data, x_mc]).astype(np.float64)
    context_scale = pooled.std(axis=0)
    context_scale = np.where(context_scale > 0, context_scale, 1.0)
    flow = SwitchedFlow(
        len(variables), N_CONTEXT, settings.transforms, settings.bins, settings.hidden,
        seed=cqr._seed(seed, label, "flow"), sweep=settings.switch == "sweep", sweep_hidden=settings.sweep_hidden,
        sweep_activation=settings.sweep_activation, peak_edges=encoding.peak_edges() if settings.peak_indicators else None,
    )
    correction = FlowCorrection(
        features, pooled.min(axis=0), pooled.max(axis=0), pooled.mean(axis=0), context_scale, encoding, flow,
        references, leaders,
        ranges=[(float(y_data[:, j].min()), float(y_data[:, j].max())) for j in range(len(variables))],
        follower_floor=[
            float(y_data[y_data[:, j] > 0, j].min()) if leaders[j] >= 0 else 0.0 for j in range(len(variables))
        ],
    )

    def rows(sample: cqr.TrainingSample, y: np.ndarray, u: np.ndarray, is_data: float) -> np.ndarray:
        with torch.inference_mode():
            encoded = encoding.encode(torch.from_numpy(y), torch.from_numpy(u))
            context = correction.context(torch.from_numpy(sample.conditions), is_data)
            return torch.cat([encoded, context], dim=1).numpy()

    table = np.concatenate([rows(data, y_data, u_data, 1.0), rows(mc, y_mc, u_mc, 0.0)])
    # Each sample carries half the total weight, so that neither density is learnt at the
    # expense of the other whatever the sample sizes.
    weights = np.concatenate([data.weight / data.weight.sum(), mc.weight / mc.weight.sum()]) * len(table) / 2
    held_out = training.held_out_events(np.concatenate([data.event, mc.event]))
    train_rows = ~held_out
    epochs = training.epochs_for_steps(settings.steps, int(train_rows.sum()), settings.batch_size)
    steps_per_epoch = math.ceil(int(train_rows.sum()) / settings.batch_size)
    model = _LogLikelihood(flow)
    evaluations: list[tuple[int, float]] = []
    history = training.minimise(
        model, _negative_log_likelihood, table[train_rows], np.zeros(int(train_rows.sum()), np.float32),
        weights[train_rows], epochs=epochs, batch_size=settings.batch_size, learning_rate=settings.learning_rate,
        seed=cqr._seed(seed, label, "batches"), device=device,
        on_epoch=None if on_step is None else (lambda epoch, loss: on_step(steps_per_epoch)),
        early_stopping=training.EarlyStopping(
            table[held_out], np.zeros(int(held_out.sum()), np.float32), weights[held_out],
            every=settings.evaluate_every, patience=settings.patience or None,
        ),
        on_evaluation=lambda step, loss: evaluations.append((step, loss)),
    )
    model.cpu()
    best_step, _ = min(evaluations, key=lambda evaluation: evaluation[1])
    # The held-out rows chose the step, so their loss below is a little optimistic; with some
    # twenty evaluations of a smooth curve the bias is far below the train/held-out gaps it shows.
    facts = {"train_loss": round(history[-1], 4), "steps": evaluations[-1][0], "best_step": best_step}
    n_data = len(data)
    with torch.inference_mode():
        log_prob = model(torch.from_numpy(table[held_out])).numpy()
    is_data_row = np.arange(len(table))[held_out] < n_data
    for name, selected in (("held_out_loss_data", is_data_row), ("held_out_loss_mc", ~is_data_row)):
        w = weights[held_out][selected]
        facts[name] = round(float(-(w * log_prob[selected]).sum() / w.sum()), 4)
    return correction.eval(), facts


# --------------------------------------------------------------------------------------------
# Bundle
# --------------------------------------------------------------------------------------------


def train(
    data_files: Sequence[str | Path],
    mc_files: Sequence[str | Path],
    out: str | Path,
    *,
    settings: Settings = Settings(),
    seed: int = 0,
    device: str = "auto",
    name: str = "toy-flow",
    splits: bool = True,
    provenance: Mapping[str, Any] | None = None,
    progress: bool = True,
    concurrent: bool | None = None,
) -> Path:
    """Train the flows of EB and EE (nominal and, with ``splits``, the two halves) and write the
    bundle (module docstring); returns the folder. With ``concurrent`` (default: on a machine
    with two or more CPU threads) two flows train at a time, in threads that share torch's CPU
    threads (:func:`egproc.training.split_cpu_threads`); each flow is the same either way."""
    from tqdm.auto import tqdm

    device = engine.resolve_device(device)
    data, mc, facts = cqr.read_samples(data_files, mc_files)
    if concurrent is None:
        concurrent = torch.get_num_threads() >= 2
    workers = 2 if concurrent else 1
    flows: dict[str, dict[str, FlowCorrection]] = {r: {} for r in VARIABLES}
    timings: dict[str, float] = {}
    losses: dict[str, dict[str, float]] = {}
    # Steps are whole epochs and early stopping ends some flows short: the bar's total is an estimate.
    total = (3 if splits else 1) * len(VARIABLES) * settings.steps
    started = time.perf_counter()
    with tqdm(total=total, desc="train flow", unit="step", disable=not progress) as bar:

        def train_part(part: tuple[str, str, cqr.TrainingSample, cqr.TrainingSample]) -> None:
            variant, region, data_r, mc_r = part
            start = time.perf_counter()
            flows[region][variant], losses[f"{variant}/{region}"] = train_flow(
                data_r, mc_r, VARIABLES[region], settings=settings, seed=seed, device=device,
                label=f"{variant}/{region}", on_step=bar.update,
            )
            timings[f"{variant}/{region}"] = round(time.perf_counter() - start, 1)

        with training.split_cpu_threads(workers, device), ThreadPoolExecutor(workers, "flow-training") as pool:
            for _ in pool.map(train_part, cqr.training_parts(data, mc, splits)):
                pass  # results land in flows/losses/timings; map re-raises the first failure
    wall_seconds = round(time.perf_counter() - started, 1)

    return cqr.write_region_bundle(
        out,
        method="flow",
        title="normalizing-flow",
        name=name,
        description=(
            "One conditional neural spline flow with a data/MC switch per ECAL region: MC photon shower shapes, "
            "preshower and isolations corrected jointly, one TorchScript module per region and variation"
        ),
        variables=VARIABLES,
        exported=lambda region, variation: _exported(flows[region], variation, VARIABLES[region]),
        splits=splits,
        samples=(data_files, mc_files, data, mc, facts),
        first_salt=101,  # streams apart from CQR's salts
        uniform_purpose="zero-peak dequantisation of the flow",
        seed=seed,
        device=device,
        settings=settings,
        provenance={
            **dict(provenance or {}),
            "variables": {r: list(v) for r, v in VARIABLES.items()},
            "training_seconds": timings,
            "training_wall_seconds": wall_seconds,
            "concurrent_trainings": workers,
            "losses": losses,
        },
    )


def _exported(flows: Mapping[str, FlowCorrection], variation: str, variables: Sequence[str]) -> nn.Module:
    if variation in ("nominal", *cqr.HALVES):
        return flows[variation]
    sign = {"up": 1.0, "down": -1.0}[variation]
    zero_peak = [v in cqr.ZERO_PEAK for v in variables]
    return cqr.SplitVariation(
        flows["nominal"], flows["half_a"], flows["half_b"], sign, zero_peak, cqr.leader_columns(variables)
    )


# --------------------------------------------------------------------------------------------
# Re-export: the same weights through the current code
# --------------------------------------------------------------------------------------------


def _spline_flow_shape(flow: Any) -> dict[str, Any]:
    """The :class:`egproc.nsf.SplineFlow` settings of a scripted one (its layers' own attributes)."""
    layers = list(flow.layers.children())
    first = layers[0]
    return {
        "transforms": len(layers),
        "bins": first.bins,
        "hidden": tuple(linear.weight.shape[0] for linear in first.hidden.children()),
        "activation": first.activation.original_name.lower(),
    }


def correction_from_torchscript(module: Any) -> FlowCorrection:
    """The :class:`FlowCorrection` (eager, current code) with the weights, encoding and settings
    of a scripted one: how a flow bundle is re-exported without retraining (:func:`reexport`)."""
    if module.original_name != "FlowCorrection":
        raise TypeError(f"expected a scripted FlowCorrection, got a {module.original_name}")
    features = cqr.ConditionFeatures(module.features.supermodule_phi_offset)
    features.load_state_dict(module.features.state_dict(), strict=True)
    scripted = module.encoding
    encoding = Encoding(
        scripted.zero_peak.tolist(), scripted.tail_scales.tolist(), scripted.knots.numpy(), scripted.scores[0].double().numpy()
    )
    # The grid as exported (from the float64 scores), not as re-derived from their float32 copy.
    encoding.score_low, encoding.score_step = scripted.score_low, scripted.score_step
    switch = _spline_flow_shape(module.flow.switch)
    shared = [_spline_flow_shape(flow) for flow in module.flow.shared.children()]
    n_variables = module.n_variables
    edges: list[float | None] = [None] * n_variables
    for layer in module.flow.switch.layers.children():
        for j, threshold in zip(layer.indicator_index.tolist(), layer.indicator_threshold.tolist()):
            edges[j] = threshold
    if shared:
        flow = SwitchedFlow(
            n_variables, module.flow.switch.context, shared[0]["transforms"], switch["bins"], shared[0]["hidden"],
            sweep=True, sweep_hidden=switch["hidden"], sweep_activation=switch["activation"], peak_edges=edges,
        )
    else:
        flow = SwitchedFlow(
            n_variables, module.flow.switch.context, switch["transforms"], switch["bins"], switch["hidden"], sweep=False
        )
    # A scripted module's state also lists the derived, non-persistent buffers (the splines'
    # constant tensors), which the rebuilt layers compute themselves.
    expected = flow.state_dict().keys()
    flow.load_state_dict({k: v for k, v in module.flow.state_dict().items() if k in expected}, strict=True)
    correction = FlowCorrection(
        features, module.context_low.tolist(), module.context_high.tolist(), module.context_mean.tolist(),
        module.context_scale.tolist(), encoding, flow, list(module.references), list(module.leaders),
        list(zip(module.lows, module.highs)), list(module.follower_floor),
    )
    return correction.train(module.training)


def reexport(source: str | Path, out: str | Path | None = None, *, note: str = "") -> Path:
    """Write the flow bundle ``source`` again with its TorchScript modules rebuilt from the weights
    they hold (:func:`correction_from_torchscript`; up/down as :class:`egproc.cqr.SplitVariation`
    of the rebuilt nominal and halves) and scripted by the current code, without retraining
    (:func:`egproc.bundle.rebuild_models`). ``out`` defaults to ``source``. Returns the folder."""

    def rebuild(module: Any, step: bundle_format.TorchScriptStep) -> nn.Module:
        if module.original_name == "SplitVariation":
            variables = [output.split("_", 1)[1] for output in step.outputs]
            return _exported(
                {half: correction_from_torchscript(getattr(module, half)) for half in ("nominal", *cqr.HALVES)},
                "up" if module.sign > 0 else "down",
                variables,
            )
        return correction_from_torchscript(module)

    return bundle_format.rebuild_models(
        source, out, method="flow", rebuild=rebuild, form="egproc.flow.FlowCorrection",
        how=(
            "egproc.flow.reexport: each module rebuilt from the weights, encoding and settings in its file "
            "(egproc.flow.correction_from_torchscript) and scripted again; no retraining"
        ),
        note=note,
    )
