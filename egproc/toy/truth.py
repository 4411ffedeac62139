r"""Ground truth of the egproc toy: how data and simulation *really* look.

This module is the single place where the conditional distributions of the
e/gamma shower shapes and isolations — and the event-level conditions they
depend on — are defined, separately for **data** and for **simulation (MC)**.
Every correction method in egproc (fudge factors, chained quantile
regression, normalising flows) is later trained on samples drawn from here and
judged against a data-vs-data noise floor, so the model is deliberately *not*
easy: it is not tuned for any method to pass.

Notation
========
For one reconstructed cluster (the supercluster of an electron or a photon)
the conditioning variables are

* :math:`p_T` — generator-level transverse energy of the cluster [GeV];
* :math:`\eta_{SC}` and :math:`a = |\eta_{SC}|` — supercluster pseudorapidity;
* :math:`\phi` — azimuth of the cluster position (after bending);
* :math:`\rho` — ``Rho_fixedGridRhoAll`` of the event [GeV];
* the origin :math:`o \in \{e, \gamma, j\}` (prompt electron, prompt photon,
  jet fake) — hidden in the output files, exactly as in real data.

Reference point: :math:`p_{T,0} = 40` GeV, :math:`\rho_0 = 0`,
:math:`a_0 = 0.7` (EB) / 2.0 (EE).  The region :math:`r` is EB for
:math:`a < 1.479`, EE otherwise.  Every parameter below is a pair (EB, EE) and
exists once for prompt objects (:math:`e`, :math:`\gamma`) and once for fakes
(:math:`j`), and once for data and once for MC.

1. Showering (bremsstrahlung / conversion / irregular hadronic showers)
-----------------------------------------------------------------------
A Bernoulli flag :math:`s` with probability

.. math::
   p_e = 1 - e^{-\kappa_e t'},\qquad p_\gamma = 1 - e^{-\frac{7}{9} t'},\qquad
   p_j = 0.35 + 0.45\,(1 - e^{-t'}),

where :math:`t' = \lambda\, t(a)\,[1 - \delta\, e^{-((a - 1.6)/0.35)^2}]` is the
material budget of :func:`egproc.toy.geometry.material_budget` scaled by a
sample-specific overall factor :math:`\lambda` and a local deficit
:math:`\delta` around the EB/EE transition (the simulation is missing material
there).  :math:`s` makes :math:`R_9`, :math:`s_4`, ``phiWidth`` and the
preshower energy fraction bimodal.

2. Latent Gaussian copula
-------------------------
Fourteen latent standard normals :math:`z_k` (order :data:`LATENTS`) are
correlated through four common factors :math:`f` (order :data:`FACTORS`:
lateral spread, bremsstrahlung spread, neutral activity, charged activity):

.. math:: z = B f + \operatorname{diag}(\psi)\,\varepsilon,\qquad
          f, \varepsilon \sim \mathcal N(0, 1),\qquad
          \psi_k = \sqrt{1 - \lVert B_k \rVert^2},

so that :math:`\operatorname{corr}(z) = B B^\top + \operatorname{diag}(\psi^2)` is a valid
correlation matrix by construction.  The loading matrix :math:`B` depends on
region, origin class and sample; data and MC differ in it, so the
correlations (e.g. :math:`R_9`–:math:`\sigma_{i\eta i\eta}`,
``etaWidth``–``phiWidth``, isolation–isolation) differ between them.

3. Marginal transformations
---------------------------
A *latent-normal* variable (class :class:`LatentNormal`) is
:math:`x = T^{-1}(\mu + w z)` with

.. math::
   \mu = T(m) + \beta_{p_T} \ln\frac{p_T}{p_{T,0}} + \beta_\rho\,\rho + \beta_\eta (a - a_0)
         + s\,(\Delta_s + \beta^s_{p_T} \ln\frac{p_T}{p_{T,0}}),\qquad
   w = w_0\,(1 + s\,(\omega_s - 1)),

:math:`m` the median at the reference point, :math:`T` the transform named in
the table:

====================  =================================  ==============================
observable            construction                       :math:`T`
====================  =================================  ==============================
:math:`\ell`          :math:`E_{3\times3}/E_{5\times5}`  :math:`\ln(1-\ell)`
:math:`c`             :math:`E_{5\times5}/E_{SC}`        :math:`\ln(1-c)`
:math:`q`             :math:`E_{2\times2}/E_{3\times3}`  :math:`\operatorname{logit} q`
``r9``                :math:`\ell\,c`                    —
``s4``                :math:`q\,\ell`                    —
``sieie``             —                                  :math:`\ln`
``etaWidth``          —                                  :math:`\ln`
``phiWidth``          —                                  :math:`\ln`
``esEffSigmaRR``      preshower only                     :math:`\ln`
``esEnergyOverRawE``  preshower only                     :math:`\ln`
====================  =================================  ==============================

so ``r9`` is the product of a local compactness and a containment (which the
bremsstrahlung degrades), and ``s4`` shares the compactness but not the
containment: for showering objects ``s4`` can exceed ``r9``, as in CMS.
Detector geometry enters the locations (:mod:`egproc.toy.geometry`):

.. math::
   \mu_\ell \mathrel{+}= g\,G(\phi) + 0.5\,M(a) + 0.6\,C(a),\qquad
   \mu_c \mathrel{+}= \tfrac12 g\,G(\phi) + 1.2\,C(a),

with the barrel super-module gap profile :math:`G(\phi) = ((1+\cos 18\phi)/2)^{48}`
(containment is lost in the 18 inter-module gaps; :math:`G = 0` in EE), the
barrel module-boundary profile :math:`M(a)` and the EB/EE crack profile
:math:`C(a)`.  The compactness and containment are capped at
:math:`\ell \ge 0.05`, :math:`c \ge 0.1`.

``sieip`` (class :class:`SymmetricTail`) is symmetric around zero with a
magnitude tied to the lateral width:
:math:`\sigma_{i\eta i\phi} = \kappa\,\sigma_{i\eta i\eta}^2 \sinh(\tau\operatorname{asinh} z)\,
(1 + s(\omega_s - 1))`, where :math:`\tau > 1` fattens the tails.

Zero-inflated variables (class :class:`ZeroInflatedWeibull`) — ``hoe``,
``pfPhoIso03``, ``pfChargedIsoPFPV``, the worst-vertex candidate :math:`W` and
the (unwritten) neutral-hadron isolation — use the copula uniform
:math:`u = \Phi(z)`:

.. math::
   \pi_0 = \operatorname{sigmoid}\!\left(\alpha + \alpha_\rho\,\rho + \alpha_{p_T}\ln\frac{p_T}{p_{T,0}}\right),\quad
   x = \begin{cases} 0 & u \le \pi_0 \\
                    \lambda\,\left[-\ln\left(1 - \frac{u - \pi_0}{1 - \pi_0}\right)\right]^{1/k} & u > \pi_0
       \end{cases}

with scale :math:`\lambda = \lambda_0 + \lambda_\rho\rho + \lambda_{p_T} p_T + \lambda_{\rho/E}\,\rho/E`
(:math:`E = p_T\cosh\eta_{SC}`).  The exact-zero fraction falls and the tail
grows with :math:`\rho`; because the zero/non-zero decision is taken on the
copula coordinate, it is correlated with all other variables.  The worst-vertex
isolation is a maximum over vertices, so
``pfChargedIsoWorstVtx = max(pfChargedIsoPFPV, W)`` — never below the PV
isolation and with a smaller zero fraction.

Preshower variables are exactly zero outside :math:`1.653 < a < 2.6` (hence in
the whole barrel), and jointly zero inside it when :math:`\Phi(z_{RR}) <
\pi_{ES}` (no preshower hit).

4. Data versus simulation
-------------------------
``ShowerTruth.data()`` holds the parameters below; ``ShowerTruth.mc()`` is
obtained from it by :func:`dataclasses.replace` of exactly these entries, so
the table is exhaustive.  Prompt objects (EB, EE) unless stated:

===========================================  ================================  ===============================
quantity                                     data                              MC
===========================================  ================================  ===============================
material :math:`\lambda, \delta`             1.00, 0.00                        0.96, 0.12 (missing near EB/EE)
gap amplitude :math:`g`                      0.90                              0.55
:math:`1-\ell` median, width                 (0.045, 0.055), (0.40, 0.42)      ×0.88, ×0.90
:math:`1-\ell` :math:`\beta_{p_T}`           (−0.08, −0.06)                    (−0.10, −0.08)
:math:`1-c` showering shift                  ln(0.20/0.012), ln(0.22/0.016)    −0.105 (less brem leakage)
:math:`q` median                             (0.905, 0.895)                    (0.912, 0.903)
``sieie`` median                             (0.0088, 0.0255)                  ×(0.988, 0.975)
``sieie`` :math:`\beta_\eta`                 (0.02, −0.03)                     −0.007, −0.017
``sieie`` width, :math:`\beta_{p_T}`         (0.085, 0.095), (−0.025, −0.020)  ×0.88, (−0.022, −0.018)
``sieie`` :math:`\beta_\rho`                 (0.0010, 0.0015)                  (0.0006, 0.0010)
``sieip`` :math:`\kappa`, :math:`\tau`       (1.10, 0.45), 1.25                ×0.92, 1.15
``etaWidth`` median, :math:`\beta_\rho`      (0.0100, 0.0250), (0.006, 0.005)  ×(0.97, 0.96), (0.0045, 0.0038)
``phiWidth`` median, width                   (0.020, 0.024), (0.35, 0.33)      ×0.97, ×0.95
``phiWidth`` brem shift, :math:`\beta_\rho`  (0.92, 0.83), (0.008, 0.007)      −0.08, (0.0055, 0.005)
``hoe`` zero logit, :math:`\lambda_0`, k     (1.9, 1.4), (0.006, 0.010), 0.9   +0.25, ×0.85, 1.0
``pfPhoIso03`` zero logit                    (0.9, 0.6)                        +0.35
``pfPhoIso03`` :math:`\lambda_\rho`, k       (0.055, 0.07), 0.95               ×0.85, 1.08
``pfChargedIsoPFPV`` zero logit, scale       (1.9, 1.7), (0.6, 0.7)            +0.20, ×0.92
worst vertex :math:`\alpha_\rho`, scale ρ    −0.08, (0.06, 0.05)               −0.07, ×0.85
neutral-hadron iso zero logit                (0.6, 0.5)                        +0.20
``esEffSigmaRR`` median                      4.5                               ×0.96
``esEnergyOverRawE`` median                  0.060                             ×1.06
preshower zero probability                   0.015                             0.010
loadings, ``compact``/``sieie`` on lateral   0.55/0.60                         0.72/0.75 (r9–sieie)
loadings, ``etaWidth`` on brem               0.30                              0.15 (etaWidth–phiWidth)
loadings, isolations on activity factors     see :func:`_prompt_loadings`      ×0.8
fakes: ``hoe`` zero logit                    (−0.6, −0.9)                      +0.2
fakes: isolation scales                      see :func:`_fake_model_data`      ×0.9
fakes: ``sieie`` width                       (0.22, 0.18)                      ×0.95
===========================================  ================================  ===============================

Because the differences act on mixture fractions, exact-zero fractions, tail
shapes and correlations — not only on means and widths — a per-variable
shift-and-scale correction of the MC cannot reproduce the data.  Uncorrected MC
is clearly separable from data with all variables combined.

Event-level truth (:class:`EventTruth`) — pileup profile, :math:`\rho` response,
beam-spot width, energy scale and resolution, background normalisation,
extra-photon rate and trigger efficiency — is listed in its own docstring.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtr, ndtri

from egproc.toy.geometry import (
    EB_EE_BOUNDARY,
    crack_profile,
    in_preshower,
    material_budget,
    module_gap_profile,
    supermodule_gap_profile,
)

__all__ = [
    "AUXILIARY_VARIABLES",
    "FACTORS",
    "LATENTS",
    "SHOWER_VARIABLES",
    "ClusterKinematics",
    "EnergyResponse",
    "EventTruth",
    "GammaPileup",
    "LatentNormal",
    "LumiSectionPileup",
    "Origin",
    "OriginModel",
    "SampleTruth",
    "ShowerTruth",
    "SymmetricTail",
    "TriggerModel",
    "ZeroInflatedWeibull",
    "sample_showers",
    "showering_probability",
]

FloatArray = NDArray[np.float64]
Pair = tuple[float, float]
"""A parameter given as (barrel, endcap)."""
Loadings = tuple[tuple[float, float, float, float], ...]
"""Factor loadings, one row per entry of :data:`LATENTS`, one column per :data:`FACTORS`."""

PT_REF: Final = 40.0
ETA_REF: Final = (0.7, 2.0)

LATENTS: Final = (
    "compact",
    "contain",
    "core",
    "sieie",
    "sieip",
    "eta_width",
    "phi_width",
    "hoe",
    "iso_pho",
    "iso_chg",
    "iso_worst",
    "iso_neu",
    "es_rr",
    "es_frac",
)
"""Order of the latent Gaussian coordinates of the copula."""
FACTORS: Final = ("lateral", "brem", "neutral", "charged")
"""Common factors: lateral spread, bremsstrahlung spread, neutral and charged activity."""

SHOWER_VARIABLES: Final = (
    "r9",
    "s4",
    "sieie",
    "sieip",
    "etaWidth",
    "phiWidth",
    "hoe",
    "pfPhoIso03",
    "pfChargedIsoPFPV",
    "pfChargedIsoWorstVtx",
    "esEffSigmaRR",
    "esEnergyOverRawE",
)
"""Observables returned by :func:`sample_showers`, named as the NanoAOD ``Photon`` branches."""
AUXILIARY_VARIABLES: Final = ("pfNeutralIso03", "showering")
"""Hidden quantities also returned: neutral-hadron isolation [GeV] (enters the electron
relative isolation) and the showering flag (enters the energy resolution)."""


class Origin(IntEnum):
    """Generator-level origin of a cluster; hidden in the files, known to the toy."""

    PROMPT_ELECTRON = 0
    PROMPT_PHOTON = 1
    FAKE = 2


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class LatentNormal:
    """Parameters of :math:`x = T^{-1}(\\mu + w z)`, see the module docstring (section 3).

    ``median`` is given in natural units and transformed by the variable's :math:`T`.
    """

    median: Pair
    width: Pair
    pt_slope: Pair = (0.0, 0.0)
    rho_slope: Pair = (0.0, 0.0)
    eta_slope: Pair = (0.0, 0.0)
    shower_shift: Pair = (0.0, 0.0)
    shower_pt_slope: Pair = (0.0, 0.0)
    shower_width: Pair = (1.0, 1.0)


@dataclass(frozen=True)
class SymmetricTail:
    """``sieip`` = :math:`\\kappa\\,\\sigma_{i\\eta i\\eta}^2 \\sinh(\\tau \\operatorname{asinh} z)`.

    Multiplied by ``shower_scale`` for showering objects.
    """

    kappa: Pair
    tail: Pair
    shower_scale: Pair


@dataclass(frozen=True)
class ZeroInflatedWeibull:
    """Exact-zero peak plus Weibull tail driven by the copula uniform (module docstring, section 3).

    Units of the scales are GeV for isolations and dimensionless for H/E.
    """

    zero_logit: Pair
    zero_rho_slope: Pair
    scale: Pair
    shape: Pair
    zero_pt_slope: Pair = (0.0, 0.0)
    scale_rho: Pair = (0.0, 0.0)
    scale_pt: Pair = (0.0, 0.0)
    scale_rho_over_e: Pair = (0.0, 0.0)


@dataclass(frozen=True)
class OriginModel:
    """All conditional marginals and correlations for one origin class (prompt or fake)."""

    compact: LatentNormal
    contain: LatentNormal
    core: LatentNormal
    sieie: LatentNormal
    sieip: SymmetricTail
    eta_width: LatentNormal
    phi_width: LatentNormal
    hoe: ZeroInflatedWeibull
    iso_pho: ZeroInflatedWeibull
    iso_chg: ZeroInflatedWeibull
    iso_worst: ZeroInflatedWeibull
    iso_neu: ZeroInflatedWeibull
    es_rr: LatentNormal
    es_frac: LatentNormal
    es_zero: float
    loadings_eb: Loadings
    loadings_ee: Loadings

    def __post_init__(self) -> None:
        for loadings in (self.loadings_eb, self.loadings_ee):
            matrix = np.asarray(loadings, dtype=np.float64)
            if matrix.shape != (len(LATENTS), len(FACTORS)):
                raise ValueError(f"loadings must have shape {(len(LATENTS), len(FACTORS))}, got {matrix.shape}")
            if np.any(np.sum(matrix**2, axis=1) >= 1.0):
                raise ValueError("each loading row must have squared norm < 1 (positive idiosyncratic variance)")


def _scale(pair: Pair, factor: float | Pair) -> Pair:
    f = (factor, factor) if isinstance(factor, float) else factor
    return (pair[0] * f[0], pair[1] * f[1])


def _shift(pair: Pair, delta: float | Pair) -> Pair:
    d = (delta, delta) if isinstance(delta, float) else delta
    return (pair[0] + d[0], pair[1] + d[1])


def _scale_rows(loadings: Loadings, rows: tuple[str, ...], columns: tuple[int, ...], factor: float) -> Loadings:
    out = [list(row) for row in loadings]
    for name in rows:
        for col in columns:
            out[LATENTS.index(name)][col] *= factor
    return tuple((r[0], r[1], r[2], r[3]) for r in out)


def _set_loading(loadings: Loadings, row: str, column: str, value: float) -> Loadings:
    out = [list(r) for r in loadings]
    out[LATENTS.index(row)][FACTORS.index(column)] = value
    return tuple((r[0], r[1], r[2], r[3]) for r in out)


def _prompt_loadings(region: Literal["EB", "EE"]) -> Loadings:
    """Data loadings for prompt electrons/photons.

    Columns: lateral, brem, neutral, charged.  Signs follow the transforms: a
    large ``compact`` latent means a *less* compact core, a large ``core``
    latent a *more* peaked 2x2, hence its negative lateral loading.
    """
    ee = region == "EE"
    return (
        (0.55, 0.15, 0.05, 0.00),  # compact   ln(1 - E3x3/E5x5)
        (0.10, 0.65, 0.05, 0.00),  # contain   ln(1 - E5x5/E_SC)
        (-0.45, 0.00, 0.00, 0.00),  # core     logit(E2x2/E3x3)
        (0.60, 0.05, 0.05, 0.00),  # sieie
        (0.00, 0.00, 0.00, 0.00),  # sieip (symmetric: no factor)
        (0.45, 0.30, 0.20, 0.00),  # etaWidth
        (0.10, 0.65, 0.20, 0.00),  # phiWidth
        (0.15, 0.05, 0.35, 0.10),  # hoe
        (0.05, 0.10, 0.55, 0.25),  # pfPhoIso03
        (0.00, 0.05, 0.20, 0.55),  # pfChargedIsoPFPV
        (0.00, 0.00, 0.25, 0.35),  # worst-vertex candidate
        (0.05, 0.00, 0.50, 0.20),  # neutral-hadron iso
        (0.45 if ee else 0.0, 0.15 if ee else 0.0, 0.10 if ee else 0.0, 0.00),  # esEffSigmaRR
        (0.40 if ee else 0.0, 0.30 if ee else 0.0, 0.05 if ee else 0.0, 0.00),  # esEnergyOverRawE
    )


def _fake_loadings(region: Literal["EB", "EE"]) -> Loadings:
    """Loadings for jet fakes: a hadronic jet makes widths and all isolations move together."""
    ee = region == "EE"
    return (
        (0.60, 0.20, 0.15, 0.05),
        (0.20, 0.60, 0.15, 0.05),
        (-0.50, 0.00, -0.10, 0.00),
        (0.60, 0.10, 0.25, 0.10),
        (0.00, 0.00, 0.00, 0.00),
        (0.45, 0.30, 0.30, 0.10),
        (0.15, 0.60, 0.30, 0.10),
        (0.20, 0.05, 0.55, 0.20),
        (0.15, 0.05, 0.65, 0.40),
        (0.10, 0.05, 0.40, 0.65),
        (0.00, 0.00, 0.25, 0.35),
        (0.15, 0.00, 0.65, 0.35),
        (0.50 if ee else 0.0, 0.15 if ee else 0.0, 0.20 if ee else 0.0, 0.00),
        (0.30 if ee else 0.0, 0.30 if ee else 0.0, 0.10 if ee else 0.0, 0.00),
    )


def _prompt_model_data() -> OriginModel:
    return OriginModel(
        compact=LatentNormal(
            median=(0.045, 0.055),
            width=(0.40, 0.42),
            pt_slope=(-0.08, -0.06),
            rho_slope=(0.004, 0.004),
            eta_slope=(0.05, 0.08),
            shower_shift=(0.25, 0.20),
            shower_width=(1.1, 1.1),
        ),
        contain=LatentNormal(
            median=(0.012, 0.016),
            width=(0.55, 0.55),
            pt_slope=(-0.10, -0.10),
            rho_slope=(0.006, 0.006),
            eta_slope=(0.10, 0.05),
            shower_shift=(float(np.log(0.20 / 0.012)), float(np.log(0.22 / 0.016))),
            shower_pt_slope=(-0.10, -0.10),
            shower_width=(0.85, 0.85),
        ),
        core=LatentNormal(
            median=(0.905, 0.895),
            width=(0.40, 0.42),
            pt_slope=(0.05, 0.05),
            shower_shift=(-0.15, -0.15),
        ),
        sieie=LatentNormal(
            median=(0.0088, 0.0255),
            width=(0.085, 0.095),
            pt_slope=(-0.025, -0.020),
            rho_slope=(0.0010, 0.0015),
            eta_slope=(0.02, -0.03),
            shower_shift=(0.03, 0.02),
            shower_width=(1.15, 1.15),
        ),
        sieip=SymmetricTail(kappa=(1.10, 0.45), tail=(1.25, 1.25), shower_scale=(1.3, 1.3)),
        eta_width=LatentNormal(
            median=(0.0100, 0.0250),
            width=(0.17, 0.15),
            pt_slope=(-0.05, -0.05),
            rho_slope=(0.006, 0.005),
            eta_slope=(0.05, -0.05),
            shower_shift=(0.10, 0.08),
        ),
        phi_width=LatentNormal(
            median=(0.020, 0.024),
            width=(0.35, 0.33),
            pt_slope=(-0.06, -0.06),
            rho_slope=(0.008, 0.007),
            eta_slope=(0.05, 0.0),
            shower_shift=(float(np.log(0.050 / 0.020)), float(np.log(0.055 / 0.024))),
            shower_pt_slope=(-0.15, -0.12),
            shower_width=(1.3, 1.35),
        ),
        hoe=ZeroInflatedWeibull(
            zero_logit=(1.9, 1.4),
            zero_rho_slope=(-0.06, -0.07),
            scale=(0.006, 0.010),
            shape=(0.9, 0.9),
            scale_rho_over_e=(0.012, 0.020),
        ),
        iso_pho=ZeroInflatedWeibull(
            zero_logit=(0.9, 0.6),
            zero_rho_slope=(-0.045, -0.05),
            scale=(0.9, 1.1),
            shape=(0.95, 0.95),
            scale_rho=(0.055, 0.07),
            scale_pt=(0.004, 0.006),
        ),
        iso_chg=ZeroInflatedWeibull(
            zero_logit=(1.9, 1.7),
            zero_rho_slope=(-0.012, -0.015),
            scale=(0.6, 0.7),
            shape=(0.85, 0.85),
            scale_rho=(0.010, 0.012),
            scale_pt=(0.003, 0.003),
        ),
        iso_worst=ZeroInflatedWeibull(
            zero_logit=(1.2, 1.5),
            zero_rho_slope=(-0.08, -0.08),
            scale=(0.8, 0.7),
            shape=(1.3, 1.3),
            scale_rho=(0.06, 0.05),
        ),
        iso_neu=ZeroInflatedWeibull(
            zero_logit=(0.6, 0.5),
            zero_rho_slope=(-0.05, -0.05),
            scale=(0.6, 0.7),
            shape=(1.0, 1.0),
            scale_rho=(0.04, 0.05),
            scale_pt=(0.003, 0.004),
        ),
        es_rr=LatentNormal(median=(4.5, 4.5), width=(0.30, 0.30), pt_slope=(-0.05, -0.05), shower_shift=(0.15, 0.15)),
        es_frac=LatentNormal(
            median=(0.060, 0.060), width=(0.45, 0.45), pt_slope=(-0.15, -0.15), shower_shift=(0.26, 0.26)
        ),
        es_zero=0.015,
        loadings_eb=_prompt_loadings("EB"),
        loadings_ee=_prompt_loadings("EE"),
    )


def _fake_model_data() -> OriginModel:
    return OriginModel(
        compact=LatentNormal(
            median=(0.13, 0.15), width=(0.55, 0.55), pt_slope=(-0.05, -0.05), shower_shift=(0.30, 0.30)
        ),
        contain=LatentNormal(
            median=(0.08, 0.09),
            width=(0.60, 0.60),
            pt_slope=(-0.05, -0.05),
            rho_slope=(0.006, 0.006),
            shower_shift=(float(np.log(0.30 / 0.08)), float(np.log(0.30 / 0.09))),
            shower_width=(0.9, 0.9),
        ),
        core=LatentNormal(median=(0.86, 0.85), width=(0.50, 0.50), shower_shift=(-0.20, -0.20)),
        sieie=LatentNormal(
            median=(0.0118, 0.0310),
            width=(0.22, 0.18),
            pt_slope=(-0.06, -0.05),
            rho_slope=(0.002, 0.002),
            shower_shift=(0.08, 0.08),
        ),
        sieip=SymmetricTail(kappa=(1.6, 0.7), tail=(1.35, 1.35), shower_scale=(1.2, 1.2)),
        eta_width=LatentNormal(
            median=(0.0135, 0.031), width=(0.28, 0.22), rho_slope=(0.006, 0.005), shower_shift=(0.12, 0.12)
        ),
        phi_width=LatentNormal(
            median=(0.030, 0.035),
            width=(0.45, 0.45),
            pt_slope=(-0.08, -0.08),
            rho_slope=(0.008, 0.008),
            shower_shift=(float(np.log(2.0)), float(np.log(2.0))),
        ),
        hoe=ZeroInflatedWeibull(
            zero_logit=(-0.6, -0.9),
            zero_rho_slope=(-0.03, -0.03),
            scale=(0.05, 0.07),
            shape=(0.8, 0.8),
            scale_rho_over_e=(0.02, 0.03),
        ),
        iso_pho=ZeroInflatedWeibull(
            zero_logit=(-1.8, -1.8),
            zero_rho_slope=(-0.02, -0.02),
            zero_pt_slope=(-0.5, -0.5),
            scale=(2.5, 2.8),
            shape=(1.2, 1.2),
            scale_rho=(0.06, 0.07),
            scale_pt=(0.18, 0.20),
        ),
        iso_chg=ZeroInflatedWeibull(
            zero_logit=(-2.0, -1.8),
            zero_rho_slope=(-0.01, -0.01),
            zero_pt_slope=(-0.6, -0.6),
            scale=(3.0, 3.0),
            shape=(1.1, 1.1),
            scale_rho=(0.015, 0.015),
            scale_pt=(0.22, 0.20),
        ),
        iso_worst=ZeroInflatedWeibull(
            zero_logit=(1.2, 1.5),
            zero_rho_slope=(-0.08, -0.08),
            scale=(0.8, 0.7),
            shape=(1.3, 1.3),
            scale_rho=(0.06, 0.05),
        ),
        iso_neu=ZeroInflatedWeibull(
            zero_logit=(-1.2, -1.2),
            zero_rho_slope=(-0.03, -0.03),
            scale=(2.0, 2.2),
            shape=(1.1, 1.1),
            scale_rho=(0.05, 0.05),
            scale_pt=(0.10, 0.10),
        ),
        es_rr=LatentNormal(median=(6.5, 6.5), width=(0.35, 0.35), shower_shift=(0.10, 0.10)),
        es_frac=LatentNormal(median=(0.045, 0.045), width=(0.55, 0.55)),
        es_zero=0.03,
        loadings_eb=_fake_loadings("EB"),
        loadings_ee=_fake_loadings("EE"),
    )


def _prompt_model_mc(data: OriginModel) -> OriginModel:
    loadings_eb = data.loadings_eb
    loadings_eb = _set_loading(loadings_eb, "compact", "lateral", 0.72)
    loadings_eb = _set_loading(loadings_eb, "sieie", "lateral", 0.75)
    loadings_eb = _set_loading(loadings_eb, "eta_width", "brem", 0.15)
    loadings_ee = data.loadings_ee
    loadings_ee = _set_loading(loadings_ee, "compact", "lateral", 0.72)
    loadings_ee = _set_loading(loadings_ee, "sieie", "lateral", 0.75)
    loadings_ee = _set_loading(loadings_ee, "eta_width", "brem", 0.15)
    isolations = ("hoe", "iso_pho", "iso_chg", "iso_worst", "iso_neu")
    loadings_eb = _scale_rows(loadings_eb, isolations, (2, 3), 0.8)
    loadings_ee = _scale_rows(loadings_ee, isolations, (2, 3), 0.8)
    return replace(
        data,
        compact=replace(
            data.compact,
            median=_scale(data.compact.median, 0.88),
            width=_scale(data.compact.width, 0.90),
            pt_slope=(-0.10, -0.08),
        ),
        contain=replace(data.contain, shower_shift=_shift(data.contain.shower_shift, float(np.log(0.9)))),
        core=replace(data.core, median=(0.912, 0.903)),
        sieie=replace(
            data.sieie,
            median=_scale(data.sieie.median, (0.988, 0.975)),
            width=_scale(data.sieie.width, 0.88),
            eta_slope=_shift(data.sieie.eta_slope, (-0.007, -0.017)),
            pt_slope=(-0.022, -0.018),
            rho_slope=(0.0006, 0.0010),
        ),
        sieip=replace(data.sieip, kappa=_scale(data.sieip.kappa, 0.92), tail=(1.15, 1.15)),
        eta_width=replace(
            data.eta_width, median=_scale(data.eta_width.median, (0.97, 0.96)), rho_slope=(0.0045, 0.0038)
        ),
        phi_width=replace(
            data.phi_width,
            median=_scale(data.phi_width.median, 0.97),
            width=_scale(data.phi_width.width, 0.95),
            shower_shift=_shift(data.phi_width.shower_shift, -0.08),
            rho_slope=(0.0055, 0.005),
        ),
        hoe=replace(
            data.hoe, zero_logit=_shift(data.hoe.zero_logit, 0.25), scale=_scale(data.hoe.scale, 0.85), shape=(1.0, 1.0)
        ),
        iso_pho=replace(
            data.iso_pho,
            zero_logit=_shift(data.iso_pho.zero_logit, 0.35),
            scale_rho=_scale(data.iso_pho.scale_rho, 0.85),
            shape=(1.08, 1.08),
        ),
        iso_chg=replace(
            data.iso_chg, zero_logit=_shift(data.iso_chg.zero_logit, 0.20), scale=_scale(data.iso_chg.scale, 0.92)
        ),
        iso_worst=replace(
            data.iso_worst, zero_rho_slope=(-0.07, -0.07), scale_rho=_scale(data.iso_worst.scale_rho, 0.85)
        ),
        iso_neu=replace(data.iso_neu, zero_logit=_shift(data.iso_neu.zero_logit, 0.20)),
        es_rr=replace(data.es_rr, median=_scale(data.es_rr.median, 0.96)),
        es_frac=replace(data.es_frac, median=_scale(data.es_frac.median, 1.06)),
        es_zero=0.010,
        loadings_eb=loadings_eb,
        loadings_ee=loadings_ee,
    )


def _fake_model_mc(data: OriginModel) -> OriginModel:
    def softer(spec: ZeroInflatedWeibull) -> ZeroInflatedWeibull:
        # Jet fragmentation in the simulation gives 10% less activity around the candidate.
        return replace(spec, scale=_scale(spec.scale, 0.9), scale_pt=_scale(spec.scale_pt, 0.9))

    return replace(
        data,
        hoe=replace(data.hoe, zero_logit=_shift(data.hoe.zero_logit, 0.2)),
        iso_pho=softer(data.iso_pho),
        iso_chg=softer(data.iso_chg),
        iso_neu=softer(data.iso_neu),
        sieie=replace(data.sieie, width=_scale(data.sieie.width, 0.95)),
    )


@dataclass(frozen=True)
class ShowerTruth:
    """Complete parameter set of the shower-shape/isolation model of one sample kind.

    Use :meth:`data` or :meth:`mc`; the difference between the two is the
    mismodelling table of the module docstring.
    """

    name: str
    prompt: OriginModel
    fake: OriginModel
    material_scale: float
    """Overall scale :math:`\\lambda` of the tracker material budget."""
    material_deficit: float
    """Relative material missing around :math:`|\\eta| \\approx 1.6` (:math:`\\delta`)."""
    gap_amplitude: float
    """Containment loss :math:`g` at the barrel super-module gaps, in :math:`\\ln(1-\\ell)` units."""
    electron_brem: float = 0.75
    """:math:`\\kappa_e`: showering probability per unit :math:`x/X_0` for electrons."""

    @classmethod
    def data(cls) -> ShowerTruth:
        """The collision-data truth."""
        return cls(
            name="data",
            prompt=_prompt_model_data(),
            fake=_fake_model_data(),
            material_scale=1.0,
            material_deficit=0.0,
            gap_amplitude=0.90,
        )

    @classmethod
    def mc(cls) -> ShowerTruth:
        """The simulation truth: :meth:`data` with the documented mismodelling."""
        data = cls.data()
        return replace(
            data,
            name="mc",
            prompt=_prompt_model_mc(data.prompt),
            fake=_fake_model_mc(data.fake),
            material_scale=0.96,
            material_deficit=0.12,
            gap_amplitude=0.55,
        )


# --------------------------------------------------------------------------- event level


@dataclass(frozen=True)
class LumiSectionPileup:
    """Data-like pileup: fills with exponentially decaying instantaneous luminosity.

    In run :math:`i` the mean pileup of lumi section :math:`\\ell = 1 \\dots N` is
    :math:`\\mu_{i\\ell} = \\hat\\mu_i e^{-(\\ell - 1)/\\tau}`; lumi sections are drawn
    with probability :math:`\\propto \\mu_{i\\ell}` (recorded events scale with the
    instantaneous luminosity) and :math:`n_{PU} \\sim \\mathrm{Poisson}(\\mu)`.  With
    the defaults :math:`\\langle\\mu\\rangle \\approx 36`.
    """

    runs: tuple[int, ...] = (367100, 367231, 367406, 367590, 367772, 367883)
    peak_mu: tuple[float, ...] = (47.0, 51.0, 54.0, 49.0, 56.0, 52.0)
    lumis_per_run: int = 600
    decay: float = 800.0

    def table(self) -> tuple[NDArray[np.uint32], NDArray[np.uint32], FloatArray]:
        """All (run, lumi, :math:`\\mu`) of the data-taking period."""
        lumi = np.arange(1, self.lumis_per_run + 1, dtype=np.uint32)
        runs = np.repeat(np.asarray(self.runs, dtype=np.uint32), self.lumis_per_run)
        lumis = np.tile(lumi, len(self.runs))
        mu = np.repeat(np.asarray(self.peak_mu), self.lumis_per_run) * np.exp(-(lumis - 1.0) / self.decay)
        return runs, lumis, mu

    def sample(self, n: int, rng: np.random.Generator) -> tuple[NDArray[np.uint32], NDArray[np.uint32], FloatArray]:
        """Draw ``n`` (run, lumi, :math:`\\mu`), sorted by (run, lumi) like a real file."""
        runs, lumis, mu = self.table()
        cdf = np.cumsum(mu)
        pick = np.sort(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"))
        return runs[pick], lumis[pick], mu[pick]


@dataclass(frozen=True)
class GammaPileup:
    """MC-like pileup: :math:`\\mu` (``Pileup_nTrueInt``) from a Gamma distribution."""

    mean: float = 32.0
    std: float = 11.0

    def sample(self, n: int, rng: np.random.Generator) -> FloatArray:
        """Draw ``n`` values of :math:`\\mu`."""
        shape = (self.mean / self.std) ** 2
        return rng.gamma(shape, self.std**2 / self.mean, size=n)


@dataclass(frozen=True)
class EnergyResponse:
    """ECAL energy response :math:`E_{reco} = E_{true}\\,S\\,(1 + \\sigma\\,\\xi)`, :math:`\\xi \\sim \\mathcal N(0,1)`.

    .. math:: \\sigma^2 = \\left(\\frac{a(1 + 0.8(1-R_9))}{\\sqrt{E}}\\right)^2
              + \\left(\\frac{b}{E}\\right)^2 + (c + 0.01(1-R_9))^2 + \\Delta^2

    with (EB, EE) stochastic ``a``, noise ``b`` [GeV] and constant ``c``
    terms; :math:`\\Delta` is the *additional* smearing of the sample (zero in MC,
    the e/gamma "smearing" in data) in the categories (EB high R9, EB low R9,
    EE high R9, EE low R9) split at :math:`R_9 = 0.94`; ``scale`` is :math:`S` in the
    same categories.  With probability ``tail_prob`` (×(1 + 2(1-R_9))) a
    fraction :math:`\\sim\\mathrm{Exp}(\\text{tail\\_mean})` of the energy is lost (leakage),
    giving the low-side tail of the Z line shape.  Objects in the crack lose 3%
    and have twice the resolution.
    """

    stochastic: Pair = (0.030, 0.055)
    noise: Pair = (0.15, 0.40)
    constant: Pair = (0.006, 0.012)
    extra_smearing: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    scale: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    tail_prob: float = 0.03
    tail_mean: float = 0.04


@dataclass(frozen=True)
class TriggerModel:
    """``HLT_Ele32_WPTight_Gsf`` per-electron efficiency.

    :math:`\\varepsilon = \\varepsilon_\\infty\\,\\varepsilon_{ID}(\\text{cutBased})\\,
    \\Phi((p_T - p_{T,1/2}) / w)`; the event fires if any electron fires.
    """

    plateau: float
    midpoint: float
    width: float
    id_efficiency: tuple[float, float, float, float, float] = (0.02, 0.05, 0.30, 0.70, 0.98)


@dataclass(frozen=True)
class EventTruth:
    """Event-level conditions of one sample kind.

    =====================  ===================================  =======================
    quantity               data                                 MC
    =====================  ===================================  =======================
    pileup                 :class:`LumiSectionPileup` (⟨μ⟩≈36)  Gamma(32, 11)
    ρ per pileup vertex    0.56 GeV                             0.52 GeV
    ρ offset               0.5 GeV                              0.6 GeV
    beam-spot σ_z          3.5 cm                               3.8 cm
    energy scale           EB +1.0/+1.3%, EE +0.6/−0.5%         1
    extra smearing         EB 1.0/1.3%, EE 2.0/2.5%             0
    background fraction f  0.15 (configurable)                  0.8 f / (1 - f + 0.8 f)
    extra π⁰-like photons  0.30 / event                         0.25 / event
    trigger plateau        0.965                                0.985
    =====================  ===================================  =======================
    """

    pileup: LumiSectionPileup | GammaPileup
    rho_per_pu: float
    rho_offset: float
    rho_noise: float
    vertex_sigma_z: float
    energy: EnergyResponse
    background_fraction: float
    background_norm: float
    prompt_background_fraction: float
    extra_photon_rate: float
    trigger: TriggerModel
    vertex_efficiency: float = 0.72

    @classmethod
    def data(cls, background_fraction: float = 0.15) -> EventTruth:
        """Collision-data conditions; ``background_fraction`` of the events are fake background."""
        if not 0.0 <= background_fraction < 1.0:
            raise ValueError("background_fraction must be in [0, 1)")
        return cls(
            pileup=LumiSectionPileup(),
            rho_per_pu=0.56,
            rho_offset=0.5,
            rho_noise=0.35,
            vertex_sigma_z=3.5,
            energy=EnergyResponse(extra_smearing=(0.010, 0.013, 0.020, 0.025), scale=(1.010, 1.013, 1.006, 0.995)),
            background_fraction=background_fraction,
            background_norm=1.0,
            prompt_background_fraction=0.4,
            extra_photon_rate=0.30,
            trigger=TriggerModel(plateau=0.965, midpoint=33.0, width=1.3),
        )

    @classmethod
    def mc(cls, background_fraction: float = 0.15) -> EventTruth:
        """Simulation conditions; the background cross-section is 20% too low.

        ``background_fraction`` is the *data* value; the simulated cocktail has
        :math:`0.8 f / (1 - f + 0.8 f)`.
        """
        data = cls.data(background_fraction)
        norm = 0.8
        f = data.background_fraction
        return replace(
            data,
            pileup=GammaPileup(),
            rho_per_pu=0.52,
            rho_offset=0.6,
            vertex_sigma_z=3.8,
            energy=EnergyResponse(),
            background_fraction=norm * f / (1.0 - f + norm * f),
            background_norm=norm,
            extra_photon_rate=0.25,
            trigger=TriggerModel(plateau=0.985, midpoint=32.8, width=1.0),
        )


@dataclass(frozen=True)
class SampleTruth:
    """Shower and event truth of one sample kind (``"data"`` or ``"mc"``)."""

    kind: Literal["data", "mc"]
    shower: ShowerTruth = field(repr=False)
    event: EventTruth = field(repr=False)

    @classmethod
    def data(cls, background_fraction: float = 0.15) -> SampleTruth:
        """Collision data (see :meth:`EventTruth.data`)."""
        return cls("data", ShowerTruth.data(), EventTruth.data(background_fraction))

    @classmethod
    def mc(cls, background_fraction: float = 0.15) -> SampleTruth:
        """Simulation (see :meth:`EventTruth.mc`)."""
        return cls("mc", ShowerTruth.mc(), EventTruth.mc(background_fraction))

    @classmethod
    def for_kind(cls, kind: str, background_fraction: float = 0.15) -> SampleTruth:
        """``"data"`` → :meth:`data`, ``"mc"`` → :meth:`mc`."""
        if kind == "data":
            return cls.data(background_fraction)
        if kind == "mc":
            return cls.mc(background_fraction)
        raise ValueError(f"unknown sample kind {kind!r}; expected 'data' or 'mc'")


# --------------------------------------------------------------------------- sampler


@dataclass(frozen=True)
class ClusterKinematics:
    """Conditioning variables of :func:`sample_showers`, one entry per cluster.

    ``pt`` is the generator-level transverse energy of the cluster, ``phi``
    the azimuth of the cluster position, ``rho`` the event's
    ``Rho_fixedGridRhoAll`` and ``origin`` an :class:`Origin` code.
    """

    pt: FloatArray
    sc_eta: FloatArray
    phi: FloatArray
    rho: FloatArray
    origin: NDArray[np.int8]

    def __post_init__(self) -> None:
        n = len(self.pt)
        if any(len(x) != n for x in (self.sc_eta, self.phi, self.rho, self.origin)):
            raise ValueError("all ClusterKinematics arrays must have the same length")

    def __len__(self) -> int:
        return len(self.pt)


def showering_probability(
    abs_sc_eta: FloatArray, origin: NDArray[np.int8], truth: ShowerTruth
) -> FloatArray:
    """Probability of the showering component (module docstring, section 1)."""
    t = (
        truth.material_scale
        * material_budget(abs_sc_eta)
        * (1.0 - truth.material_deficit * np.exp(-(((abs_sc_eta - 1.6) / 0.35) ** 2)))
    )
    p_electron = 1.0 - np.exp(-truth.electron_brem * t)
    p_photon = 1.0 - np.exp(-7.0 / 9.0 * t)
    p_fake = 0.35 + 0.45 * (1.0 - np.exp(-t))
    return np.choose(origin, (p_electron, p_photon, p_fake))


class _Context:
    """Per-cluster quantities shared by all marginals (computed once)."""

    def __init__(self, kin: ClusterKinematics, showering: NDArray[np.bool_]) -> None:
        self.abs_eta = np.abs(kin.sc_eta)
        self.endcap = self.abs_eta >= EB_EE_BOUNDARY
        fake = kin.origin == Origin.FAKE
        # Parameter tables are laid out as (prompt EB, prompt EE, fake EB, fake EE).
        self.group = (2 * fake + self.endcap).astype(np.intp)
        self.log_pt = np.log(kin.pt / PT_REF)
        self.pt = kin.pt
        self.rho = kin.rho
        self.energy = kin.pt * np.cosh(kin.sc_eta)
        self.deta = self.abs_eta - np.where(self.endcap, ETA_REF[1], ETA_REF[0])
        self.showering = showering
        self.barrel_gap = np.where(self.endcap, 0.0, supermodule_gap_profile(kin.phi))
        self.module_gap = np.where(self.endcap, 0.0, module_gap_profile(self.abs_eta))
        self.crack = crack_profile(self.abs_eta)

    def take(self, prompt: Pair, fake: Pair) -> FloatArray:
        return np.asarray((*prompt, *fake), dtype=np.float64)[self.group]


def _latent_location(
    spec_p: LatentNormal, spec_f: LatentNormal, ctx: _Context, transform: Callable[[FloatArray], FloatArray]
) -> tuple[FloatArray, FloatArray]:
    """Location :math:`\\mu` and width :math:`w` of a latent-normal variable, per cluster."""
    s = ctx.showering
    shower_loc = ctx.take(spec_p.shower_shift, spec_f.shower_shift) + (
        ctx.take(spec_p.shower_pt_slope, spec_f.shower_pt_slope) * ctx.log_pt
    )
    loc = (
        transform(ctx.take(spec_p.median, spec_f.median))
        + ctx.take(spec_p.pt_slope, spec_f.pt_slope) * ctx.log_pt
        + ctx.take(spec_p.rho_slope, spec_f.rho_slope) * ctx.rho
        + ctx.take(spec_p.eta_slope, spec_f.eta_slope) * ctx.deta
        + s * shower_loc
    )
    shower_width = np.where(s, ctx.take(spec_p.shower_width, spec_f.shower_width), 1.0)
    return loc, ctx.take(spec_p.width, spec_f.width) * shower_width


def _logit(x: FloatArray) -> FloatArray:
    return np.log(x / (1.0 - x))


def _zero_inflated(
    spec_p: ZeroInflatedWeibull, spec_f: ZeroInflatedWeibull, ctx: _Context, z: FloatArray
) -> FloatArray:
    """Zero-inflated Weibull driven by the latent normal ``z`` (module docstring, section 3)."""
    logit_zero = (
        ctx.take(spec_p.zero_logit, spec_f.zero_logit)
        + ctx.take(spec_p.zero_rho_slope, spec_f.zero_rho_slope) * ctx.rho
        + ctx.take(spec_p.zero_pt_slope, spec_f.zero_pt_slope) * ctx.log_pt
    )
    p_zero = 1.0 / (1.0 + np.exp(-logit_zero))
    scale = (
        ctx.take(spec_p.scale, spec_f.scale)
        + ctx.take(spec_p.scale_rho, spec_f.scale_rho) * ctx.rho
        + ctx.take(spec_p.scale_pt, spec_f.scale_pt) * ctx.pt
        + ctx.take(spec_p.scale_rho_over_e, spec_f.scale_rho_over_e) * ctx.rho / ctx.energy
    )
    shape = ctx.take(spec_p.shape, spec_f.shape)
    u = ndtr(z)
    # Re-use the part of the copula uniform above the zero threshold for the tail, so
    # that "how far from zero" stays correlated with the other variables.
    u_tail = np.clip((u - p_zero) / (1.0 - p_zero), 0.0, 1.0 - 1e-12)
    tail = scale * (-np.log1p(-u_tail)) ** (1.0 / shape)
    return np.where(u <= p_zero, 0.0, tail)


def _latent_normals(ctx: _Context, truth: ShowerTruth, rng: np.random.Generator) -> FloatArray:
    """Correlated standard normals, shape ``(len(LATENTS), n)``."""
    n = len(ctx.group)
    factors = rng.standard_normal((len(FACTORS), n))
    z = rng.standard_normal((len(LATENTS), n))
    tables = (truth.prompt.loadings_eb, truth.prompt.loadings_ee, truth.fake.loadings_eb, truth.fake.loadings_ee)
    for g, loadings in enumerate(tables):  # four parameter groups, each applied to all its clusters at once
        idx = np.flatnonzero(ctx.group == g)
        if idx.size == 0:
            continue
        b = np.asarray(loadings, dtype=np.float64)
        psi = np.sqrt(1.0 - np.sum(b**2, axis=1))
        z[:, idx] = b @ factors[:, idx] + psi[:, None] * z[:, idx]
    return z


def sample_showers(
    kin: ClusterKinematics, truth: ShowerTruth, rng: np.random.Generator
) -> dict[str, NDArray[np.float32] | NDArray[np.bool_]]:
    """Draw shower shapes and isolations for clusters with the given kinematics.

    Implements the model of the module docstring.  Returns a dict with the
    :data:`SHOWER_VARIABLES` (float32, named like the NanoAOD ``Photon``
    branches) and the :data:`AUXILIARY_VARIABLES` (``pfNeutralIso03`` float32,
    ``showering`` bool).  Fully vectorised; the random stream consumed depends
    only on ``len(kin)``.
    """
    n = len(kin)
    abs_eta = np.abs(kin.sc_eta)
    showering = rng.random(n) < showering_probability(abs_eta, kin.origin, truth)
    ctx = _Context(kin, showering)
    z = _latent_normals(ctx, truth, rng)
    P, F = truth.prompt, truth.fake
    latent = {name: z[i] for i, name in enumerate(LATENTS)}

    # Lateral structure: r9 = (E3x3/E5x5)(E5x5/E_SC), s4 = (E2x2/E3x3)(E3x3/E5x5).
    loc, width = _latent_location(P.compact, F.compact, ctx, np.log)
    loc = loc + truth.gap_amplitude * ctx.barrel_gap + 0.5 * ctx.module_gap + 0.6 * ctx.crack
    compact = 1.0 - np.minimum(np.exp(loc + width * latent["compact"]), 0.95)
    loc, width = _latent_location(P.contain, F.contain, ctx, np.log)
    loc = loc + 0.5 * truth.gap_amplitude * ctx.barrel_gap + 1.2 * ctx.crack
    contain = 1.0 - np.minimum(np.exp(loc + width * latent["contain"]), 0.9)
    loc, width = _latent_location(P.core, F.core, ctx, _logit)
    core = 1.0 / (1.0 + np.exp(-(loc + width * latent["core"])))
    r9 = compact * contain
    s4 = core * compact

    loc, width = _latent_location(P.sieie, F.sieie, ctx, np.log)
    sieie = np.exp(loc + width * latent["sieie"])
    kappa = ctx.take(P.sieip.kappa, F.sieip.kappa)
    tail = ctx.take(P.sieip.tail, F.sieip.tail)
    brem_scale = np.where(showering, ctx.take(P.sieip.shower_scale, F.sieip.shower_scale), 1.0)
    sieip = kappa * sieie**2 * np.sinh(tail * np.arcsinh(latent["sieip"])) * brem_scale

    loc, width = _latent_location(P.eta_width, F.eta_width, ctx, np.log)
    eta_width = np.exp(loc + width * latent["eta_width"])
    loc, width = _latent_location(P.phi_width, F.phi_width, ctx, np.log)
    phi_width = np.exp(loc + width * latent["phi_width"])

    hoe = _zero_inflated(P.hoe, F.hoe, ctx, latent["hoe"])
    iso_pho = _zero_inflated(P.iso_pho, F.iso_pho, ctx, latent["iso_pho"])
    iso_chg = _zero_inflated(P.iso_chg, F.iso_chg, ctx, latent["iso_chg"])
    # The worst-vertex sum is a maximum over all vertices, the PV included.
    iso_worst = np.maximum(iso_chg, _zero_inflated(P.iso_worst, F.iso_worst, ctx, latent["iso_worst"]))
    iso_neu = _zero_inflated(P.iso_neu, F.iso_neu, ctx, latent["iso_neu"])

    es_zero = ndtri(ctx.take((P.es_zero, P.es_zero), (F.es_zero, F.es_zero)))
    has_es = in_preshower(abs_eta) & (latent["es_rr"] > es_zero)
    loc, width = _latent_location(P.es_rr, F.es_rr, ctx, np.log)
    es_rr = np.where(has_es, np.exp(loc + width * latent["es_rr"]), 0.0)
    loc, width = _latent_location(P.es_frac, F.es_frac, ctx, np.log)
    es_frac = np.where(has_es, np.exp(loc + width * latent["es_frac"]), 0.0)

    f32 = np.float32
    return {
        "r9": r9.astype(f32),
        "s4": s4.astype(f32),
        "sieie": sieie.astype(f32),
        "sieip": sieip.astype(f32),
        "etaWidth": eta_width.astype(f32),
        "phiWidth": phi_width.astype(f32),
        "hoe": hoe.astype(f32),
        "pfPhoIso03": iso_pho.astype(f32),
        "pfChargedIsoPFPV": iso_chg.astype(f32),
        "pfChargedIsoWorstVtx": iso_worst.astype(f32),
        "esEffSigmaRR": es_rr.astype(f32),
        "esEnergyOverRawE": es_frac.astype(f32),
        "pfNeutralIso03": iso_neu.astype(f32),
        "showering": showering,
    }
