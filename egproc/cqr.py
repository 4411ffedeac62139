"""Chained quantile regression (CQR): MC photon shower shapes and isolations morphed onto data.

The CMS method (X. Chang et al., "Electromagnetic shower corrections in CMS", 2023; first used
with one BDT per quantile in the Run-2 H→γγ analyses, then with one quantile network per
variable). For each ECAL region (EB, EE) and each variable y_i of a fixed chain order:

* learn the conditional quantiles (the 21 levels of :data:`egproc.quantiles.LEVELS`) of y_i in data
  and in MC from x_i = [conditions, y_1, …, y_{i−1}], where the conditions are (pT, η_SC, φ, ρ)
  and the previous variables are the data values for the data model and the *already corrected*
  MC values for the MC model — so the chain trains sequentially and carries the correlations;
* correct an MC object by quantile morphing, y_i' = F_data⁻¹(F_MC(y_i | x_i) | x_i)
  (:class:`egproc.quantiles.QuantileMorph`: piecewise linear between the quantiles, the outermost
  segments continued linearly beyond 1 % and 99 %).

**Zero-peak variables** (isolations; H/E, zero without HCAL energy behind the supercluster; the
preshower variables, zero where no preshower hit) mix an
exact-zero peak with a continuous tail, and a quantile morph would smear the peak. They get the
treatment of the CMS isolation correction instead (:class:`ZeroPeakStep`): classifiers give the peak
probabilities p_d(x) of data and p_m(x) of MC, and with a per-object uniform u

* a peak object moves to the tail if p_d < p_m and u < (p_m − p_d)/p_m, with the tail value drawn
  from the data tail quantiles at v = u / ((p_m − p_d)/p_m), uniform on [0, 1) given the move;
* a tail object moves to the peak (becomes exactly 0) if p_d > p_m and u < (p_d − p_m)/(1 − p_m);
* every other tail object is morphed with tail-only quantile networks (y > 0) of data and MC,
  trained on ln y so that corrected tails stay positive; beyond the 1 % and 99 % tail quantiles
  the morph shifts ln y (scales y) by the outermost quantile difference instead of extrapolating
  the outermost segment's slope, which far out would raise y to an unconstrained power.

So the corrected peak fraction is p_d(x) exactly in expectation, peak objects stay exactly zero,
and u comes from a correctionlib ``hashprng`` of (run, luminosityBlock, event, raw pT, η, φ) and a
per-variable salt: results never depend on chunking, worker count or selection.
``esEnergyOverRawE`` is zero exactly when ``esEffSigmaRR`` is (no preshower hit), so it follows the
corrected ``esEffSigmaRR`` peak state instead of drawing its own (:class:`FollowerZeroStep`).

**Ordered variables.** ``pfChargedIsoWorstVtx`` is a maximum over vertices that include the
primary one, so it is never below ``pfChargedIsoPFPV`` (:data:`ABOVE`). Morphed on its own, it
ended below it for 1.8 % of corrected barrel photons (toy), a region data never populate and a
classifier finds at once. It is corrected as its excess d = y − y_PV instead, a zero-peak
variable (d = 0 where the primary vertex is the worst) conditioned on the corrected y_PV, and
y' = y_PV' + d'. A negative MC excess (inconsistent input) counts as the peak.

**Range.** Beyond the outermost quantiles the morph is an extrapolation, and where x is sparse the
data and MC networks can extrapolate differently: before this guard, 0.1 % of corrected toy
photons had r9 above 1 and 22 of 139 k had a charged isolation above the largest in data (up to
472 GeV from a raw 39 GeV, where the two networks' 99 % tail quantiles differed by a factor 11).
Each step's output is therefore clamped to the range its data target covered in training (for
an excess, the excess's range).

**Training.** Every network trains for a fixed number of optimiser steps (``Settings.steps``), on
all probes. With ``Settings.evaluate_every`` one event in 20, by event number, is held out instead
(:func:`egproc.training.held_out_events`, the flow's rule); its loss, evaluated every that many
steps, picks the weights kept (and ``Settings.patience`` evaluations without improvement end the
training). It is off by default. The endcap has a few tens of thousand probes, so 1000 steps of
8192 are some hundred epochs, and the MC tail network of the PV charged isolation comes out too
narrow in the sparse fake-like corner of the endcap; held-out selection fixes that corner (the
extreme corrected isolations there fall to data's level), but it made the bulk closure of the toy
worse (README, "Chained quantile regression"). The steps kept per network are in the bundle's
provenance (``best_steps``: step kept, steps run) when it is on.

**Conditioning features.** The networks see (ln pT, η_SC, |η_SC|, φ, ρ) and two distances from
the ECAL geometry: in φ to the nearest barrel super-module boundary (every 20°) and in |η| to the
nearest barrel module boundary (0.435, 0.783, 1.131): containment losses there are narrow features
that a network would otherwise have to carve out of raw φ and η. This is the role of the
``iPhi mod 20`` inputs of the CMS energy regressions.

**Systematic variation (split sample).** The only uncertainty of the method is the finite training
sample (CMS). The whole chain is trained three times: on everything (nominal) and on two disjoint
halves A (even event numbers) and B (odd). Each half-sample correction scatters around the truth
with √2 times the statistical spread σ of the full-sample one, so (y_A − y_B)/2 has spread σ, and

    up   = nominal + (y_A − y_B)/2,       down = nominal − (y_A − y_B)/2,

one coherent ±1σ nuisance per object and variable (zero-peak variables are floored at 0). The
bundle also carries ``half_a`` and ``half_b``, e.g. for the CMS recipe of ±1σ on the photon ID from
the RMS of PhoID_A − PhoID_B.

**Export.** One TorchScript module per region and variation holds the whole correction
(features, every data and MC network, the chain, the morphing and the zero-peak treatment):
float32 [pT, η_SC, φ, ρ, y_1…y_n, u_1…u_m] → [y_1'…y_n']. The bundle's correctionlib JSON holds the
per-variable uniforms, the validity range (pT, ρ; EB and EE without the transition) and the ρ
reweighting of MC used in training and in comparisons.

The module is the chain's fused form (:func:`fuse`, :class:`FusedChain`; ``up``/``down`` combine
three of them): the networks of a step read the same x, so they run as one. The MC and data
quantile networks of a step are stacked into batched matmuls in a feature-major layout (x as
[features, n], activations [2, width, n]), where the 21-wide output layer and head are as fast as
the hidden layers; the two peak classifiers are stacked row-major, their one-column output layer
per network. The tail networks of a zero-peak step only see the objects that end in the tail
(an isolation's peak objects stay exactly 0 whatever the tail quantiles), and x is one buffer that
each corrected variable is written into. Every network keeps its own clamp, standardisation and
head, with the same arithmetic, so the floats are the trained chain's (bitwise on the toy probes;
at most float32 rounding where a matmul over another number of rows rounds differently), at
about 1.5× its throughput on one CPU thread (README, "Benchmarks"). :func:`reexport` rewrites a
bundle's modules from the weights in its files, in either form, without retraining.

**Reference.** ``regressor="bdt"`` trains the original implementation (one scikit-learn quantile
BDT per level, BDT classifiers for the peaks) through the same chain, for the comparison in
``benchmarks/cqr_reference.py``; it is not exported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import queue
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import correctionlib.schemav2 as cs
import numpy as np
import torch
from torch import nn

from egproc import bundle as bundle_format
from egproc import engine, nano, probes, quantiles, reweight, training
from egproc.variables import HADRONIC, ISOLATIONS, PRESHOWER

__all__ = [
    "CHAINS",
    "CONDITIONS",
    "FOLLOWS",
    "ABOVE",
    "HALVES",
    "Settings",
    "ConditionFeatures",
    "ZeroClassifier",
    "MorphStep",
    "ZeroPeakStep",
    "FollowerZeroStep",
    "Chain",
    "SplitVariation",
    "leader_columns",
    "region_steps",
    "sample_provenance",
    "training_parts",
    "write_region_bundle",
    "FusedChain",
    "fuse",
    "chain_from_torchscript",
    "reexport",
    "TrainingSample",
    "train_chain",
    "data_side_steps",
    "read_samples",
    "train",
]

Region = Literal["EB", "EE"]

#: Chain order per region: the CMS order of shower shapes, the preshower in EE, H/E, then
#: isolations. H/E is a photon-ID input that simulation mismodels like the isolations (its zero
#: fraction and tail); left uncorrected, it carried most of the corrected ID score's remaining
#: distance to data in the endcap (``benchmarks/photon_id_inputs.py``). It precedes the isolations
#: because hadronic leakage and neutral activity in the cone share their origin.
CHAINS: dict[str, tuple[str, ...]] = {
    "EB": ("sieip", "s4", "r9", "phiWidth", "sieie", "etaWidth", "hoe",
           "pfPhoIso03", "pfChargedIsoPFPV", "pfChargedIsoWorstVtx"),
    "EE": ("sieip", "s4", "r9", "phiWidth", "sieie", "etaWidth", "esEffSigmaRR", "esEnergyOverRawE", "hoe",
           "pfPhoIso03", "pfChargedIsoPFPV", "pfChargedIsoWorstVtx"),
}
#: The raw branches the conditioning features are computed from, in the module's input order.
CONDITIONS: tuple[str, ...] = ("Photon_pt", "Photon_superclusterEta", "Photon_phi", "Rho_fixedGridRhoAll")
#: Zero-peak variables whose peak is the peak of another variable (no preshower hit: both zero).
FOLLOWS: dict[str, str] = {"esEnergyOverRawE": "esEffSigmaRR"}
#: Variables never below another by construction, corrected as their excess over it: the
#: worst-vertex isolation is a maximum over vertices that include the primary one.
ABOVE: dict[str, str] = {"pfChargedIsoWorstVtx": "pfChargedIsoPFPV"}
#: The split-sample halves: event-number parity.
HALVES: dict[str, int] = {"half_a": 0, "half_b": 1}
#: Branches the per-object uniforms hash (raw kinematics: CQR never changes them).
UNIFORM_IDENTITY: tuple[str, ...] = ("run", "luminosityBlock", "event", "Photon_pt", "Photon_eta", "Photon_phi")
ZERO_PEAK: frozenset[str] = frozenset(v.field for v in ISOLATIONS + PRESHOWER + HADRONIC)

SUPERMODULE_WIDTH = float(np.deg2rad(20.0))
MODULE_EDGES: tuple[float, ...] = (0.435, 0.783, 1.131)


@dataclass(frozen=True)
class Settings:
    """Network sizes and training schedule (defaults: the shipped toy bundle)."""

    #: Quantile networks: two layers of 16 closed the toy as well as two of 32 (``benchmarks/
    #: cqr_reference.py --hidden``; README, "Chained quantile regression") at a third of the arithmetic.
    hidden: tuple[int, ...] = (16, 16)
    #: Optimiser steps per quantile network at most, whatever the sample size
    #: (:func:`egproc.training.epochs_for_steps`).
    steps: int = 1000
    batch_size: int = 8192
    #: Peak (cosine-annealed) Adam learning rates of the three kinds of network: the quantile
    #: networks of continuous variables, the tail networks of zero-peak variables (ln y of the
    #: non-zero probes, a fraction of the sample: hundreds of epochs in 1000 steps in the endcap)
    #: and the peak classifiers. The shipped bundle used 3e-3 for all three. On independent toy
    #: samples (``benchmarks/cqr_calibration.py``) the barrel r9 data network then covers its
    #: quantiles in the (pT, |η_SC|) bins with χ²/ndf 11 (1.3–1.7 after 4000 steps, 2.0 at 1e-2),
    #: while at 1e-2 the endcap PV isolation's tail network went from 1.7 to 4.1. Continuous networks
    #: at 1e-2, retrained twice and run on two toy seeds, moved the closure within the spread between
    #: trainings (README, "Chained quantile regression"), so the defaults stay at 3e-3.
    learning_rate: float = 3e-3
    tail_learning_rate: float = 3e-3
    classifier_hidden: tuple[int, ...] = (32, 32)
    classifier_steps: int = 1000
    classifier_learning_rate: float = 3e-3
    #: BDT reference: boosting iterations per quantile / classifier.
    bdt_iterations: int = 100
    #: Optimiser steps between evaluations of the held-out loss (module docstring, "Training");
    #: each network then keeps the weights of its best evaluation. 0 (the default and the shipped
    #: bundle's setting): every network trains on all probes for its full number of steps.
    evaluate_every: int = 0
    #: With ``evaluate_every``: evaluations without improvement that end a network's training
    #: (0: never, so that every network's learning rate anneals and it keeps its best evaluation).
    patience: int = 0


# --------------------------------------------------------------------------------------------
# Modules (all TorchScript-compatible)
# --------------------------------------------------------------------------------------------


class ConditionFeatures(nn.Module):
    """(pT, η_SC, φ, ρ) [n, 4] → (ln pT, η_SC, |η_SC|, φ, Δφ_SM, Δ|η|_module, ρ) [n, 7].

    Δφ_SM is the distance to the nearest barrel super-module boundary in degrees (≈ crystals),
    Δ|η|_module the distance to the nearest barrel module boundary (module docstring).
    """

    def __init__(self, supermodule_phi_offset: float = 0.0):
        super().__init__()
        self.supermodule_phi_offset = supermodule_phi_offset
        self.supermodule_width = SUPERMODULE_WIDTH
        self.register_buffer("module_edges", torch.tensor(MODULE_EDGES, dtype=torch.float32))

    def forward(self, conditions: torch.Tensor) -> torch.Tensor:
        pt, eta, phi, rho = conditions[:, 0], conditions[:, 1], conditions[:, 2], conditions[:, 3]
        abs_eta = eta.abs()
        in_supermodules = (phi - self.supermodule_phi_offset) / self.supermodule_width
        to_boundary = (in_supermodules - torch.round(in_supermodules)).abs() * 20.0
        to_module_edge = (abs_eta.unsqueeze(1) - self.module_edges).abs().min(dim=1).values
        return torch.stack(
            [torch.log(pt.clamp_min(1.0)), eta, abs_eta, phi, to_boundary, to_module_edge, rho], dim=1
        )


class ZeroClassifier(nn.Module):
    """x [n, d] → logit of P(y in the zero peak | x), with clamping to the training range and
    standardisation inside."""

    def __init__(
        self,
        input_mean: Sequence[float],
        input_scale: Sequence[float],
        input_low: Sequence[float],
        input_high: Sequence[float],
        hidden: Sequence[int],
        seed: int,
    ):
        super().__init__()
        self.register_buffer("input_mean", torch.tensor(list(input_mean), dtype=torch.float32))
        self.register_buffer("input_scale", torch.tensor(list(input_scale), dtype=torch.float32))
        self.register_buffer("input_low", torch.tensor(list(input_low), dtype=torch.float32))
        self.register_buffer("input_high", torch.tensor(list(input_high), dtype=torch.float32))
        with training.seeded(seed):
            layers, width = quantiles.hidden_layers(len(input_mean), hidden)
            self.net = nn.Sequential(*layers, nn.Linear(width, 1))

    @classmethod
    def for_sample(cls, x: np.ndarray, hidden: Sequence[int], seed: int) -> "ZeroClassifier":
        scale = x.std(axis=0)
        return cls(x.mean(axis=0), np.where(scale > 0, scale, 1.0), x.min(axis=0), x.max(axis=0), hidden, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inside = torch.clamp(x, self.input_low, self.input_high)  # as QuantileNetwork
        return self.net((inside - self.input_mean) / self.input_scale).squeeze(1)


class MorphStep(nn.Module):
    """One continuous variable: y' = F_data⁻¹(F_MC(y | x) | x)."""

    def __init__(self, mc: nn.Module, data: nn.Module):
        super().__init__()
        self.mc = mc
        self.data = data
        self.morph = quantiles.QuantileMorph()

    def forward(self, x: torch.Tensor, y: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        return self.morph(y, self.mc(x), self.data(x))


class ZeroPeakStep(nn.Module):
    """One zero-peak variable: peak/tail migration with a per-object uniform, then a ln-y tail
    morph (module docstring). ``uniform`` is the column of this variable's uniform."""

    def __init__(self, mc_zero: nn.Module, data_zero: nn.Module, mc_tail: nn.Module, data_tail: nn.Module, uniform: int):
        super().__init__()
        self.mc_zero = mc_zero
        self.data_zero = data_zero
        self.mc_tail = mc_tail
        self.data_tail = data_tail
        self.uniform = uniform
        self.morph = quantiles.QuantileMorph(tails="shift")

    def forward(self, x: torch.Tensor, y: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        u = uniforms[:, self.uniform]
        p_mc = torch.sigmoid(self.mc_zero(x))
        p_data = torch.sigmoid(self.data_zero(x))
        in_peak = y <= 0.0
        # Probabilities of leaving the peak (where data has less of it) and of joining it.
        leave = torch.clamp((p_mc - p_data) / p_mc.clamp_min(1e-6), 0.0, 1.0)
        join = torch.clamp((p_data - p_mc) / (1.0 - p_mc).clamp_min(1e-6), 0.0, 1.0)
        moves_out = in_peak & (u < leave)
        moves_in = ~in_peak & (u < join)
        q_data = self.data_tail(x)
        tail = torch.exp(self.morph(torch.log(y.clamp_min(1e-30)), self.mc_tail(x), q_data))
        # Given a move out (u < leave), u / leave is uniform on [0, 1): it picks the tail value.
        redrawn = (u / leave.clamp_min(1e-6)).clamp(0.0, 1.0)
        drawn = torch.exp(quantiles.quantile_function(q_data, self.data_tail.levels, redrawn))
        corrected = torch.where(moves_out, drawn, tail)
        return torch.where((in_peak & ~moves_out) | moves_in, torch.zeros_like(y), corrected)


class FollowerZeroStep(nn.Module):
    """A zero-peak variable whose peak is another's (``leader``: its column of x): zero where the
    corrected leader is zero; elsewhere a ln-y tail morph, or a draw from the data tail with this
    variable's uniform where the MC value is zero but the leader moved out of its peak."""

    def __init__(self, mc_tail: nn.Module, data_tail: nn.Module, uniform: int, leader: int):
        super().__init__()
        self.mc_tail = mc_tail
        self.data_tail = data_tail
        self.uniform = uniform
        self.leader = leader
        self.morph = quantiles.QuantileMorph(tails="shift")

    def forward(self, x: torch.Tensor, y: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        q_data = self.data_tail(x)
        tail = torch.exp(self.morph(torch.log(y.clamp_min(1e-30)), self.mc_tail(x), q_data))
        drawn = torch.exp(quantiles.quantile_function(q_data, self.data_tail.levels, uniforms[:, self.uniform]))
        corrected = torch.where(y <= 0.0, drawn, tail)
        return torch.where(x[:, self.leader] <= 0.0, torch.zeros_like(y), corrected)


def chain_input(value: torch.Tensor, compressed: bool) -> torch.Tensor:
    """How a treated variable enters the later networks: zero-peak variables as ln(1 + y), whose
    heavy tails would otherwise sit tens of standard deviations out (0 stays 0)."""
    return torch.log1p(value) if compressed else value


class Chain(nn.Module):
    """One region's complete correction:
    float32 [pT, η_SC, φ, ρ, y_1…y_n, u_1…u_m] → corrected [y_1…y_n], with one uniform per zero-peak
    variable in chain order (module docstring)."""

    def __init__(
        self,
        features: ConditionFeatures,
        steps: Sequence[nn.Module],
        n_uniforms: int,
        compressed: Sequence[bool],
        references: Sequence[int] | None = None,
        ranges: Sequence[tuple[float, float]] | None = None,
    ):
        super().__init__()
        self.features = features
        self.steps = nn.ModuleList(steps)
        self.n_variables = len(steps)
        self.n_uniforms = n_uniforms
        self.compressed = list(compressed)
        # Per step, the earlier variable it is corrected as an excess over (:data:`ABOVE`), or -1.
        self.references = list(references) if references is not None else [-1] * len(steps)
        # Per step, the range its data target covered in training (module docstring, "Range").
        bounds = list(ranges) if ranges is not None else [(-math.inf, math.inf)] * len(steps)
        self.lows = [float(low) for low, _ in bounds]
        self.highs = [float(high) for _, high in bounds]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        n_conditions = 4
        x = self.features(inputs[:, :n_conditions])
        raw = inputs[:, n_conditions : n_conditions + self.n_variables]
        uniforms = inputs[:, n_conditions + self.n_variables :]
        corrected: list[torch.Tensor] = []
        for i, step in enumerate(self.steps):
            reference = self.references[i]
            if reference >= 0:
                value = step(x, raw[:, i] - raw[:, reference], uniforms)
            else:
                value = step(x, raw[:, i], uniforms)
            value = value.clamp(self.lows[i], self.highs[i])
            if reference >= 0:
                value = value + corrected[reference]
            corrected.append(value)
            x = torch.cat([x, chain_input(value, self.compressed[i]).unsqueeze(1)], dim=1)
        return torch.stack(corrected, dim=1)


class SplitVariation(nn.Module):
    """nominal ± (half A − half B)/2 per variable (module docstring); ``zero_peak`` [n_variables]
    marks the variables floored at 0, ``leaders`` [n_variables] the column whose zero peak a
    variable shares (:data:`FOLLOWS`), or −1.

    The shift acts on each variable alone, so it could break what the corrections guarantee
    jointly; that is restored afterwards: a variable with a reference (:data:`ABOVE`) stays above
    it, and a follower is zero exactly where its leader is — where the leader is in its tail but
    the shifted follower is not, the follower takes the largest of its three values, which is
    positive (one of the corrections that put the leader in its tail put the follower there too).
    Works for any module with the chain's signature and a ``references`` list.
    """

    def __init__(
        self,
        nominal: nn.Module,
        half_a: nn.Module,
        half_b: nn.Module,
        sign: float,
        zero_peak: Sequence[bool],
        leaders: Sequence[int] | None = None,
    ):
        super().__init__()
        self.nominal = nominal
        self.half_a = half_a
        self.half_b = half_b
        self.sign = sign
        self.register_buffer("zero_peak", torch.tensor(list(zero_peak), dtype=torch.bool))
        self.leaders = list(leaders) if leaders is not None else [-1] * len(zero_peak)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        nominal, half_a, half_b = self.nominal(inputs), self.half_a(inputs), self.half_b(inputs)
        shifted = nominal + self.sign * 0.5 * (half_a - half_b)
        shifted = torch.where(self.zero_peak & (shifted < 0.0), torch.zeros_like(shifted), shifted)
        columns = shifted.unbind(1)
        ordered: list[torch.Tensor] = []
        for i, column in enumerate(columns):
            leader = self.leaders[i]
            if leader >= 0:
                largest = torch.maximum(nominal[:, i], torch.maximum(half_a[:, i], half_b[:, i]))
                column = torch.where(
                    ordered[leader] <= 0.0, torch.zeros_like(column), torch.where(column > 0.0, column, largest)
                )
            reference = self.nominal.references[i]
            ordered.append(torch.maximum(column, ordered[reference]) if reference >= 0 else column)
        return torch.stack(ordered, dim=1)


def leader_columns(variables: Sequence[str]) -> list[int]:
    """Per variable, the column of the earlier variable whose zero peak it shares (:data:`FOLLOWS`), or −1."""
    position = {name: i for i, name in enumerate(variables)}
    return [position[FOLLOWS[v]] if position.get(FOLLOWS.get(v, ""), len(variables)) < i else -1
            for i, v in enumerate(variables)]


# --------------------------------------------------------------------------------------------
# Export: the fused form
# --------------------------------------------------------------------------------------------


def _stacked_layers(networks: Sequence[nn.Module]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the weights [G, out, in] and biases [G, out] of G networks with the same SiLU
    hidden layers (:func:`egproc.quantiles.hidden_layers`)."""
    linears = [[m for m in network.net if isinstance(m, nn.Linear)] for network in networks]
    shapes = {tuple(tuple(layer.weight.shape) for layer in layers) for layers in linears}
    others = {tuple(type(m) for m in network.net if not isinstance(m, nn.Linear)) for network in networks}
    if len(shapes) != 1 or others != {(nn.SiLU,) * (len(linears[0]) - 1)}:
        raise ValueError(f"only networks with the same SiLU layers can be stacked, got layer shapes {shapes}")
    return [
        (
            torch.stack([layers[k].weight.detach() for layers in linears]),
            torch.stack([layers[k].bias.detach() for layers in linears]),
        )
        for k in range(len(linears[0]))
    ]


def _stacked_inputs(module: nn.Module, networks: Sequence[nn.Module], shape: tuple[int, int, int]) -> None:
    """Each network's input clamp and standardisation, as buffers broadcasting against G stacked
    copies of x."""
    for name in ("input_low", "input_high", "input_mean", "input_scale"):
        module.register_buffer(name, torch.stack([getattr(n, name).detach() for n in networks]).reshape(shape).clone())


def _constants(tensors: Sequence[torch.Tensor]) -> nn.ParameterList:
    """Stacked weights, one per layer (a list TorchScript can iterate), not trainable."""
    return nn.ParameterList([nn.Parameter(t.contiguous(), requires_grad=False) for t in tensors])


def _standardised(
    x: torch.Tensor, low: torch.Tensor, high: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """(clamp(x, low, high) − mean) / scale, the networks' input transform, with the floats of
    torch.clamp (NaN included) at a fifth of its time with tensor bounds on CPU, and in place
    after the first operation: in a worker whose malloc returns freed memory to the system at
    once (dask's MALLOC_TRIM_THRESHOLD_), every new activation faults its pages in again."""
    h = torch.maximum(x, low)
    return torch.minimum(h, high, out=h).sub_(mean).div_(scale)


class StackedClassifiers(nn.Module):
    """G :class:`ZeroClassifier` s reading the same x [n, d], evaluated as one: logits [G, n].

    Row-major, each layer one batched matmul, except the last (one column): per network, since
    addmm takes a matrix-vector path there whose rounding no batched form reproduces, and the peak
    migration amplifies a logit's last bit (u / leave, leave a difference of probabilities)."""

    def __init__(self, classifiers: Sequence[nn.Module]):
        super().__init__()
        for classifier in classifiers:
            if not isinstance(classifier, ZeroClassifier):
                raise TypeError(f"only network classifiers can be fused, got {type(classifier).__name__}")
        layers = _stacked_layers(classifiers)
        n_inputs = layers[0][0].shape[2]
        _stacked_inputs(self, classifiers, (len(classifiers), 1, n_inputs))
        self.hidden_weights = _constants([w.transpose(1, 2) for w, _ in layers[:-1]])  # [G, in, out]
        self.hidden_biases = _constants([b.unsqueeze(1) for _, b in layers[:-1]])  # [G, 1, out]
        self.register_buffer("output_weight", layers[-1][0].contiguous())  # [G, 1, width]
        self.register_buffer("output_bias", layers[-1][1].contiguous())  # [G, 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _standardised(x.unsqueeze(0), self.input_low, self.input_high, self.input_mean, self.input_scale)
        for weight, bias in zip(self.hidden_weights, self.hidden_biases):
            h = nn.functional.silu(torch.bmm(h, weight).add_(bias), inplace=True)
        return torch.stack(
            [torch.addmm(self.output_bias[g], h[g], self.output_weight[g].t()).squeeze(1) for g in range(h.shape[0])]
        )


class StackedQuantileNetworks(nn.Module):
    """G :class:`~egproc.quantiles.QuantileNetwork` s reading the same x, evaluated as one, in the
    feature-major layout: x [d, n] → quantiles [G, K, n] (level k of network g in row [g, k]).

    With the objects along the fast axis, the narrow layers (d inputs, K = 21 outputs, the K × K
    head) run at the speed of the wide ones, and each network's clamp and standardisation
    broadcast along whole rows. The arithmetic is the network's (same products and sums, the
    median's increment written over its row instead of selected elementwise), so are the floats."""

    def __init__(self, networks: Sequence[nn.Module]):
        super().__init__()
        for network in networks:
            if not isinstance(network, quantiles.QuantileNetwork):
                raise TypeError(f"only quantile networks can be fused, got {type(network).__name__}")
        if len({(n.centre, n.min_step, tuple(n.levels.tolist())) for n in networks}) != 1:
            raise ValueError("stacked quantile networks need the same levels and step floor")
        layers = _stacked_layers(networks)
        n_inputs = layers[0][0].shape[2]
        _stacked_inputs(self, networks, (len(networks), n_inputs, 1))
        self.weights = _constants([w for w, _ in layers])  # [G, out, in]
        self.biases = _constants([b.unsqueeze(2) for _, b in layers])  # [G, out, 1]
        self.n_hidden = len(layers) - 1
        self.centre = networks[0].centre
        self.min_step = networks[0].min_step
        self.register_buffer("levels", networks[0].levels.detach().clone())
        # outwardᵀ: the head's matmul with the levels along the rows.
        self.register_buffer("inward", torch.stack([n.outward.detach().t() for n in networks]).contiguous())
        self.register_buffer("location", torch.stack([n.target_location.detach() for n in networks]).reshape(-1, 1, 1))
        self.register_buffer("scale", torch.stack([n.target_scale.detach() for n in networks]).reshape(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _standardised(x.unsqueeze(0), self.input_low, self.input_high, self.input_mean, self.input_scale)
        for k, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            h = torch.bmm(weight, h).add_(bias)
            if k < self.n_hidden:
                h = nn.functional.silu(h, inplace=True)
        increments = nn.functional.softplus(h).add_(self.min_step)
        increments[:, self.centre] = h[:, self.centre]
        return torch.bmm(self.inward, increments).mul_(self.scale).add_(self.location)


class FusedMorphStep(nn.Module):
    """:class:`MorphStep` with its MC and data networks evaluated as one; x [d, n]."""

    def __init__(self, step: MorphStep):
        super().__init__()
        self.networks = StackedQuantileNetworks([step.mc, step.data])

    def forward(self, x: torch.Tensor, y: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        q = self.networks(x)
        return quantiles.morph_columns(y, q[0], q[1], False)


class FusedZeroPeakStep(nn.Module):
    """:class:`ZeroPeakStep` with its two classifiers evaluated as one, and its two tail networks
    as one on the objects that end in the tail only (the others end at exactly 0 whatever the
    tail quantiles: most of an isolation's objects); x [d, n]."""

    def __init__(self, step: ZeroPeakStep):
        super().__init__()
        self.classifiers = StackedClassifiers([step.mc_zero, step.data_zero])
        self.tails = StackedQuantileNetworks([step.mc_tail, step.data_tail])
        self.uniform = step.uniform

    def forward(self, x: torch.Tensor, y: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        u = uniforms[:, self.uniform]
        # Row-major and contiguous, as the trained classifiers see x: the same matmul kernels.
        p = torch.sigmoid(self.classifiers(x.t().contiguous()))
        p_mc, p_data = p[0], p[1]
        in_peak = y <= 0.0
        leave = torch.clamp((p_mc - p_data) / p_mc.clamp_min(1e-6), 0.0, 1.0)
        join = torch.clamp((p_data - p_mc) / (1.0 - p_mc).clamp_min(1e-6), 0.0, 1.0)
        moves_out = in_peak & (u < leave)
        moves_in = ~in_peak & (u < join)
        rows = torch.nonzero(~((in_peak & ~moves_out) | moves_in)).squeeze(1)
        q = self.tails(x.index_select(1, rows))
        y_tail = y.index_select(0, rows)
        tail = torch.exp(quantiles.morph_columns(torch.log(y_tail.clamp_min(1e-30)), q[0], q[1], True))
        redrawn = (u.index_select(0, rows) / leave.index_select(0, rows).clamp_min(1e-6)).clamp(0.0, 1.0)
        drawn = torch.exp(quantiles.quantile_function_columns(q[1], self.tails.levels, redrawn))
        corrected = torch.where(moves_out.index_select(0, rows), drawn, tail)
        return torch.zeros_like(y).index_copy(0, rows, corrected)


class FusedFollowerZeroStep(nn.Module):
    """:class:`FollowerZeroStep` with its two tail networks evaluated as one, on the objects whose
    leader is not in its peak only; x [d, n]."""

    def __init__(self, step: FollowerZeroStep):
        super().__init__()
        self.tails = StackedQuantileNetworks([step.mc_tail, step.data_tail])
        self.uniform = step.uniform
        self.leader = step.leader

    def forward(self, x: torch.Tensor, y: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        rows = torch.nonzero(~(x[self.leader] <= 0.0)).squeeze(1)
        q = self.tails(x.index_select(1, rows))
        y_tail = y.index_select(0, rows)
        tail = torch.exp(quantiles.morph_columns(torch.log(y_tail.clamp_min(1e-30)), q[0], q[1], True))
        u = uniforms[:, self.uniform].index_select(0, rows)
        drawn = torch.exp(quantiles.quantile_function_columns(q[1], self.tails.levels, u))
        corrected = torch.where(y_tail <= 0.0, drawn, tail)
        return torch.zeros_like(y).index_copy(0, rows, corrected)


class FusedChain(nn.Module):
    """:class:`Chain` in its exported form (module docstring, "Export"): the same inputs and
    outputs, each step's networks stacked, and the networks' inputs in one feature-major buffer
    [features + variables, n] that each corrected variable is written into, instead of growing x
    by a concatenation per step."""

    def __init__(self, chain: Chain):
        super().__init__()
        fused = {MorphStep: FusedMorphStep, ZeroPeakStep: FusedZeroPeakStep, FollowerZeroStep: FusedFollowerZeroStep}
        unknown = [type(step).__name__ for step in chain.steps if type(step) not in fused]
        if unknown:
            raise TypeError(f"no fused form for steps {unknown}")
        self.features = chain.features
        self.steps = nn.ModuleList([fused[type(step)](step) for step in chain.steps])
        self.n_variables = chain.n_variables
        self.n_uniforms = chain.n_uniforms
        self.compressed = list(chain.compressed)
        self.references = list(chain.references)
        self.lows = list(chain.lows)
        self.highs = list(chain.highs)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        n_conditions = 4
        features = self.features(inputs[:, :n_conditions])
        n_features = features.shape[1]
        x = torch.cat([features.t(), features.new_empty(self.n_variables, features.shape[0])], dim=0)
        raw = inputs[:, n_conditions : n_conditions + self.n_variables]
        uniforms = inputs[:, n_conditions + self.n_variables :]
        corrected: list[torch.Tensor] = []
        for i, step in enumerate(self.steps):
            reference = self.references[i]
            if reference >= 0:
                value = step(x[: n_features + i], raw[:, i] - raw[:, reference], uniforms)
            else:
                value = step(x[: n_features + i], raw[:, i], uniforms)
            value = value.clamp(self.lows[i], self.highs[i])
            if reference >= 0:
                value = value + corrected[reference]
            corrected.append(value)
            x[n_features + i] = chain_input(value, self.compressed[i])
        return torch.stack(corrected, dim=1)


def fuse(chain: Chain) -> FusedChain:
    """The exported form of a trained chain (:class:`FusedChain`)."""
    return FusedChain(chain)


def _network(
    kind: str, state: Mapping[str, torch.Tensor], hidden: Sequence[int], centre: int | None = None,
    min_step: float | None = None,
) -> nn.Module:
    """A :class:`~egproc.quantiles.QuantileNetwork` (``kind="quantiles"``) or :class:`ZeroClassifier`
    with the buffers and weights of ``state`` (its own state_dict layout)."""
    inputs = {k: state[f"input_{k}"].tolist() for k in ("mean", "scale", "low", "high")}
    if kind == "quantiles":
        network: nn.Module = quantiles.QuantileNetwork(
            inputs["mean"], inputs["scale"], float(state["target_location"]), float(state["target_scale"]),
            levels=state["levels"].tolist(), hidden=hidden, input_low=inputs["low"], input_high=inputs["high"],
        )
        if (centre is not None and centre != network.centre) or (min_step is not None and min_step != network.min_step):
            raise ValueError(f"a quantile network with centre {centre} and step floor {min_step}: not this egproc's")
    else:
        network = ZeroClassifier(inputs["mean"], inputs["scale"], inputs["low"], inputs["high"], hidden, seed=0)
    network.load_state_dict(dict(state), strict=True)
    return network


def _network_from_torchscript(module: Any) -> nn.Module:
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    layers = sorted(int(k.split(".")[1]) for k in state if k.startswith("net.") and k.endswith(".weight"))
    hidden = [state[f"net.{k}.weight"].shape[0] for k in layers[:-1]]
    if module.original_name == "QuantileNetwork":
        return _network("quantiles", state, hidden, module.centre, module.min_step)
    if module.original_name == "ZeroClassifier":
        return _network("classifier", state, hidden)
    raise TypeError(f"no rebuild for a {module.original_name}")


def _unstacked_quantiles(module: Any) -> list[nn.Module]:
    """The networks of a scripted :class:`StackedQuantileNetworks`, unstacked."""
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    n_layers = len([k for k in state if k.startswith("weights.")])
    hidden = [state[f"weights.{k}"].shape[1] for k in range(n_layers - 1)]
    networks = []
    for g in range(state["inward"].shape[0]):
        own = {f"input_{k}": state[f"input_{k}"][g, :, 0] for k in ("mean", "scale", "low", "high")}
        own.update(levels=state["levels"], outward=state["inward"][g].t().contiguous(),
                   target_location=state["location"][g].reshape(()), target_scale=state["scale"][g].reshape(()))
        own["is_median"] = torch.arange(len(state["levels"])) == module.centre
        for k in range(n_layers):
            own[f"net.{2 * k}.weight"] = state[f"weights.{k}"][g]
            own[f"net.{2 * k}.bias"] = state[f"biases.{k}"][g, :, 0]
        networks.append(_network("quantiles", own, hidden, module.centre, module.min_step))
    return networks


def _unstacked_classifiers(module: Any) -> list[nn.Module]:
    """The classifiers of a scripted :class:`StackedClassifiers`, unstacked."""
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    n_hidden = len([k for k in state if k.startswith("hidden_weights.")])
    hidden = [state[f"hidden_weights.{k}"].shape[2] for k in range(n_hidden)]
    networks = []
    for g in range(state["output_weight"].shape[0]):
        own = {f"input_{k}": state[f"input_{k}"][g, 0] for k in ("mean", "scale", "low", "high")}
        for k in range(n_hidden):
            own[f"net.{2 * k}.weight"] = state[f"hidden_weights.{k}"][g].t().contiguous()
            own[f"net.{2 * k}.bias"] = state[f"hidden_biases.{k}"][g, 0]
        own[f"net.{2 * n_hidden}.weight"] = state["output_weight"][g]
        own[f"net.{2 * n_hidden}.bias"] = state["output_bias"][g]
        networks.append(_network("classifier", own, hidden))
    return networks


def _step_from_torchscript(step: Any) -> nn.Module:
    kind = step.original_name
    if kind in ("MorphStep", "ZeroPeakStep", "FollowerZeroStep"):
        networks = {name: _network_from_torchscript(child) for name, child in step.named_children() if name != "morph"}
    elif kind == "FusedMorphStep":
        networks = dict(zip(("mc", "data"), _unstacked_quantiles(step.networks)))
    elif kind == "FusedZeroPeakStep":
        networks = dict(zip(("mc_zero", "data_zero"), _unstacked_classifiers(step.classifiers)))
        networks.update(zip(("mc_tail", "data_tail"), _unstacked_quantiles(step.tails)))
    elif kind == "FusedFollowerZeroStep":
        networks = dict(zip(("mc_tail", "data_tail"), _unstacked_quantiles(step.tails)))
    else:
        raise TypeError(f"no rebuild for a {kind}")
    if kind.endswith("MorphStep"):
        return MorphStep(networks["mc"], networks["data"])
    if kind.endswith("ZeroPeakStep"):
        return ZeroPeakStep(
            networks["mc_zero"], networks["data_zero"], networks["mc_tail"], networks["data_tail"], uniform=step.uniform
        )
    return FollowerZeroStep(networks["mc_tail"], networks["data_tail"], uniform=step.uniform, leader=step.leader)


def chain_from_torchscript(module: Any) -> Chain:
    """The :class:`Chain` (trained form) with the weights of a TorchScript module exported from one,
    as :class:`Chain` or :class:`FusedChain`: how a bundle is re-exported without retraining
    (:func:`reexport`)."""
    if module.original_name not in ("Chain", "FusedChain"):
        raise TypeError(f"expected a scripted Chain or FusedChain, got a {module.original_name}")
    steps = [_step_from_torchscript(step) for _, step in module.steps.named_children()]
    features = ConditionFeatures(module.features.supermodule_phi_offset)
    features.load_state_dict(module.features.state_dict(), strict=True)
    return Chain(
        features, steps, n_uniforms=module.n_uniforms, compressed=list(module.compressed),
        references=list(module.references), ranges=list(zip(module.lows, module.highs)),
    )


def _module_from_torchscript(module: Any, fused: bool, variables: Sequence[str]) -> nn.Module:
    """A region and variation's module (correcting ``variables``) rebuilt from its file, fused or
    in the trained form."""
    export: Callable[[Chain], nn.Module] = fuse if fused else (lambda chain: chain)
    if module.original_name == "SplitVariation":
        chains = [export(chain_from_torchscript(getattr(module, half))) for half in ("nominal", "half_a", "half_b")]
        return SplitVariation(*chains, module.sign, module.zero_peak.tolist(), leader_columns(variables))
    return export(chain_from_torchscript(module))


def reexport(source: str | Path, out: str | Path | None = None, *, fused: bool = True, note: str = "") -> Path:
    """Write the CQR bundle ``source`` again with its TorchScript modules rebuilt from the weights
    they hold, without retraining: fused (:class:`FusedChain`, the form :func:`train` exports) or,
    with ``fused=False``, in the trained form (:class:`Chain`). ``out`` defaults to ``source``
    (replaced only once the new bundle is written and loads). The manifest keeps its steps,
    provenance and correctionlib file (same bytes); provenance gains a ``reexported`` entry with
    the previous checksums. Returns the folder."""
    def rebuild(module: Any, step: bundle_format.TorchScriptStep) -> nn.Module:
        variables = [output.split("_", 1)[1] for output in step.outputs]
        return _module_from_torchscript(module, fused, variables)

    return bundle_format.rebuild_models(
        source, out, method="cqr", rebuild=rebuild,
        form="fused (egproc.cqr.FusedChain)" if fused else "trained (egproc.cqr.Chain)",
        how=(
            "egproc.cqr.reexport: each module rebuilt from the weights in its file "
            "(egproc.cqr.chain_from_torchscript) and scripted again; no retraining"
        ),
        note=note,
    )


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class TrainingSample:
    """One region's probes of one sample: conditions [n, 4] (:data:`CONDITIONS` order), the chain
    variables, weights, and event numbers (for the split)."""

    conditions: np.ndarray
    values: dict[str, np.ndarray]
    weight: np.ndarray
    event: np.ndarray

    def __len__(self) -> int:
        return len(self.weight)

    def select(self, rows: np.ndarray) -> "TrainingSample":
        return TrainingSample(
            self.conditions[rows], {k: v[rows] for k, v in self.values.items()}, self.weight[rows], self.event[rows]
        )

    def half(self, name: str) -> "TrainingSample":
        return self.select(self.event % 2 == HALVES[name])


def _seed(seed: int, *labels: str) -> int:
    """A stable per-network seed from the run seed and the network's role."""
    return (seed * 1_000_003 + zlib.crc32("/".join(labels).encode())) % (2**31)


def _binary_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(logits, target, weight=weights, reduction="sum") / (
        weights.sum() if weights is not None else torch.tensor(float(len(target)))
    )


class _Regressors:
    """Builds and trains the per-step models: quantile networks (``nn``) or the BDT reference."""

    def __init__(self, kind: Literal["nn", "bdt"], settings: Settings, device: str, on_fit: Callable[[str], None]):
        self.kind = kind
        self.settings = settings
        self.device = device
        self.on_fit = on_fit
        #: Per network label, the optimiser step whose weights were kept (held-out loss) and the
        #: steps it ran; empty without early stopping.
        self.best_steps: dict[str, tuple[int, int]] = {}

    def _train(
        self, fit: Callable[..., Any], model: nn.Module, x: np.ndarray, y: np.ndarray, weight: np.ndarray,
        held_out: np.ndarray, steps: int, learning_rate: float, seed: int, label: str,
    ) -> None:
        """``fit(x, y, weight, **options)`` on the training rows, the held-out rows picking the
        weights when ``Settings.evaluate_every`` asks for it; the model ends on the CPU."""
        s = self.settings
        stopping = None
        if s.evaluate_every > 0 and held_out.any() and not held_out.all():
            stopping = training.EarlyStopping(
                x[held_out], y[held_out], weight[held_out], every=s.evaluate_every, patience=s.patience or None
            )
            x, y, weight = x[~held_out], y[~held_out], weight[~held_out]
        evaluations: list[tuple[int, float]] = []
        fit(
            x, y, weight,
            epochs=training.epochs_for_steps(steps, len(y), s.batch_size),
            batch_size=s.batch_size, learning_rate=learning_rate, seed=seed, device=self.device,
            early_stopping=stopping, on_evaluation=lambda step, value: evaluations.append((step, value)),
        )
        if evaluations:
            self.best_steps[label] = (min(evaluations, key=lambda e: e[1])[0], evaluations[-1][0])
        model.cpu()

    def quantiles(
        self, x: np.ndarray, y: np.ndarray, weight: np.ndarray, held_out: np.ndarray, seed: int, label: str, tail: bool = False,
    ) -> nn.Module:
        """Quantiles of y | x; ``tail``: the tail network of a zero-peak variable (its own learning rate)."""
        s = self.settings
        if self.kind == "bdt":
            model: nn.Module = _QuantileBDT(x, y, weight, s.bdt_iterations, seed)
        else:
            network = quantiles.QuantileNetwork.for_sample(x, y, hidden=s.hidden, seed=seed)
            self._train(
                functools.partial(quantiles.fit, network), network, x, y, weight, held_out, s.steps,
                s.tail_learning_rate if tail else s.learning_rate, seed, label,
            )
            model = network
        self.on_fit(label)
        return model

    def classifier(self, x: np.ndarray, is_zero: np.ndarray, weight: np.ndarray, held_out: np.ndarray, seed: int, label: str) -> nn.Module:
        s = self.settings
        if self.kind == "bdt":
            model: nn.Module = _ClassifierBDT(x, is_zero, weight, s.bdt_iterations, seed)
        else:
            model = ZeroClassifier.for_sample(x, s.classifier_hidden, seed)
            fit = functools.partial(training.minimise, model, _binary_cross_entropy)
            self._train(
                fit, model, x, is_zero.astype(np.float32), weight, held_out, s.classifier_steps,
                s.classifier_learning_rate, seed, label,
            )
        self.on_fit(label)
        return model


class _QuantileBDT(nn.Module):
    """Reference: one scikit-learn gradient-boosted quantile regressor per level; crossing
    predictions are sorted (the morphing needs ordered quantiles). Eager only."""

    def __init__(self, x: np.ndarray, y: np.ndarray, weight: np.ndarray, iterations: int, seed: int):
        from sklearn.ensemble import HistGradientBoostingRegressor

        super().__init__()
        self.register_buffer("levels", torch.tensor(quantiles.LEVELS, dtype=torch.float32))
        self.models = [
            HistGradientBoostingRegressor(loss="quantile", quantile=level, max_iter=iterations, random_state=seed).fit(
                x, y, sample_weight=weight
            )
            for level in quantiles.LEVELS
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = x.detach().cpu().numpy()
        predicted = np.sort(np.stack([m.predict(features) for m in self.models], axis=1), axis=1)
        return torch.from_numpy(predicted.astype(np.float32))


class _ClassifierBDT(nn.Module):
    """Reference: a scikit-learn gradient-boosted classifier of the zero peak (logit out)."""

    def __init__(self, x: np.ndarray, is_zero: np.ndarray, weight: np.ndarray, iterations: int, seed: int):
        from sklearn.ensemble import HistGradientBoostingClassifier

        super().__init__()
        self.model = HistGradientBoostingClassifier(max_iter=iterations, random_state=seed).fit(
            x, is_zero, sample_weight=weight
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probability = self.model.predict_proba(x.detach().cpu().numpy())[:, 1].clip(1e-7, 1 - 1e-7)
        return torch.from_numpy(np.log(probability / (1 - probability)).astype(np.float32))


def _features(conditions: np.ndarray, features: ConditionFeatures) -> np.ndarray:
    with torch.inference_mode():
        return features(torch.from_numpy(np.ascontiguousarray(conditions, dtype=np.float32))).numpy()


def _references(variables: Sequence[str]) -> list[int]:
    """Per step, the earlier variable it is corrected as an excess over (:data:`ABOVE`), or -1."""
    position = {name: i for i, name in enumerate(variables)}
    return [position[ABOVE[v]] if v in ABOVE and ABOVE[v] in position and position[ABOVE[v]] < i else -1
            for i, v in enumerate(variables)]


def _target(sample: TrainingSample, variables: Sequence[str], references: Sequence[int], i: int) -> np.ndarray:
    """What step i's models learn: the variable, or its excess over its reference."""
    name = variables[i]
    if references[i] < 0:
        return sample.values[name].astype(np.float64)
    # The excess, in float32 as the exported chain computes it.
    reference = sample.values[variables[references[i]]].astype(np.float32)
    return (sample.values[name].astype(np.float32) - reference).astype(np.float64)


def _chain_column(values: np.ndarray, name: str) -> np.ndarray:
    """A treated variable as a column of the later steps' inputs (:func:`chain_input`)."""
    with torch.inference_mode():
        return chain_input(torch.from_numpy(values.astype(np.float32)), name in ZERO_PEAK).numpy()[:, None]


def data_side_steps(
    sample: TrainingSample, variables: Sequence[str], features: ConditionFeatures | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per chain step, the inputs x and the target y of the step's data models: x is the
    conditioning features followed by data's own earlier variables (module docstring); y is the
    variable, or its excess over its :data:`ABOVE` reference (zero-peak models then take its tail
    and peak from y)."""
    references = _references(variables)
    x = _features(sample.conditions, features or ConditionFeatures())
    for i, name in enumerate(variables):
        y = _target(sample, variables, references, i)
        yield x, y
        x = np.concatenate([x, _chain_column(y, name)], axis=1)


def train_chain(
    data: TrainingSample,
    mc: TrainingSample,
    variables: Sequence[str],
    *,
    settings: Settings = Settings(),
    regressor: Literal["nn", "bdt"] = "nn",
    seed: int = 0,
    device: str = "cpu",
    label: str = "",
    on_fit: Callable[[str], None] | None = None,
    concurrent: bool | None = None,
    best_steps: dict[str, tuple[int, int]] | None = None,
) -> Chain:
    """Train one region's chain on data and MC probes (module docstring); ``on_fit`` is called with
    a label after each model, e.g. to advance a progress bar; ``best_steps``, if given, receives
    per network label the step whose weights were kept and the steps run. The chain is returned on
    the CPU.

    The data models of a step see data only (conditions and data's own earlier variables), while
    the MC models of step i need the MC corrected by steps < i, i.e. the data models before them.
    With ``concurrent`` (default: networks on a machine with two or more CPU threads) the data
    models are trained in a second thread, ahead of the MC chain, each side on half of torch's CPU
    threads: small networks gain little from a second thread within one operation, so two
    networks at a time on two cores take about the time of one. Every model has its own seed
    and batch order, so the chain does not depend on the mode beyond the last bits that thread
    counts change in a matrix product. The BDT reference always trains in turn (scikit-learn
    spreads each fit over the cores itself)."""
    features = ConditionFeatures()
    fits = _Regressors(regressor, settings, device, on_fit or (lambda _: None))
    if concurrent is None:
        concurrent = regressor == "nn" and torch.get_num_threads() >= 2
    # One uniform column per zero-peak variable, in chain order. Training draws them from numpy;
    # applied from a bundle they come from hashprng.
    zero_peak = [v for v in variables if v in ZERO_PEAK]
    uniforms_mc = np.random.default_rng(_seed(seed, label, "uniforms")).random(
        (len(mc), len(zero_peak)), dtype=np.float32
    )
    position = {name: i for i, name in enumerate(variables)}
    references = _references(variables)
    is_follower = [FOLLOWS.get(v) in position and position[FOLLOWS[v]] < i for i, v in enumerate(variables)]

    def fit_step(x: np.ndarray, y: np.ndarray, weight: np.ndarray, held_out: np.ndarray, i: int, kind: str) -> tuple[nn.Module, ...]:
        """The models of step i for one sample: quantiles, or tail quantiles and a peak classifier."""
        tag = f"{label}/{variables[i]}"
        name = "MC" if kind == "mc" else "data"
        if variables[i] not in ZERO_PEAK:
            return (fits.quantiles(x, y, weight, held_out, _seed(seed, tag, kind), f"{tag} {name} quantiles"),)
        tail = y > 0
        if not tail.any():
            raise ValueError(f"{tag}: no {name} probe has {variables[i]} > 0, so there is no tail to learn")
        tail_model = fits.quantiles(
            x[tail], np.log(y[tail]), weight[tail], held_out[tail], _seed(seed, tag, kind), f"{tag} {kind} tail quantiles",
            tail=True,
        )
        if is_follower[i]:
            return (tail_model,)
        return tail_model, fits.classifier(x, ~tail, weight, held_out, _seed(seed, tag, f"{kind} zero"), f"{tag} {kind} peak")

    held_out_data, held_out_mc = training.held_out_events(data.event), training.held_out_events(mc.event)

    def fit_data_side() -> Iterator[tuple[nn.Module, ...]]:
        for i, (x, y) in enumerate(data_side_steps(data, variables, features)):
            yield fit_step(x, y, data.weight, held_out_data, i, "data")

    x_mc = _features(mc.conditions, features)
    n_features = x_mc.shape[1]
    steps: list[nn.Module] = []
    corrected_mc: list[np.ndarray] = []
    ranges: list[tuple[float, float]] = []
    with _DataSide(fit_data_side(), concurrent and regressor == "nn", device) as data_side:
        for i, name in enumerate(variables):
            y_data, y_mc = _target(data, variables, references, i), _target(mc, variables, references, i)
            mc_models = fit_step(x_mc, y_mc, mc.weight, held_out_mc, i, "mc")
            data_models = data_side.next()
            if name not in ZERO_PEAK:
                step: nn.Module = MorphStep(mc_models[0], data_models[0])
            elif is_follower[i]:
                step = FollowerZeroStep(mc_models[0], data_models[0], uniform=zero_peak.index(name),
                                        leader=n_features + position[FOLLOWS[name]])
            else:
                step = ZeroPeakStep(mc_models[1], data_models[1], mc_models[0], data_models[0], uniform=zero_peak.index(name))
            with torch.inference_mode():
                corrected = step(
                    torch.from_numpy(x_mc.astype(np.float32)),
                    torch.from_numpy(y_mc.astype(np.float32)),
                    torch.from_numpy(uniforms_mc),
                ).numpy()
            if not np.all(np.isfinite(corrected)):
                raise RuntimeError(
                    f"{label}: the trained {name} correction gives {int((~np.isfinite(corrected)).sum())} non-finite "
                    f"values on the MC training sample; refusing to train the rest of the chain on them"
                )
            # The chain's clamp, in float32 as the exported module applies it.
            ranges.append((float(np.float32(y_data.min())), float(np.float32(y_data.max()))))
            corrected = np.clip(corrected, np.float32(ranges[-1][0]), np.float32(ranges[-1][1]))
            if references[i] >= 0:
                corrected = corrected + corrected_mc[references[i]]
            corrected_mc.append(corrected)
            steps.append(step)
            x_mc = np.concatenate([x_mc, _chain_column(corrected, name)], axis=1)
    if best_steps is not None:
        best_steps.update(fits.best_steps)
    return Chain(
        features, steps, n_uniforms=len(zero_peak), compressed=[v in ZERO_PEAK for v in variables],
        references=references, ranges=ranges,
    )


class _DataSide:
    """The data models of a chain, step by step: fitted in a second thread ahead of the caller
    (``concurrent``), or when asked for. A failure in the thread is raised by :meth:`next`."""

    def __init__(self, fitted: Iterator[tuple[nn.Module, ...]], concurrent: bool, device: str):
        self.fitted = fitted
        self.concurrent = concurrent
        self.device = device
        self.results: queue.Queue = queue.Queue()
        self.worker: threading.Thread | None = None
        self.stop = threading.Event()
        self.threads = contextlib.ExitStack()

    def __enter__(self) -> "_DataSide":
        if self.concurrent:
            self.threads.enter_context(training.split_cpu_threads(2, self.device))
            self.worker = threading.Thread(target=self._run, name="cqr-data-side", daemon=True)
            self.worker.start()
        return self

    def _run(self) -> None:
        try:
            for models in self.fitted:
                self.results.put((models, None))
                if self.stop.is_set():  # the MC side failed: no use for the rest
                    return
        except BaseException as error:  # handed to the training thread, which raises it
            self.results.put((None, error))

    def next(self) -> tuple[nn.Module, ...]:
        if not self.concurrent:
            return next(self.fitted)
        models, error = self.results.get()
        if error is not None:
            raise RuntimeError("training a data model of the chain failed") from error
        return models

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.worker is not None:
            self.worker.join()
        self.threads.close()


def models_per_chain(variables: Sequence[str]) -> int:
    """How many models :func:`train_chain` fits for a chain of ``variables`` (progress bars)."""
    count = 0
    for name in variables:
        if name not in ZERO_PEAK:
            count += 2
        else:
            count += 2 if name in FOLLOWS and FOLLOWS[name] in variables else 4
    return count


# --------------------------------------------------------------------------------------------
# Reading probes, writing the bundle
# --------------------------------------------------------------------------------------------


def read_samples(
    data_files: Sequence[str | Path], mc_files: Sequence[str | Path]
) -> tuple[dict[str, TrainingSample], dict[str, TrainingSample], dict[str, Any]]:
    """Tag-and-probe probes of data and MC per region (MC weighted by genWeight × the ρ weights),
    and the ρ reweighting as a correctionlib correction plus facts for the provenance."""
    fields = sorted({f for chain in CHAINS.values() for f in chain})
    branches = [*CONDITIONS, "event", *(f"Photon_{f}" for f in fields)]
    data = probes.read_probes(data_files, branches)
    mc = probes.read_probes(mc_files, branches)
    if data.is_mc or not mc.is_mc:
        raise ValueError("train cqr needs data files (no genWeight) and MC files (with genWeight)")
    rho_branch = CONDITIONS[3]
    weights, empty = reweight.rho_weights(data[rho_branch], mc[rho_branch], data.weight, mc.weight)
    mc_weight = mc.weight * reweight.lookup(weights, [mc[rho_branch]], [reweight.RHO_EDGES])

    def by_region(table: probes.ProbeTable, weight: np.ndarray) -> dict[str, TrainingSample]:
        conditions = np.stack([table[b] for b in CONDITIONS], axis=1).astype(np.float32)
        finite = np.all(np.isfinite(conditions), axis=1)
        for f in fields:
            finite &= np.isfinite(table[f"Photon_{f}"])
        result = {}
        for region, chain in CHAINS.items():
            rows = finite & nano.region_mask(conditions[:, 1], region)
            result[region] = TrainingSample(
                conditions[rows],
                {f: table[f"Photon_{f}"][rows].astype(np.float32) for f in chain},
                weight[rows],
                np.asarray(table["event"][rows]).astype(np.int64),
            )
        return result

    facts = {"rho_correction": reweight.rho_weight_correction(weights, empty), "data_probes": len(data), "mc_probes": len(mc)}
    return by_region(data, data.weight), by_region(mc, mc_weight), facts


def uniform_correction(
    field_name: str, salt: int, prefix: str = "cqr", purpose: str = "peak/tail migration of CQR"
) -> cs.Correction:
    """``<prefix>_uniform_<field>``: a uniform on [0, 1) per object from a hash of its identity;
    the salt (added to φ before hashing) makes each variable's stream independent of the others."""
    names = ["run", "luminosityBlock", "event", "pt", "eta", "phi"]
    types = ["int", "int", "int", "real", "real", "real"]
    return cs.Correction(
        name=f"{prefix}_uniform_{field_name}",
        description=(
            f"Per-photon uniform for the Photon_{field_name} {purpose}: hashprng of "
            f"(run, luminosityBlock, event, raw Photon_pt, Photon_eta, Photon_phi + {salt})"
        ),
        version=1,
        inputs=[cs.Variable(name=n, type=t) for n, t in zip(names, types)],
        output=cs.Variable(name="u", type="real", description="uniform on [0, 1)"),
        data=cs.Transform(
            nodetype="transform",
            input="phi",
            rule=cs.Formula(nodetype="formula", expression=f"x+{salt}", parser="TFormula", variables=["phi"]),
            content=cs.HashPRNG(nodetype="hashprng", inputs=names, distribution="stdflat"),
        ),
    )


def validity_correction(
    pt_range: tuple[float, float], rho_range: tuple[float, float], name: str = "cqr_validity", method: str = "CQR"
) -> cs.Correction:
    """``cqr_validity`` (or ``name``): 1 where the networks were trained (pT and ρ range, EB or
    EE), else 0."""
    return cs.Correction(
        name=name,
        description=(
            "1 inside the {} training domain: pt in [{:g}, {:g}) GeV, rho in [{:g}, {:g}) GeV, |superclusterEta| "
            "in EB [0, 1.4442) or EE [1.566, 2.5); 0 elsewhere (objects are passed through, flagged)"
        ).format(method, *pt_range, *rho_range),
        version=1,
        inputs=[
            cs.Variable(name="pt", type="real", description="Photon_pt (GeV)"),
            cs.Variable(name="superclusterEta", type="real", description="Photon_superclusterEta"),
            cs.Variable(name="rho", type="real", description="Rho_fixedGridRhoAll (GeV)"),
        ],
        output=cs.Variable(name="valid", type="real"),
        data=cs.Transform(
            nodetype="transform",
            input="superclusterEta",
            rule=cs.Formula(nodetype="formula", expression="abs(x)", parser="TFormula", variables=["superclusterEta"]),
            content=cs.MultiBinning(
                nodetype="multibinning",
                inputs=["pt", "superclusterEta", "rho"],
                edges=[
                    list(map(float, pt_range)),
                    [0.0, nano.ECAL_BARREL_MAX_ABS_ETA, nano.ECAL_ENDCAP_MIN_ABS_ETA, nano.ECAL_ENDCAP_MAX_ABS_ETA],
                    list(map(float, rho_range)),
                ],
                content=[1.0, 0.0, 1.0],
                flow=0.0,
            ),
        ),
    )


def _domain(samples: Sequence[TrainingSample], column: int, low: float) -> tuple[float, float]:
    """The training range of one condition, from ``low`` (the selection's threshold) to the
    rounded-up 99.95 % quantile, so that a handful of extreme probes do not stretch the domain."""
    values = np.concatenate([s.conditions[:, column] for s in samples])
    return low, float(np.ceil(np.quantile(values, 0.9995)))


def train(
    data_files: Sequence[str | Path],
    mc_files: Sequence[str | Path],
    out: str | Path,
    *,
    settings: Settings = Settings(),
    seed: int = 0,
    device: str = "auto",
    name: str = "toy-cqr",
    splits: bool = True,
    provenance: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> Path:
    """Train the CQR chains of EB and EE (nominal and, with ``splits``, the two halves) and write
    the bundle (module docstring); returns the folder."""
    from tqdm.auto import tqdm

    device = engine.resolve_device(device)
    data, mc, facts = read_samples(data_files, mc_files)
    total = (3 if splits else 1) * sum(models_per_chain(CHAINS[r]) for r in CHAINS)
    chains: dict[str, dict[str, Chain]] = {r: {} for r in CHAINS}
    timings: dict[str, float] = {}
    best_steps: dict[str, tuple[int, int]] = {}
    with tqdm(total=total, desc="train cqr", unit="model", disable=not progress) as bar:
        for variant, region, data_r, mc_r in training_parts(data, mc, splits):
            start = time.perf_counter()

            def advance(label: str) -> None:
                bar.set_postfix_str(label)
                bar.update()

            chains[region][variant] = train_chain(
                data_r, mc_r, CHAINS[region], settings=settings, seed=seed, device=device,
                label=f"{variant}/{region}", on_fit=advance, best_steps=best_steps,
            )
            timings[f"{variant}/{region}"] = round(time.perf_counter() - start, 1)

    return write_region_bundle(
        out,
        method="cqr",
        title="CQR",
        name=name,
        description=(
            "Chained quantile regression: MC photon shower shapes, preshower and isolations morphed onto data "
            "per ECAL region, one TorchScript module per region and variation"
        ),
        variables=CHAINS,
        exported=lambda region, variation: _exported(chains[region], variation, CHAINS[region]),
        splits=splits,
        samples=(data_files, mc_files, data, mc, facts),
        first_salt=1,
        uniform_purpose="peak/tail migration of CQR",
        seed=seed,
        device=device,
        settings=settings,
        provenance={
            **dict(provenance or {}),
            "chains": {r: list(v) for r, v in CHAINS.items()},
            "training_seconds": timings,
            "best_steps": {label: list(steps) for label, steps in sorted(best_steps.items())},
        },
    )


def sample_provenance(
    data_files: Sequence[str | Path],
    mc_files: Sequence[str | Path],
    data: Mapping[str, TrainingSample],
    mc: Mapping[str, TrainingSample],
    facts: Mapping[str, Any],
) -> dict[str, Any]:
    """What a per-region network bundle records of its training samples (:func:`read_samples`):
    the input files' checksums, the probe counts, the mass window and the split definition."""
    return {
        "split": "half_a: even event numbers, half_b: odd; up/down = nominal ± (half_a − half_b)/2",
        "data_files": {Path(f).name: engine.sha256_of(f) for f in data_files},
        "mc_files": {Path(f).name: engine.sha256_of(f) for f in mc_files},
        "data_probes": facts["data_probes"],
        "mc_probes": facts["mc_probes"],
        "probes_per_region": {r: {"data": len(data[r]), "mc": len(mc[r])} for r in data},
        "mass_window": list(probes.MASS_WINDOW),
    }


def training_parts(
    data: Mapping[str, TrainingSample], mc: Mapping[str, TrainingSample], splits: bool
) -> Iterator[tuple[str, str, TrainingSample, TrainingSample]]:
    """(variant, region, data probes, MC probes) of every network set a per-region bundle trains:
    all probes ("nominal") and, with ``splits``, each half of event numbers (:data:`HALVES`)."""
    for variant in ("nominal", *HALVES) if splits else ("nominal",):
        for region in data:
            data_r, mc_r = data[region], mc[region]
            if variant != "nominal":
                data_r, mc_r = data_r.half(variant), mc_r.half(variant)
            yield variant, region, data_r, mc_r


def write_region_bundle(
    out: str | Path,
    *,
    method: str,
    title: str,
    name: str,
    description: str,
    variables: Mapping[str, Sequence[str]],
    exported: Callable[[str, str], nn.Module],
    splits: bool,
    samples: tuple[Sequence[str | Path], Sequence[str | Path], Mapping[str, TrainingSample], Mapping[str, TrainingSample], Mapping[str, Any]],
    first_salt: int,
    uniform_purpose: str,
    seed: int,
    device: str,
    settings: Any,
    provenance: Mapping[str, Any],
) -> Path:
    """Write a bundle of one TorchScript module per ECAL region and variation (CQR, the flow):
    ``method`` names its files and corrections, ``title`` (e.g. "CQR") its correctionlib texts.

    The correctionlib set holds ``<method>_validity`` (the training range in pT and ρ), the
    ``<method>_uniform_<field>`` of each zero-peak variable (salts from ``first_salt`` on, so that
    methods draw independent streams) and the ρ reweighting; ``samples`` is (data files, MC files,
    data and MC probes per region, facts) as :func:`read_samples` gives them, recorded with
    :func:`sample_provenance` after ``provenance``, as are the training ``seed``, ``device`` and
    ``settings`` (the method's Settings dataclass). Returns the folder."""
    data_files, mc_files, data, mc, facts = samples
    probes_all = [*data.values(), *mc.values()]
    pt_range = _domain(probes_all, 0, low=probes.PROBE_MIN_PT)
    rho_range = _domain(probes_all, 3, low=0.0)
    zero_peak_fields = sorted({f for fields in variables.values() for f in fields if f in ZERO_PEAK})
    correction_set = cs.CorrectionSet(
        schema_version=2,
        description=f"egproc {title} correction ({name}): validity, per-photon uniforms, MC rho weights",
        corrections=[
            validity_correction(pt_range, rho_range, name=f"{method}_validity", method=title),
            *(uniform_correction(f, first_salt + k, prefix=method, purpose=uniform_purpose) for k, f in enumerate(zero_peak_fields)),
            facts["rho_correction"],
        ],
    )
    steps, models = region_steps(method, variables, exported, splits)
    return bundle_format.write(
        out,
        name=name,
        method=method,
        collection="Photon",
        description=description,
        correction_set=correction_set,
        steps=steps,
        models=models,
        event_weights=[bundle_format.EventWeight(name="rho", correction="rho_reweighting", inputs=(CONDITIONS[3],))],
        provenance={
            **provenance,
            "seed": seed,
            "device": device,
            "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(settings).items()},
            "validity": {"pt": list(pt_range), "rho": list(rho_range)},
            **sample_provenance(data_files, mc_files, data, mc, facts),
        },
    )


def region_steps(
    method: str,
    variables: Mapping[str, Sequence[str]],
    exported: Callable[[str, str], nn.Module],
    splits: bool,
) -> tuple[list[Any], dict[str, Any]]:
    """The steps and models of a bundle with one module per ECAL region and variation (CQR, the
    flow): per variation, the hashprng uniform of each zero-peak variable (correctionlib
    ``<method>_uniform_<field>``, kept internal), then per region the TorchScript module
    ``<method>_<region>_<variation>.pt`` = ``exported(region, variation)`` on
    [:data:`CONDITIONS`, the variables, their uniforms]; every step gated by ``<method>_validity``.
    Returns (steps, models by file name)."""
    zero_peak_fields = sorted({f for fields in variables.values() for f in fields if f in ZERO_PEAK})
    validity = bundle_format.Validity(correction=f"{method}_validity", inputs=(CONDITIONS[0], CONDITIONS[1], CONDITIONS[3]))
    uniform = f"{method}Uniform"
    models: dict[str, Any] = {}
    steps: list[Any] = []
    for variation in _variations(splits):
        for f in zero_peak_fields:
            regions = [r for r, fields in variables.items() if f in fields]
            steps.append(
                bundle_format.CorrectionlibStep(
                    correction=f"{method}_uniform_{f}", inputs=UNIFORM_IDENTITY, output=f"Photon_{uniform}_{f}",
                    region="EB+EE" if len(regions) == 2 else regions[0], variation=variation, keep=False,
                    validity=validity,
                )
            )
        for region, fields in variables.items():
            file_name = f"{method}_{region}_{variation}.pt"
            models[file_name] = torch.jit.script(exported(region, variation))
            steps.append(
                {
                    "kind": "torchscript",
                    "model": file_name,  # bundle.write fills in the checksum
                    "inputs": (
                        *CONDITIONS,
                        *(f"Photon_{v}" for v in fields),
                        *(f"Photon_{uniform}_{v}" for v in fields if v in ZERO_PEAK),
                    ),
                    "outputs": tuple(f"Photon_{v}" for v in fields),
                    "region": region,
                    "variation": variation,
                    "validity": validity.model_dump(),
                }
            )
    return steps, models


def _variations(splits: bool) -> tuple[str, ...]:
    return ("nominal", "up", "down", *HALVES) if splits else ("nominal",)


def _exported(chains: Mapping[str, Chain], variation: str, variables: Sequence[str]) -> nn.Module:
    if variation in ("nominal", *HALVES):
        return fuse(chains[variation])
    zero_peak = [v in ZERO_PEAK for v in variables]
    sign = {"up": 1.0, "down": -1.0}[variation]
    return SplitVariation(
        fuse(chains["nominal"]), fuse(chains["half_a"]), fuse(chains["half_b"]), sign, zero_peak, leader_columns(variables)
    )
