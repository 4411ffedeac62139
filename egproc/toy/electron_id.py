r"""The toy's electron identification: relative isolation, cut-based ID and MVA score.

These are evaluated once, at generation time, to fill ``Electron_pfRelIso03_all``,
``Electron_cutBased`` and ``Electron_mvaIso*``; tag selection in the
processors relies on ``cutBased == 4`` (tight).  Unlike
:mod:`egproc.toy.photon_id` they are NumPy-only.

Relative isolation
==================
.. math:: I_{rel} = \frac{I_{ch} + \max(0,\, I_{nh} + I_\gamma - A_e(|\eta_{SC}|)\,\rho)}{p_T}

with the binned effective areas :data:`EFFECTIVE_AREA_EDGES` /
:data:`EFFECTIVE_AREAS` (the Fall17-94X-V2 electron values, cone 0.3).

Cut-based
=========
Four nested working points (veto, loose, medium, tight) with the structure
and, per region, the values of the CMS Fall17-94X-V2 cut-based electron ID:
:math:`\sigma_{i\eta i\eta}`, :math:`|\Delta\eta_{in}^{seed}|`, :math:`|\Delta\phi_{in}|`,
:math:`H/E < C_0 + C_E/E_{SC} + C_\rho\,\rho/E_{SC}`,
:math:`I_{rel} < C_I + C_{I,p_T}/p_T`, :math:`|1/E - 1/p|`, missing inner hits and
the conversion veto.  ``cutBased`` is the number of consecutive working
points passed (0 fail … 4 tight), as in NanoAOD.

MVA
===
:math:`\text{mvaIso} = \tanh(\tfrac12[b_r + \sum_k w_{r,k} g_k])` on
:math:`g = (\ln(1.0001-R_9),\ (\sigma_{i\eta i\eta}-\bar\sigma_r)/\delta_r,\
\operatorname{asinh}(H/E/0.01),\ \operatorname{asinh}(20 I_{rel}),\
|\Delta\eta_{in}^{seed}|/10^{-3},\ |\Delta\phi_{in}|/10^{-2},\
\operatorname{asinh}(|1/E-1/p| / 0.005),\ n_{miss},\ 1-\text{convVeto})`.
Weights were obtained once by a class-balanced logistic regression of prompt
electrons against fakes (:math:`p_T > 15` GeV, 8×10⁵ events generated with the
*data* truth, seed 1) and frozen; :data:`MVA_WP80` / :data:`MVA_WP90` give
80% / 90% efficiency on prompt electrons with :math:`p_T > 20` GeV there.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "CUT_BASED_WORKING_POINTS",
    "EFFECTIVE_AREAS",
    "EFFECTIVE_AREA_EDGES",
    "MVA_WP80",
    "MVA_WP90",
    "cut_based",
    "effective_area",
    "mva_iso",
    "relative_isolation",
]

FloatArray = NDArray[np.floating]

_EB_EE_BOUNDARY: Final = 1.479

EFFECTIVE_AREA_EDGES: Final = (0.0, 1.0, 1.479, 2.0, 2.2, 2.3, 2.4)
EFFECTIVE_AREAS: Final = (0.1440, 0.1562, 0.1032, 0.0859, 0.1116, 0.1321, 0.1654)

# Columns: sieie, dEtaInSeed, dPhiIn, H/E C0, C_E, C_rho, relIso C_I, C_I,pT, |1/E-1/p|, max missing hits.
CUT_BASED_WORKING_POINTS: Final = {
    "EB": (
        (0.0126, 0.00463, 0.148, 0.050, 1.16, 0.0324, 0.198, 0.506, 0.209, 2),  # veto
        (0.0112, 0.00377, 0.0884, 0.050, 1.16, 0.0324, 0.112, 0.506, 0.193, 1),  # loose
        (0.0106, 0.00320, 0.0547, 0.046, 1.16, 0.0324, 0.0478, 0.506, 0.184, 1),  # medium
        (0.0104, 0.00255, 0.0220, 0.026, 1.15, 0.0324, 0.0287, 0.506, 0.159, 1),  # tight
    ),
    "EE": (
        (0.0457, 0.00814, 0.190, 0.050, 2.54, 0.183, 0.203, 0.963, 0.132, 3),
        (0.0425, 0.00674, 0.169, 0.0441, 2.54, 0.183, 0.108, 0.963, 0.111, 1),
        (0.0387, 0.00632, 0.0394, 0.0275, 2.52, 0.183, 0.0658, 0.963, 0.0721, 1),
        (0.0353, 0.00501, 0.0236, 0.0188, 2.06, 0.183, 0.0571, 0.963, 0.0159, 1),
    ),
}
"""Fall17-94X-V2 cut values per region, working points veto → tight."""

_MVA_SIEIE_CENTRE: Final = (0.0092, 0.027)
_MVA_SIEIE_SCALE: Final = (0.0012, 0.004)
# Frozen logistic-regression weights, one column per feature g_k of the module docstring.
_MVA_WEIGHTS: Final = (
    (-0.314, -1.243, -0.367, -1.531, -1.150, -1.458, -1.643, -1.462, -2.505),  # EB
    (-0.148, -1.260, -0.382, -1.148, -1.110, -1.336, -2.037, -1.382, -2.638),  # EE
)
_MVA_BIAS: Final = (+7.656, +7.239)

MVA_WP80: Final = (0.954, 0.875)
"""(EB, EE) ``mvaIso`` thresholds for 80% efficiency on prompt electrons in toy data."""
MVA_WP90: Final = (0.858, 0.670)
"""(EB, EE) ``mvaIso`` thresholds for 90% efficiency on prompt electrons in toy data."""


def effective_area(abs_sc_eta: FloatArray) -> FloatArray:
    """Binned electron effective area :math:`A_e(|\\eta_{SC}|)` for the cone-0.3 neutral isolation."""
    idx = np.searchsorted(np.asarray(EFFECTIVE_AREA_EDGES), abs_sc_eta, side="right") - 1
    return np.asarray(EFFECTIVE_AREAS)[np.clip(idx, 0, len(EFFECTIVE_AREAS) - 1)]


def relative_isolation(
    charged: FloatArray,
    neutral: FloatArray,
    photon: FloatArray,
    rho: FloatArray,
    pt: FloatArray,
    abs_sc_eta: FloatArray,
) -> FloatArray:
    """:math:`\\rho`-corrected relative PF isolation (``Electron_pfRelIso03_all``)."""
    neutral_corrected = np.maximum(neutral + photon - effective_area(abs_sc_eta) * rho, 0.0)
    return (charged + neutral_corrected) / pt


def cut_based(
    *,
    sieie: FloatArray,
    deta_in_seed: FloatArray,
    dphi_in: FloatArray,
    hoe: FloatArray,
    sc_energy: FloatArray,
    rho: FloatArray,
    rel_iso: FloatArray,
    pt: FloatArray,
    inv_e_minus_inv_p: FloatArray,
    missing_hits: NDArray[np.integer],
    conv_veto: NDArray[np.bool_],
    abs_sc_eta: FloatArray,
) -> NDArray[np.uint8]:
    """Number of consecutive cut-based working points passed (0 fail … 4 tight)."""
    barrel = abs_sc_eta < _EB_EE_BOUNDARY
    level = np.zeros(len(sieie), dtype=np.uint8)
    passed = np.ones(len(sieie), dtype=bool)
    for eb, ee in zip(CUT_BASED_WORKING_POINTS["EB"], CUT_BASED_WORKING_POINTS["EE"], strict=True):
        c = [np.where(barrel, x, y) for x, y in zip(eb, ee, strict=True)]
        passed &= (
            (sieie < c[0])
            & (np.abs(deta_in_seed) < c[1])
            & (np.abs(dphi_in) < c[2])
            & (hoe < c[3] + c[4] / sc_energy + c[5] * rho / sc_energy)
            & (rel_iso < c[6] + c[7] / pt)
            & (np.abs(inv_e_minus_inv_p) < c[8])
            & (missing_hits <= c[9])
            & conv_veto
        )
        level += passed
    return level


def mva_iso(
    *,
    r9: FloatArray,
    sieie: FloatArray,
    hoe: FloatArray,
    rel_iso: FloatArray,
    deta_in_seed: FloatArray,
    dphi_in: FloatArray,
    inv_e_minus_inv_p: FloatArray,
    missing_hits: NDArray[np.integer],
    conv_veto: NDArray[np.bool_],
    abs_sc_eta: FloatArray,
) -> NDArray[np.float32]:
    """Toy ``Electron_mvaIso`` score in :math:`(-1, 1)` (module docstring)."""
    barrel = abs_sc_eta < _EB_EE_BOUNDARY
    centre = np.where(barrel, _MVA_SIEIE_CENTRE[0], _MVA_SIEIE_CENTRE[1])
    scale = np.where(barrel, _MVA_SIEIE_SCALE[0], _MVA_SIEIE_SCALE[1])
    features = (
        np.log(np.maximum(1.0001 - r9, 1e-6)),
        (sieie - centre) / scale,
        np.arcsinh(hoe / 0.01),
        np.arcsinh(20.0 * rel_iso),
        np.abs(deta_in_seed) / 1e-3,
        np.abs(dphi_in) / 1e-2,
        np.arcsinh(np.abs(inv_e_minus_inv_p) / 0.005),
        missing_hits.astype(np.float64),
        1.0 - conv_veto,
    )
    logit = np.where(barrel, _MVA_BIAS[0], _MVA_BIAS[1])
    for w_eb, w_ee, feature in zip(_MVA_WEIGHTS[0], _MVA_WEIGHTS[1], features, strict=True):
        logit = logit + np.where(barrel, w_eb, w_ee) * feature
    return np.tanh(0.5 * logit).astype(np.float32)
