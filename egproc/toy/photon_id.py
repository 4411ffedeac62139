r"""The toy's photon identification: a fixed MVA score and a simple cut-based ID.

``Photon_mvaID`` of the toy samples is :func:`toy_mva_id` evaluated on the
stored photon fields, so a processor that corrects the MC shower shapes can
re-evaluate the score on the corrected fields and compare it with data — the
standard validation of shower-shape corrections.  The function therefore uses
only NumPy ufuncs and :func:`numpy.where` without in-place operations, and
works unchanged on NumPy arrays and on (jagged) awkward arrays; a per-event
:math:`\rho` broadcasts against per-photon fields.

Score
=====
With :math:`a = |\eta_{SC}|`, region :math:`r` = EB for :math:`a < 1.479` else EE,

.. math:: \text{mvaID} = \tanh\!\left(\tfrac12\left[b_r + \sum_k w_{r,k}\, f_k\right]\right) \in (-1, 1)

on the features

========================  ============================================================================
:math:`f_k`               definition
========================  ============================================================================
``r9``                    :math:`\ln(1.0001 - R_9)`
``s4``                    :math:`\operatorname{logit}(s_4)`
``sieie``                 :math:`d = (\sigma_{i\eta i\eta} - \bar\sigma_r)/\delta_r`
``sieie2``                :math:`d^2` (too narrow is noise-like, too wide is jet-like)
``sieip``                 :math:`\operatorname{asinh}^2(\sigma_{i\eta i\phi}/\kappa_r)`
``etaWidth``              :math:`\ln(\text{etaWidth}/\bar w^\eta_r)`
``phiWidth``              :math:`\ln(\text{phiWidth}/\bar w^\phi_r)`
``hoe``                   :math:`\operatorname{asinh}(H/E / 0.01)`
``pfPhoIso03``            :math:`\operatorname{asinh}(I_\gamma - A_\gamma(a)\,\rho)` (may be negative)
``pfChargedIsoPFPV``      :math:`\operatorname{asinh}(I_{ch})`
``pfChargedIsoWorstVtx``  :math:`\operatorname{asinh}(I_{ch}^{worst})`
``esEffSigmaRR``          :math:`\ln(1 + \sigma_{RR})` (zero outside the preshower)
``esEnergyOverRawE``      :math:`\operatorname{asinh}(E_{ES}/E_{raw} / 0.05)`
``rho``                   :math:`\rho / 20`
``eta``                   :math:`a - \bar a_r`
========================  ============================================================================

The photon effective area is the smooth curve
:math:`A_\gamma(a) = 0.10 + 0.01\,a + 0.008\,a^2` (a stand-in for the binned
CMS areas; smooth so that the score is differentiable in :math:`\eta_{SC}`
within a region).  The weights :math:`w_{r,k}` and offsets :math:`b_r` were
obtained **once** by a class-balanced logistic regression (so the score is
:math:`2P(\text{prompt}) - 1`) of prompt photons — photons from prompt
electrons and FSR photons — against jet fakes with :math:`p_T > 15` GeV, in
8×10⁵ events generated with the *data* truth (seed 1) and MC-truth labels,
and then frozen: they are not re-fitted and do not depend on the sample
being scored.  Some weights are counter-intuitive in isolation (e.g. the
positive worst-vertex isolation weight compensates the PV isolation it
contains), as in any multivariate discriminant.

Working points
==============
:data:`MVA_WP80` and :data:`MVA_WP90` are the (EB, EE) thresholds that give
80% / 90% efficiency for photons from prompt electrons with
:math:`p_T > 20` GeV in the same data-truth sample.  In simulation the
efficiencies differ — that difference is what shower-shape corrections must
remove.

Cut-based
=========
:func:`toy_cut_based` returns 0 (fail) … 3 (tight) from nested cuts on H/E,
:math:`\sigma_{i\eta i\eta}` and the :math:`\rho`-corrected charged and photon
isolations, modelled on the structure of the CMS Run-3 cut-based photon ID.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import numpy as np

__all__ = [
    "CUT_BASED_THRESHOLDS",
    "MVA_INPUTS",
    "MVA_WP80",
    "MVA_WP90",
    "charged_effective_area",
    "mva_features",
    "photon_effective_area",
    "toy_cut_based",
    "toy_mva_id",
]

ArrayLike = Any
"""A NumPy or awkward array (or anything that implements NumPy ufuncs)."""

MVA_INPUTS: Final = (
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
    "superclusterEta",
)
"""Photon fields read by :func:`toy_mva_id` (in addition to the event's ``rho``)."""

_FEATURES: Final = (
    "r9",
    "s4",
    "sieie",
    "sieie2",
    "sieip",
    "etaWidth",
    "phiWidth",
    "hoe",
    "pfPhoIso03",
    "pfChargedIsoPFPV",
    "pfChargedIsoWorstVtx",
    "esEffSigmaRR",
    "esEnergyOverRawE",
    "rho",
    "eta",
)

_EB_EE_BOUNDARY: Final = 1.479
# Region standardisation constants (EB, EE): sieie centre and scale, sieip scale,
# etaWidth and phiWidth reference values and reference |eta|.
_SIEIE_CENTRE: Final = (0.0092, 0.027)
_SIEIE_SCALE: Final = (0.0012, 0.004)
_SIEIP_SCALE: Final = (1.0e-4, 4.0e-4)
_ETA_WIDTH_REF: Final = (0.0115, 0.029)
_PHI_WIDTH_REF: Final = (0.030, 0.050)
_ETA_REF: Final = (0.7, 2.0)

# Frozen logistic-regression weights (EB, EE); see the module docstring.
_WEIGHTS: Final = {
    "r9": (-0.534, -0.177),
    "s4": (+0.755, +1.145),
    "sieie": (-0.061, -0.100),
    "sieie2": (-0.447, -0.354),
    "sieip": (-0.155, -0.181),
    "etaWidth": (-0.316, -0.559),
    "phiWidth": (+0.688, +0.227),
    "hoe": (-0.286, -0.251),
    "pfPhoIso03": (-0.130, -0.081),
    "pfChargedIsoPFPV": (-1.497, -1.285),
    "pfChargedIsoWorstVtx": (+0.286, +0.277),
    "esEffSigmaRR": (+0.000, -1.065),
    "esEnergyOverRawE": (+0.000, +1.981),
    "rho": (+0.086, +0.210),
    "eta": (+0.337, -0.511),
}
_BIAS: Final = (-0.165, -0.287)

MVA_WP80: Final = (0.612, 0.481)
"""(EB, EE) ``mvaID`` thresholds: 80% efficiency for photons from prompt electrons (p_T > 20 GeV) in toy data."""
MVA_WP90: Final = (0.416, 0.249)
"""(EB, EE) ``mvaID`` thresholds: 90% efficiency for photons from prompt electrons (p_T > 20 GeV) in toy data."""

CUT_BASED_THRESHOLDS: Final = {
    # (EB loose, medium, tight), (EE loose, medium, tight)
    "hoe": ((0.060, 0.040, 0.025), (0.080, 0.060, 0.040)),
    "sieie": ((0.0112, 0.0104, 0.0100), (0.0320, 0.0300, 0.0285)),
    "chg_iso": ((2.5, 1.5, 1.0), (2.5, 1.5, 1.0)),
    "pho_iso": ((4.0, 2.5, 1.5), (4.0, 2.5, 1.5)),
}
"""Nested cut values of :func:`toy_cut_based`; isolations are :math:`\\rho`-corrected, in GeV."""


def photon_effective_area(abs_sc_eta: ArrayLike) -> ArrayLike:
    """Smooth photon-isolation effective area :math:`A_\\gamma(|\\eta_{SC}|)`."""
    return 0.10 + 0.01 * abs_sc_eta + 0.008 * abs_sc_eta**2


def charged_effective_area(abs_sc_eta: ArrayLike) -> ArrayLike:
    """Small effective area of the PV-only charged isolation (mis-associated pileup tracks)."""
    return 0.005 + 0.002 * abs_sc_eta


def _by_region(is_barrel: ArrayLike, values: tuple[float, float]) -> ArrayLike:
    # Arithmetic rather than np.where, which dask-awkward arrays do not implement; exactly one
    # term is non-zero, so the selected value is reproduced bit for bit.
    return is_barrel * values[0] + (~is_barrel) * values[1]


def mva_features(photons: Mapping[str, ArrayLike] | Any, rho: ArrayLike) -> dict[str, ArrayLike]:
    """The features :math:`f_k` of the module docstring, keyed like ``_FEATURES``."""
    abs_eta = np.abs(photons["superclusterEta"])
    barrel = abs_eta < _EB_EE_BOUNDARY
    r9 = photons["r9"]
    s4 = np.minimum(np.maximum(photons["s4"], 1e-4), 1.0 - 1e-4)
    d_sieie = (photons["sieie"] - _by_region(barrel, _SIEIE_CENTRE)) / _by_region(barrel, _SIEIE_SCALE)
    sieip = np.arcsinh(photons["sieip"] / _by_region(barrel, _SIEIP_SCALE))
    tiny = 1e-6
    return {
        "r9": np.log(np.maximum(1.0001 - r9, tiny)),
        "s4": np.log(s4 / (1.0 - s4)),
        "sieie": d_sieie,
        "sieie2": d_sieie**2,
        "sieip": sieip**2,
        "etaWidth": np.log(np.maximum(photons["etaWidth"], tiny) / _by_region(barrel, _ETA_WIDTH_REF)),
        "phiWidth": np.log(np.maximum(photons["phiWidth"], tiny) / _by_region(barrel, _PHI_WIDTH_REF)),
        "hoe": np.arcsinh(photons["hoe"] / 0.01),
        "pfPhoIso03": np.arcsinh(photons["pfPhoIso03"] - photon_effective_area(abs_eta) * rho),
        "pfChargedIsoPFPV": np.arcsinh(photons["pfChargedIsoPFPV"]),
        "pfChargedIsoWorstVtx": np.arcsinh(photons["pfChargedIsoWorstVtx"]),
        "esEffSigmaRR": np.log1p(np.maximum(photons["esEffSigmaRR"], 0.0)),
        "esEnergyOverRawE": np.arcsinh(photons["esEnergyOverRawE"] / 0.05),
        "rho": rho / 20.0,
        "eta": abs_eta - _by_region(barrel, _ETA_REF),
    }


def toy_mva_id(photons: Mapping[str, ArrayLike] | Any, rho: ArrayLike) -> ArrayLike:
    """Toy photon MVA score in :math:`(-1, 1)`.

    Parameters
    ----------
    photons
        Anything indexable by the names in :data:`MVA_INPUTS`: a dict of NumPy
        arrays, a NanoEvents ``Photon`` collection, an awkward record array.
    rho
        ``Rho_fixedGridRhoAll``, per photon (NumPy) or per event (awkward,
        broadcast against the jagged photon fields).
    """
    features = mva_features(photons, rho)
    barrel = np.abs(photons["superclusterEta"]) < _EB_EE_BOUNDARY
    logit = _by_region(barrel, _BIAS)
    for name in _FEATURES:  # fixed list of features, each term is a whole-array expression
        logit = logit + _by_region(barrel, _WEIGHTS[name]) * features[name]
    return np.tanh(0.5 * logit)


def toy_cut_based(photons: Mapping[str, ArrayLike] | Any, rho: ArrayLike) -> ArrayLike:
    """Toy cut-based photon ID: 0 fail, 1 loose, 2 medium, 3 tight (nested)."""
    abs_eta = np.abs(photons["superclusterEta"])
    barrel = abs_eta < _EB_EE_BOUNDARY
    chg = photons["pfChargedIsoPFPV"] - charged_effective_area(abs_eta) * rho
    pho = photons["pfPhoIso03"] - photon_effective_area(abs_eta) * rho
    level = 0
    passed = True
    for wp in range(3):  # loose, medium, tight
        t = {k: (v[0][wp], v[1][wp]) for k, v in CUT_BASED_THRESHOLDS.items()}
        passed = (
            passed
            & (photons["hoe"] < _by_region(barrel, t["hoe"]))
            & (photons["sieie"] < _by_region(barrel, t["sieie"]))
            & (chg < _by_region(barrel, t["chg_iso"]))
            & (pho < _by_region(barrel, t["pho_iso"]))
        )
        level = level + 1 * passed
    return level
