r"""Event-level physics of the toy: Z→ee and fake background, pileup, reconstruction.

:func:`simulate_chunk` turns a random stream into one block of NanoAOD-like
events.  Everything is vectorised over events and objects; the only
``for`` loops run over fixed lists (parameter groups, collections).

Hard process
============
*Signal* (:math:`1 - f_{bkg}` of the events) is Drell–Yan :math:`Z/\gamma^*\to ee`:

* mass: a relativistic Breit–Wigner in :math:`m^2` (:math:`m_Z = 91.1876`,
  :math:`\Gamma_Z = 2.4952` GeV, sampled exactly by the Cauchy inverse CDF
  :math:`m^2 = m_Z^2 + m_Z\Gamma_Z \tan u`) on :math:`[50, 150]` GeV, plus a
  :math:`\gamma^*` continuum :math:`\propto m^{-3}` with weight 4%
  (Z/γ* interference is neglected);
* boson :math:`p_T` from :math:`f(p_T) \propto p_T (1 + p_T^2/p_0^2)^{-n}`
  (:math:`p_0 = 8` GeV, :math:`n = 2.1`: peak at a few GeV, median ≈ 8 GeV, a
  :math:`p_T^{-3.2}` tail), rapidity :math:`y \sim \mathcal N(0, 2.1)`;
* decay :math:`\propto 1 + \cos^2\theta^*` (exact inverse CDF of the cubic)
  with uniform :math:`\phi^*`, in the boson rest frame with axes parallel
  to the lab (a Collins–Soper-like approximation), then boosted;
* final-state radiation: each prompt electron radiates with probability
  0.22 a photon with energy fraction :math:`z` log-uniform in
  :math:`[0.01, 0.8]` at an angle :math:`\Delta R` log-uniform in
  :math:`[0.002, 0.8]` (recoil neglected).  Photons inside the supercluster
  footprint :math:`(\Delta\eta/0.04)^2 + (\Delta\phi/0.15)^2 < 1` are merged into
  the electron's cluster (the energy is recovered); others are lost to the
  electron — giving the low-mass tail — and become separate ``Photon``
  objects if they pass the reconstruction threshold.

*Background* (jet fakes, W+jets-like) is a pair system with
:math:`m = 30 + \mathrm{Exp}(40)` GeV, a harder :math:`p_T` spectrum
(:math:`p_0 = 15` GeV), :math:`y \sim \mathcal N(0, 1.8)` and isotropic decay;
both candidates get random charges (same-sign pairs exist).  A fraction
``prompt_background_fraction`` of these events has one prompt electron
(W-like) and one fake, the rest two fakes.  The simulation under-predicts
the background cross-section by 20% (:class:`~egproc.toy.truth.EventTruth`).
Additionally, each event has Poisson(λ) :math:`\pi^0`-like fake photons with
:math:`p_T = 7 + \mathrm{Exp}(8)` GeV.

Pileup and vertex
=================
:math:`\mu` from the sample's profile, :math:`n_{PU} \sim \mathrm{Poisson}(\mu)`,
``PV_npvs`` :math:`= 1 + \mathrm{Binomial}(n_{PU}, 0.72)`, ``PV_npvsGood`` loses
3% of the pileup vertices, and

.. math:: \rho_{All} = \max\left(0,\ \rho_0 + \alpha\,n_{PU} + \sigma_\rho\sqrt{n_{PU}+1}\,\xi\right),

``FastjetAll`` :math:`\approx 0.97\rho_{All}`, ``FastjetCentral``
:math:`\approx 1.06\rho_{All}` (with independent noise).  ``PV_z`` is the
hard-scatter vertex, :math:`\mathcal N(0, \sigma_z)`.

Reconstruction
==============
Every cluster is propagated to the ECAL (:mod:`egproc.toy.geometry`), its
shower drawn from :func:`egproc.toy.truth.sample_showers` and its energy from
:class:`~egproc.toy.truth.EnergyResponse`.  Electron candidates in
:math:`|\eta_{SC}| < 2.5` are reconstructed with GSF efficiency 0.96 (EB) /
0.92 (EE) if prompt; their energy is the E–p combination with the track
momentum when compatible within 4σ.  **Every** cluster above threshold is
also a ``Photon`` from the same supercluster (photon regression ≈ electron
energy within a few per mille), cross-referenced through
``Electron_photonIdx`` ↔ ``Photon_electronIdx``.  Objects need
:math:`p_T > 10` GeV.  Charge mis-identification grows with showering and
:math:`|\eta|`.  ``HLT_Ele32_WPTight_Gsf`` fires if any electron passes the
trigger model.

MC truth (simulation only)
==========================
``GenPart`` holds, per signal event, the Z (status 62), the two hard-process
electrons (status 23), the two final-state electrons (status 1) and the FSR
photons above 10 GeV (status 1); a W-like background event holds its prompt
electron (and FSR photon).  ``Electron_genPartFlav`` is 1 for prompt and 0
for fakes; ``Photon_genPartFlav`` is 11 for photons matched to a prompt
electron, 1 for FSR photons and 0 otherwise, with the MCMatcher criteria
:math:`\Delta R < 0.3`, :math:`|\Delta p_T|/p_T < 0.5`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtr

from egproc.toy import electron_id, photon_id
from egproc.toy.geometry import (
    CRACK_HIGH,
    CRACK_LOW,
    EB_EE_BOUNDARY,
    TRACKER_ACCEPTANCE,
    calo_impact,
    crack_profile,
    delta_phi,
    wrap_phi,
)
from egproc.toy.schema import Collection, EventChunk
from egproc.toy.truth import (
    ClusterKinematics,
    EnergyResponse,
    GammaPileup,
    LumiSectionPileup,
    Origin,
    SampleTruth,
    sample_showers,
)

__all__ = ["RECO_PT_MIN", "simulate_chunk"]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

Z_MASS: Final = 91.1876
Z_WIDTH: Final = 2.4952
MASS_WINDOW: Final = (50.0, 150.0)
CONTINUUM_FRACTION: Final = 0.04
ELECTRON_MASS: Final = 0.000511
RECO_PT_MIN: Final = 10.0
"""Reconstruction threshold for electrons and photons [GeV] (NanoAOD itself stores > 5 GeV)."""
MC_EVENTS_PER_LUMI: Final = 1000

_FSR_PROBABILITY: Final = 0.22
_FSR_Z_RANGE: Final = (0.01, 0.8)
_FSR_DR_RANGE: Final = (0.002, 0.8)
_FSR_MERGE: Final = (0.04, 0.15)
_GEN_PHOTON_PT_MIN: Final = 10.0
_GSF_EFFICIENCY: Final = (0.96, 0.92)
_POSITION_RESOLUTION: Final = (0.0008, 0.0015)
_TRACK_ANGLE_RESOLUTION: Final = 0.0004
_BEAM_SPOT_XY: Final = (0.010, 0.040)

# GenPart status flags (bit values of genparticles_cff.py).
_IS_PROMPT: Final = 1
_IS_HARD_PROCESS: Final = 128
_FROM_HARD_PROCESS: Final = 256
_FROM_HARD_PROCESS_BEFORE_FSR: Final = 2048
_IS_FIRST_COPY: Final = 4096
_IS_LAST_COPY: Final = 8192
_IS_LAST_COPY_BEFORE_FSR: Final = 16384

# Cluster sources.
_SRC_ELECTRON: Final = 0
_SRC_FSR: Final = 1
_SRC_PI0: Final = 2


# --------------------------------------------------------------------------- kinematics


def _z_lineshape(n: int, rng: np.random.Generator) -> FloatArray:
    """Breit–Wigner in m² truncated to the mass window, plus an m⁻³ γ* continuum."""
    lo, hi = MASS_WINDOW
    mg = Z_MASS * Z_WIDTH
    a_lo, a_hi = np.arctan((lo**2 - Z_MASS**2) / mg), np.arctan((hi**2 - Z_MASS**2) / mg)
    m_bw = np.sqrt(Z_MASS**2 + mg * np.tan(a_lo + (a_hi - a_lo) * rng.random(n)))
    # Inverse CDF of m^-3 on [lo, hi]: m^-2 is uniform between hi^-2 and lo^-2.
    m_cont = 1.0 / np.sqrt(hi**-2 + (lo**-2 - hi**-2) * rng.random(n))
    return np.where(rng.random(n) < CONTINUUM_FRACTION, m_cont, m_bw)


def _boson_pt(n: int, rng: np.random.Generator, p0: float, power: float) -> FloatArray:
    """Inverse CDF of :math:`p_T (1 + p_T^2/p_0^2)^{-n}`, capped at 1 TeV."""
    u = rng.random(n)
    return np.minimum(p0 * np.sqrt((1.0 - u) ** (1.0 / (1.0 - power)) - 1.0), 1000.0)


def _cos_theta_one_plus_cos2(u: FloatArray) -> FloatArray:
    """Inverse CDF of :math:`\\tfrac38(1 + c^2)`: the real root of :math:`c^3 + 3c + 4 - 8u = 0`."""
    q = 4.0 - 8.0 * u
    disc = np.sqrt(q * q / 4.0 + 1.0)
    return np.cbrt(-q / 2.0 + disc) + np.cbrt(-q / 2.0 - disc)


@dataclass(frozen=True)
class _FourVectors:
    px: FloatArray
    py: FloatArray
    pz: FloatArray
    e: FloatArray


def _two_body_decay(
    mass: FloatArray, pt: FloatArray, rapidity: FloatArray, phi: FloatArray, cos_theta: FloatArray,
    phi_star: FloatArray,
) -> tuple[_FourVectors, _FourVectors]:
    """Massless two-body decay in the rest frame, boosted to the lab."""
    mt = np.hypot(mass, pt)
    e = mt * np.cosh(rapidity)
    beta = (pt * np.cos(phi) / e, pt * np.sin(phi) / e, mt * np.sinh(rapidity) / e)
    gamma = e / mass
    sin_theta = np.sqrt(1.0 - cos_theta**2)
    half = 0.5 * mass
    p_star = (half * sin_theta * np.cos(phi_star), half * sin_theta * np.sin(phi_star), half * cos_theta)
    out = []
    for sign in (1.0, -1.0):
        p = tuple(sign * c for c in p_star)
        bp = beta[0] * p[0] + beta[1] * p[1] + beta[2] * p[2]
        # gamma^2/(gamma+1) == (gamma-1)/beta^2, without the beta -> 0 singularity.
        k = gamma**2 / (gamma + 1.0) * bp + gamma * half
        out.append(_FourVectors(p[0] + k * beta[0], p[1] + k * beta[1], p[2] + k * beta[2], gamma * (half + bp)))
    return out[0], out[1]


def _log_uniform(lo: float, hi: float, u: FloatArray) -> FloatArray:
    return lo * (hi / lo) ** u


# --------------------------------------------------------------------------- energy


def _energy_categories(abs_sc_eta: FloatArray, r9: FloatArray) -> IntArray:
    """(EB high R9, EB low R9, EE high R9, EE low R9) as 0..3."""
    return 2 * (abs_sc_eta >= EB_EE_BOUNDARY) + (r9 < 0.94)


def _resolution(
    energy: FloatArray, abs_sc_eta: FloatArray, r9: FloatArray, model: EnergyResponse, extra: bool
) -> FloatArray:
    """Relative energy resolution of :class:`~egproc.toy.truth.EnergyResponse`."""
    endcap = abs_sc_eta >= EB_EE_BOUNDARY
    a = np.where(endcap, model.stochastic[1], model.stochastic[0]) * (1.0 + 0.8 * (1.0 - r9))
    b = np.where(endcap, model.noise[1], model.noise[0])
    c = np.where(endcap, model.constant[1], model.constant[0]) + 0.01 * (1.0 - r9)
    var = a**2 / energy + (b / energy) ** 2 + c**2
    if extra:
        var = var + np.asarray(model.extra_smearing)[_energy_categories(abs_sc_eta, r9)] ** 2
    in_crack = (abs_sc_eta > CRACK_LOW) & (abs_sc_eta < CRACK_HIGH)
    return np.sqrt(var) * np.where(in_crack, 2.0, 1.0)


def _measure_energy(
    energy: FloatArray, abs_sc_eta: FloatArray, r9: FloatArray, model: EnergyResponse, rng: np.random.Generator
) -> tuple[FloatArray, FloatArray]:
    """Reconstructed ECAL energy and the regression's *predicted* relative error."""
    n = len(energy)
    sigma = _resolution(energy, abs_sc_eta, r9, model, extra=True)
    scale = np.asarray(model.scale)[_energy_categories(abs_sc_eta, r9)]
    tail = rng.random(n) < model.tail_prob * (1.0 + 2.0 * (1.0 - r9))
    loss = np.where(tail, np.minimum(rng.exponential(model.tail_mean, n), 0.5), 0.0)
    crack_scale = 1.0 - 0.03 * crack_profile(abs_sc_eta)
    measured = energy * scale * crack_scale * (1.0 + sigma * rng.standard_normal(n)) * (1.0 - loss)
    # The regression predicts the simulated resolution: it knows nothing about the data smearing.
    predicted = _resolution(energy, abs_sc_eta, r9, model, extra=False) * np.abs(1.0 + 0.08 * rng.standard_normal(n))
    return np.maximum(measured, 0.1), predicted


# --------------------------------------------------------------------------- helpers


def _sort_within_events(evt: IntArray, key: FloatArray, n_events: int) -> tuple[IntArray, IntArray, IntArray]:
    """Order objects by (event, ascending ``key``).

    Returns the permutation, its inverse and the per-event offsets of the sorted list.
    """
    order = np.lexsort((key, evt))
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    offsets = np.zeros(n_events + 1, dtype=np.int64)
    np.cumsum(np.bincount(evt, minlength=n_events), out=offsets[1:])
    return order, inverse, offsets


def _remap(index: IntArray, inverse: IntArray, evt: IntArray, offsets: IntArray) -> NDArray[np.int16]:
    """Turn a flat pre-sort index (or -1) into a post-sort per-event local index (or -1)."""
    valid = index >= 0
    local = np.full(len(index), -1, dtype=np.int64)
    local[valid] = inverse[index[valid]] - offsets[evt[valid]]
    return local.astype(np.int16)


# --------------------------------------------------------------------------- main


def simulate_chunk(
    n_events: int,
    truth: SampleTruth,
    rng: np.random.Generator,
    *,
    first_event: int = 0,
    event_number_offset: int = 0,
) -> EventChunk:
    """Generate ``n_events`` toy NanoAOD events.

    Parameters
    ----------
    n_events
        Number of events in the chunk.
    truth
        :meth:`SampleTruth.data` or :meth:`SampleTruth.mc`.
    rng
        The random stream; the output is a deterministic function of it.
    first_event
        Index of the first event of the chunk within its sample; used for MC
        lumi blocks and event numbers.
    event_number_offset
        Added to all event numbers (distinguishes independent replicas).
    """
    n = n_events
    mc = truth.kind == "mc"
    ev = truth.event
    evt_idx = np.arange(n, dtype=np.int64)

    # ---- event level: pileup, vertex, rho, ids
    if isinstance(ev.pileup, LumiSectionPileup):
        run, lumi, mu = ev.pileup.sample(n, rng)
    elif isinstance(ev.pileup, GammaPileup):
        mu = ev.pileup.sample(n, rng)
        run = np.ones(n, dtype=np.uint32)
        lumi = (1 + (first_event + evt_idx) // MC_EVENTS_PER_LUMI).astype(np.uint32)
    else:  # pragma: no cover - guarded by the type of EventTruth.pileup
        raise TypeError(f"unsupported pileup model {type(ev.pileup).__name__}")
    n_pu = rng.poisson(mu)
    npvs = 1 + rng.binomial(n_pu, ev.vertex_efficiency)
    npvs_good = npvs - rng.binomial(npvs - 1, 0.03)
    rho_all = np.maximum(
        ev.rho_offset + ev.rho_per_pu * n_pu + ev.rho_noise * np.sqrt(n_pu + 1.0) * rng.standard_normal(n), 0.0
    ).astype(np.float32)
    rho_fj_all = np.maximum(0.97 * rho_all + 0.25 * rng.standard_normal(n), 0.0).astype(np.float32)
    rho_fj_central = np.maximum(1.06 * rho_all + 0.6 * rng.standard_normal(n), 0.0).astype(np.float32)
    # Conditioning uses the stored float32 rho so that files are self-consistent.
    rho = rho_all.astype(np.float64)
    pv_z = ev.vertex_sigma_z * rng.standard_normal(n)

    # ---- hard process: two candidates per event (signal Z->ee or fake background)
    is_bkg = rng.random(n) < ev.background_fraction
    w_like = is_bkg & (rng.random(n) < ev.prompt_background_fraction)
    mass = np.where(is_bkg, 30.0 + rng.exponential(40.0, n), _z_lineshape(n, rng))
    boson_pt = np.where(is_bkg, _boson_pt(n, rng, 15.0, 2.1), _boson_pt(n, rng, 8.0, 2.1))
    rapidity = rng.standard_normal(n) * np.where(is_bkg, 1.8, 2.1)
    boson_phi = rng.uniform(-np.pi, np.pi, n)
    cos_theta = np.where(is_bkg, rng.uniform(-1.0, 1.0, n), _cos_theta_one_plus_cos2(rng.random(n)))
    d1, d2 = _two_body_decay(mass, boson_pt, rapidity, boson_phi, cos_theta, rng.uniform(-np.pi, np.pi, n))

    def pairs(a: FloatArray, b: FloatArray) -> FloatArray:
        return np.stack([a, b], axis=1).reshape(-1)

    c_evt = np.repeat(evt_idx, 2)
    c_px, c_py, c_pz, c_e = (pairs(getattr(d1, k), getattr(d2, k)) for k in ("px", "py", "pz", "e"))
    c_pt = np.hypot(c_px, c_py)
    c_eta = np.arcsinh(c_pz / np.maximum(c_pt, 1e-9))
    c_phi = np.arctan2(c_py, c_px)
    signal_charges = np.tile(np.array([-1, 1], dtype=np.int64), n)
    c_charge = np.where(np.repeat(is_bkg, 2), rng.choice(np.array([-1, 1]), 2 * n), signal_charges)
    slot = np.tile(np.array([0, 1]), n)
    c_bkg = np.repeat(is_bkg, 2)
    c_prompt = ~c_bkg | (np.repeat(w_like, 2) & (slot == 0))
    c_origin = np.where(c_prompt, Origin.PROMPT_ELECTRON, Origin.FAKE).astype(np.int8)

    # ---- final-state radiation off prompt electrons
    n_c = 2 * n
    has_fsr = c_prompt & (rng.random(n_c) < _FSR_PROBABILITY)
    fsr_z = np.where(has_fsr, _log_uniform(*_FSR_Z_RANGE, rng.random(n_c)), 0.0)
    fsr_dr = _log_uniform(*_FSR_DR_RANGE, rng.random(n_c))
    fsr_psi = rng.uniform(-np.pi, np.pi, n_c)
    fsr_deta, fsr_dphi = fsr_dr * np.cos(fsr_psi), fsr_dr * np.sin(fsr_psi)
    merged = has_fsr & ((fsr_deta / _FSR_MERGE[0]) ** 2 + (fsr_dphi / _FSR_MERGE[1]) ** 2 < 1.0)
    e_final = (1.0 - fsr_z) * c_e  # electron energy after radiating (what the track sees)
    cluster_e = np.where(merged, c_e, e_final)
    g_eta = c_eta + fsr_deta
    g_phi = wrap_phi(c_phi + fsr_dphi)
    g_e = fsr_z * c_e
    g_pt = g_e / np.cosh(g_eta)
    separate_fsr = np.flatnonzero(has_fsr & ~merged & (g_pt > 0.5 * RECO_PT_MIN))

    # ---- pi0-like fake photons
    n_pi0 = rng.poisson(ev.extra_photon_rate, n)
    p_evt = np.repeat(evt_idx, n_pi0)
    n_p = len(p_evt)
    p_eta = 1.4 * rng.standard_normal(n_p)
    p_pt = 7.0 + rng.exponential(8.0, n_p)
    p_phi = rng.uniform(-np.pi, np.pi, n_p)

    # ---- all clusters: electron candidates, separated FSR photons, pi0s
    k_evt = np.concatenate([c_evt, c_evt[separate_fsr], p_evt])
    k_src = np.concatenate([np.full(n_c, _SRC_ELECTRON), np.full(len(separate_fsr), _SRC_FSR), np.full(n_p, _SRC_PI0)])
    k_cand = np.concatenate([np.arange(n_c), separate_fsr, np.full(n_p, -1)])  # parent candidate
    k_eta = np.concatenate([c_eta, g_eta[separate_fsr], p_eta])
    k_phi = np.concatenate([c_phi, g_phi[separate_fsr], p_phi])
    k_energy = np.concatenate([cluster_e, g_e[separate_fsr], p_pt * np.cosh(p_eta)])
    k_charge = np.concatenate([c_charge, np.zeros(len(separate_fsr), np.int64), np.zeros(n_p, np.int64)])
    k_origin = np.concatenate(
        [c_origin, np.full(len(separate_fsr), Origin.PROMPT_PHOTON, np.int8), np.full(n_p, Origin.FAKE, np.int8)]
    )
    k_true_pt = k_energy / np.cosh(k_eta)
    impact = calo_impact(k_eta, k_phi, pv_z[k_evt], np.maximum(k_true_pt, 0.1), k_charge)
    # Measured cluster position: the resolution acts on eta_SC, i.e. on z at the face.
    endcap = np.abs(impact.sc_eta) >= EB_EE_BOUNDARY
    k_r = impact.r
    k_z = impact.z + k_r * np.cosh(impact.sc_eta) * rng.standard_normal(len(k_evt)) * np.where(
        endcap, _POSITION_RESOLUTION[1], _POSITION_RESOLUTION[0]
    )
    k_sc_eta = np.arcsinh(k_z / k_r)
    k_sc_phi = wrap_phi(impact.sc_phi + rng.standard_normal(len(k_evt)) * np.where(endcap, 0.0015, 0.0010))
    accepted = np.flatnonzero((np.abs(k_sc_eta) < TRACKER_ACCEPTANCE) & (k_true_pt > 0.5 * RECO_PT_MIN))

    k_evt, k_src, k_cand = k_evt[accepted], k_src[accepted], k_cand[accepted]
    k_energy, k_charge, k_origin = k_energy[accepted], k_charge[accepted], k_origin[accepted]
    k_true_pt, k_r, k_z = k_true_pt[accepted], k_r[accepted], k_z[accepted]
    k_sc_eta, k_sc_phi = k_sc_eta[accepted], k_sc_phi[accepted]
    nk = len(k_evt)
    k_abs = np.abs(k_sc_eta)

    showers = sample_showers(
        ClusterKinematics(pt=k_true_pt, sc_eta=k_sc_eta, phi=k_sc_phi, rho=rho[k_evt], origin=k_origin),
        truth.shower,
        rng,
    )
    r9 = showers["r9"].astype(np.float64)
    showering = showers["showering"]
    e_reco, rel_err = _measure_energy(k_energy, k_abs, r9, ev.energy, rng)

    # ---- photons (every cluster)
    from_electron = k_src == _SRC_ELECTRON
    e_pho = e_reco * np.where(from_electron, 1.0 + 0.003 * rng.standard_normal(nk) - 0.004 * showering, 1.0)
    pho_eta = np.arcsinh((k_z - pv_z[k_evt]) / k_r)
    pho_pt = e_pho / np.cosh(pho_eta)

    # ---- electrons (electron candidates only)
    gsf_eff = np.where(k_abs < EB_EE_BOUNDARY, _GSF_EFFICIENCY[0], _GSF_EFFICIENCY[1])
    is_ele_cand = from_electron & ((k_origin == Origin.FAKE) | (rng.random(nk) < gsf_eff))
    cand = np.where(from_electron, k_cand, 0)
    fake = k_origin == Origin.FAKE
    e_track_true = np.where(fake, k_energy / np.exp(0.3 * rng.standard_normal(nk)), e_final[cand])
    sigma_p = (0.01 + 0.0004 * k_true_pt) * np.where(k_abs < EB_EE_BOUNDARY, 1.0, 1.5) * np.where(showering, 2.0, 1.0)
    p_track = e_track_true * (1.0 + sigma_p * rng.standard_normal(nk))
    sigma_e = rel_err
    compatible = np.abs(e_reco - p_track) < 4.0 * np.hypot(sigma_e * e_reco, sigma_p * p_track)
    w_e = sigma_p**2 / (sigma_e**2 + sigma_p**2)
    e_ele = np.where(compatible, w_e * e_reco + (1.0 - w_e) * p_track, e_reco)
    ele_rel_err = np.where(compatible, sigma_e * sigma_p / np.hypot(sigma_e, sigma_p), sigma_e)
    ele_eta = c_eta[cand] + _TRACK_ANGLE_RESOLUTION * rng.standard_normal(nk)
    ele_phi = wrap_phi(c_phi[cand] + _TRACK_ANGLE_RESOLUTION * rng.standard_normal(nk))
    ele_pt = e_ele / np.cosh(ele_eta)

    ele_sel = np.flatnonzero(is_ele_cand & (ele_pt > RECO_PT_MIN))
    pho_sel = np.flatnonzero(pho_pt > RECO_PT_MIN)
    # cluster -> position in the (unsorted) electron / photon lists
    cluster_to_ele = np.full(nk, -1, np.int64)
    cluster_to_ele[ele_sel] = np.arange(len(ele_sel))
    cluster_to_pho = np.full(nk, -1, np.int64)
    cluster_to_pho[pho_sel] = np.arange(len(pho_sel))

    f32 = np.float32
    sh = {k: v[ele_sel] for k, v in showers.items()}
    e = ele_sel
    ne = len(e)
    e_abs = k_abs[e]
    e_showering = showering[e]
    e_prompt = k_origin[e] != Origin.FAKE
    flip_p = 0.0005 + 0.004 * e_showering + 0.015 * np.maximum(e_abs - 1.5, 0.0) * (1.0 + e_showering)
    charge = k_charge[e] * np.where(rng.random(ne) < flip_p, -1, 1)
    # Track-cluster matching, IP and hits: prompt electrons are well matched, fakes are not.
    deta_in = np.where(
        e_prompt, 0.0008 * (1.0 + 0.5 * e_showering) * rng.standard_normal(ne), rng.laplace(0.0, 0.004, ne)
    )
    dphi_in = np.where(
        e_prompt, (0.004 + 0.006 * e_showering) * rng.standard_normal(ne), rng.laplace(0.0, 0.03, ne)
    )
    e_pt = ele_pt[e]
    dxy = np.where(
        e_prompt,
        (0.0008 + 0.04 / e_pt) * rng.standard_normal(ne) + np.where(rng.random(ne) < 0.02, rng.laplace(0, 0.01, ne), 0),
        rng.laplace(0.0, np.where(rng.random(ne) < 0.2, 0.03, 0.008), ne),
    )
    dz = np.where(
        e_prompt,
        (0.0015 + 0.06 / e_pt) * np.cosh(ele_eta[e]) * rng.standard_normal(ne),
        rng.laplace(0.0, 0.02 * np.cosh(ele_eta[e]), ne),
    )
    u_hits = rng.random(ne)
    lost_hits = np.where(
        e_prompt,
        (u_hits > 0.94).astype(np.uint8) + (u_hits > 0.99),
        (u_hits > 0.70).astype(np.uint8) + (u_hits > 0.90) + (u_hits > 0.97),
    ).astype(np.uint8)
    conv_veto = rng.random(ne) < np.where(e_prompt, 0.985, 0.85)
    sc_energy = e_reco[e]
    inv_e_minus_inv_p = 1.0 / sc_energy - 1.0 / np.maximum(p_track[e], 0.1)
    rel_iso = electron_id.relative_isolation(
        sh["pfChargedIsoPFPV"], sh["pfNeutralIso03"], sh["pfPhoIso03"], rho[k_evt[e]], e_pt, e_abs
    )
    cut_based = electron_id.cut_based(
        sieie=sh["sieie"], deta_in_seed=deta_in, dphi_in=dphi_in, hoe=sh["hoe"], sc_energy=sc_energy,
        rho=rho[k_evt[e]], rel_iso=rel_iso, pt=e_pt, inv_e_minus_inv_p=inv_e_minus_inv_p,
        missing_hits=lost_hits, conv_veto=conv_veto, abs_sc_eta=e_abs,
    )
    mva_iso = electron_id.mva_iso(
        r9=sh["r9"], sieie=sh["sieie"], hoe=sh["hoe"], rel_iso=rel_iso, deta_in_seed=deta_in, dphi_in=dphi_in,
        inv_e_minus_inv_p=inv_e_minus_inv_p, missing_hits=lost_hits, conv_veto=conv_veto, abs_sc_eta=e_abs,
    )
    e_barrel = e_abs < EB_EE_BOUNDARY
    seed_energy = 0.75 * sc_energy * sh["r9"]
    electron = {
        "pt": e_pt.astype(f32),
        "eta": ele_eta[e].astype(f32),
        "phi": ele_phi[e].astype(f32),
        "mass": np.full(ne, ELECTRON_MASS, f32),
        "charge": charge.astype(np.int32),
        "pdgId": (-11 * charge).astype(np.int32),
        "cutBased": cut_based,
        "deltaEtaSC": (k_sc_eta[e] - ele_eta[e]).astype(f32),
        "photonIdx": cluster_to_pho[e],  # remapped after sorting
        "r9": sh["r9"],
        "sieie": sh["sieie"],
        "hoe": sh["hoe"],
        "pfRelIso03_all": rel_iso.astype(f32),
        "dxy": dxy.astype(f32),
        "dz": dz.astype(f32),
        "convVeto": conv_veto,
        "lostHits": lost_hits,
        "mvaIso": mva_iso,
        "mvaIso_WP80": mva_iso > np.where(e_barrel, electron_id.MVA_WP80[0], electron_id.MVA_WP80[1]),
        "mvaIso_WP90": mva_iso > np.where(e_barrel, electron_id.MVA_WP90[0], electron_id.MVA_WP90[1]),
        "energyErr": (ele_rel_err[e] * e_ele[e]).astype(f32),
        "scEtOverPt": (sc_energy / np.cosh(k_sc_eta[e]) / e_pt - 1.0).astype(f32),
        "seedGain": _seed_gain(seed_energy, e_barrel),
    }

    p = pho_sel
    npho = len(p)
    shp = {k: v[p] for k, v in showers.items()}
    p_abs = k_abs[p]
    p_barrel = p_abs < EB_EE_BOUNDARY
    p_src = k_src[p]
    p_has_ele = cluster_to_ele[p] >= 0
    u_veto, u_pix = rng.random(npho), rng.random(npho)
    electron_veto = np.select(
        [p_has_ele, p_src == _SRC_ELECTRON, p_src == _SRC_FSR], [u_veto < 0.01, u_veto < 0.6, u_veto < 0.98],
        u_veto < 0.92,
    )
    pixel_seed = np.select(
        [p_has_ele, p_src == _SRC_ELECTRON, p_src == _SRC_FSR],
        [u_pix < 0.97, u_pix < 0.5, u_pix < 0.02 + 0.03 * showering[p]],
        u_pix < 0.08,
    )
    photon = {
        "pt": pho_pt[p].astype(f32),
        "eta": pho_eta[p].astype(f32),
        "phi": k_sc_phi[p].astype(f32),
        "energyRaw": (e_pho[p] * (0.90 + 0.07 * shp["r9"]) / (1.0 + shp["esEnergyOverRawE"])).astype(f32),
        "energyErr": (rel_err[p] * e_pho[p]).astype(f32),
        "superclusterEta": k_sc_eta[p].astype(f32),
        "isScEtaEB": p_abs < CRACK_LOW,
        "isScEtaEE": (p_abs > CRACK_HIGH) & (p_abs < TRACKER_ACCEPTANCE),
        **{k: shp[k] for k in photon_id.MVA_INPUTS if k != "superclusterEta"},
        "electronIdx": cluster_to_ele[p],  # remapped after sorting
        "electronVeto": electron_veto,
        "pixelSeed": pixel_seed,
        "seedGain": _seed_gain(0.75 * e_pho[p] * shp["r9"], p_barrel),
    }
    pho_rho = rho_all[k_evt[p]]
    mva = np.asarray(photon_id.toy_mva_id(photon, pho_rho), dtype=f32)
    photon["mvaID"] = mva
    photon["mvaID_WP80"] = mva > np.where(p_barrel, photon_id.MVA_WP80[0], photon_id.MVA_WP80[1])
    photon["mvaID_WP90"] = mva > np.where(p_barrel, photon_id.MVA_WP90[0], photon_id.MVA_WP90[1])
    photon["cutBased"] = np.asarray(photon_id.toy_cut_based(photon, pho_rho)).astype(np.uint8)

    # ---- trigger
    trig = ev.trigger
    p_fire = (
        trig.plateau
        * np.asarray(trig.id_efficiency)[cut_based]
        * ndtr((e_pt - trig.midpoint) / trig.width)
    )
    fired = rng.random(ne) < p_fire
    hlt = np.bincount(k_evt[e][fired], minlength=n) > 0

    # ---- sort within events, fix cross references
    e_evt, p_evt_sel = k_evt[e], k_evt[p]
    e_order, e_inverse, e_offsets = _sort_within_events(e_evt, -e_pt, n)
    p_order, p_inverse, p_offsets = _sort_within_events(p_evt_sel, -pho_pt[p], n)
    electron["photonIdx"] = _remap(electron["photonIdx"], p_inverse, e_evt, p_offsets)
    photon["electronIdx"] = _remap(photon["electronIdx"], e_inverse, p_evt_sel, e_offsets)

    branches: dict[str, np.ndarray] = {
        "run": run.astype(np.uint32),
        "luminosityBlock": lumi.astype(np.uint32),
        "event": (event_number_offset + first_event + evt_idx + 1).astype(np.uint64),
        "HLT_Ele32_WPTight_Gsf": hlt,
        "PV_npvs": np.minimum(npvs, 255).astype(np.uint8),
        "PV_npvsGood": np.minimum(npvs_good, 255).astype(np.uint8),
        # The coffea Vertex mixin needs x and y too: a 12 um beam spot at a typical Run-3 offset.
        "PV_x": (_BEAM_SPOT_XY[0] + 0.0012 * rng.standard_normal(n)).astype(f32),
        "PV_y": (_BEAM_SPOT_XY[1] + 0.0012 * rng.standard_normal(n)).astype(f32),
        "PV_z": pv_z.astype(f32),
        "Rho_fixedGridRhoAll": rho_all,
        "Rho_fixedGridRhoFastjetAll": rho_fj_all,
        "Rho_fixedGridRhoFastjetCentral": rho_fj_central,
    }

    if mc:
        branches["genWeight"] = np.exp(0.05 * rng.standard_normal(n)).astype(f32)
        branches["Pileup_nTrueInt"] = mu.astype(f32)
        branches["Pileup_nPU"] = n_pu.astype(np.int32)
        gen, e_gen, p_gen = _gen_particles(
            n=n, is_bkg=is_bkg, w_like=w_like, d1=d1, d2=d2, mass=mass, boson_pt=boson_pt, rapidity=rapidity,
            boson_phi=boson_phi, c_prompt=c_prompt, c_pt=c_pt, c_eta=c_eta, c_phi=c_phi, c_charge=c_charge,
            fsr_z=fsr_z, has_fsr=has_fsr, g_pt=g_pt, g_eta=g_eta, g_phi=g_phi,
        )
        # Electrons: prompt ones are matched (through the dressed lepton) to their final-state electron.
        e_cand = k_cand[e]
        e_match = np.where(e_prompt, e_gen[e_cand], -1)
        electron["genPartIdx"] = e_match
        electron["genPartFlav"] = np.where(e_match >= 0, 1, 0).astype(np.uint8)
        # Photons: MCMatcher-like dR < 0.3 and |dpT|/pT < 0.5 to a status-1 electron or photon.
        p_cand = k_cand[p]
        safe_cand = np.maximum(p_cand, 0)
        target = np.select(
            [(p_src == _SRC_ELECTRON) & (k_origin[p] == Origin.PROMPT_ELECTRON), p_src == _SRC_FSR],
            [e_gen[safe_cand], p_gen[safe_cand]],
            -1,
        )
        gen_pt = np.where(p_src == _SRC_FSR, g_pt[safe_cand], c_pt[safe_cand] * (1.0 - fsr_z[safe_cand]))
        gen_eta = np.where(p_src == _SRC_FSR, g_eta[safe_cand], c_eta[safe_cand])
        gen_phi = np.where(p_src == _SRC_FSR, g_phi[safe_cand], c_phi[safe_cand])
        dr = np.hypot(pho_eta[p] - gen_eta, delta_phi(k_sc_phi[p], gen_phi))
        good = (target >= 0) & (dr < 0.3) & (np.abs(pho_pt[p] - gen_pt) < 0.5 * gen_pt)
        photon["genPartIdx"] = np.where(good, target, -1)
        photon["genPartFlav"] = np.where(good, np.where(p_src == _SRC_FSR, 1, 11), 0).astype(np.uint8)
        gen_order, gen_inverse, gen_offsets = _sort_within_events(gen["evt"], gen["rank"], n)
        electron["genPartIdx"] = _remap(electron["genPartIdx"], gen_inverse, e_evt, gen_offsets)
        photon["genPartIdx"] = _remap(photon["genPartIdx"], gen_inverse, p_evt_sel, gen_offsets)
        mother = _remap(gen["mother"], gen_inverse, gen["evt"], gen_offsets)
        genpart = {k: gen[k][gen_order] for k in ("pt", "eta", "phi", "mass", "pdgId", "status", "statusFlags")}
        genpart["genPartIdxMother"] = mother[gen_order]
        gen_counts = np.diff(gen_offsets)

    electron = {k: v[e_order] for k, v in electron.items()}
    photon = {k: v[p_order] for k, v in photon.items()}
    collections = {
        "Electron": Collection(np.diff(e_offsets), electron),
        "Photon": Collection(np.diff(p_offsets), photon),
    }
    if mc:
        collections["GenPart"] = Collection(gen_counts, genpart)
    return EventChunk(branches, collections)


def _seed_gain(seed_energy: FloatArray, barrel: NDArray[np.bool_]) -> NDArray[np.uint8]:
    """MGPA gain of the seed crystal: 12, switching to 6 and 1 at high seed energy."""
    to6 = np.where(barrel, 150.0, 300.0)
    to1 = np.where(barrel, 1700.0, 3400.0)
    return np.select([seed_energy > to1, seed_energy > to6], [1, 6], 12).astype(np.uint8)


def _gen_particles(
    *,
    n: int,
    is_bkg: NDArray[np.bool_],
    w_like: NDArray[np.bool_],
    d1: _FourVectors,
    d2: _FourVectors,
    mass: FloatArray,
    boson_pt: FloatArray,
    rapidity: FloatArray,
    boson_phi: FloatArray,
    c_prompt: NDArray[np.bool_],
    c_pt: FloatArray,
    c_eta: FloatArray,
    c_phi: FloatArray,
    c_charge: IntArray,
    fsr_z: FloatArray,
    has_fsr: NDArray[np.bool_],
    g_pt: FloatArray,
    g_eta: FloatArray,
    g_phi: FloatArray,
) -> tuple[dict[str, np.ndarray], IntArray, IntArray]:
    """Build the ``GenPart`` table (unsorted) with a per-event ``rank`` giving the final order.

    Returns the table (with flat ``mother`` indices into it) and, per hard
    candidate, the flat index of its final-state electron and of its FSR
    photon (-1 if not stored).
    """
    evt = np.arange(n, dtype=np.int64)
    sig = np.flatnonzero(~is_bkg)
    n_c = 2 * n
    cand = np.arange(n_c)
    slot = cand % 2
    cand_evt = cand // 2
    sig_cand = np.flatnonzero(~is_bkg[cand_evt])
    w_cand = np.flatnonzero(w_like[cand_evt] & (slot == 0))
    fsr_cand = np.flatnonzero(has_fsr & c_prompt & (g_pt > _GEN_PHOTON_PT_MIN))

    # Blocks: Z | hard electrons | final electrons (signal + W-like) | FSR photons.
    z_mt = np.hypot(mass[sig], boson_pt[sig])
    z_eta = np.arcsinh(z_mt * np.sinh(rapidity[sig]) / np.maximum(boson_pt[sig], 1e-9))
    final_cand = np.concatenate([sig_cand, w_cand])
    blocks = {
        "evt": (evt[sig], cand_evt[sig_cand], cand_evt[final_cand], cand_evt[fsr_cand]),
        "rank": (np.zeros(len(sig)), 1 + slot[sig_cand], 3 + slot[final_cand], 5 + slot[fsr_cand]),
        "pt": (boson_pt[sig], c_pt[sig_cand], c_pt[final_cand] * (1.0 - fsr_z[final_cand]), g_pt[fsr_cand]),
        "eta": (z_eta, c_eta[sig_cand], c_eta[final_cand], g_eta[fsr_cand]),
        "phi": (boson_phi[sig], c_phi[sig_cand], c_phi[final_cand], g_phi[fsr_cand]),
        "mass": (mass[sig], np.zeros(len(sig_cand)), np.zeros(len(final_cand)), np.zeros(len(fsr_cand))),
        "pdgId": (
            np.full(len(sig), 23),
            -11 * c_charge[sig_cand],
            -11 * c_charge[final_cand],
            np.full(len(fsr_cand), 22),
        ),
        "status": (np.full(len(sig), 62), np.full(len(sig_cand), 23), np.ones(len(final_cand)), np.ones(len(fsr_cand))),
        "statusFlags": (
            np.full(len(sig), _IS_PROMPT + _IS_HARD_PROCESS + _FROM_HARD_PROCESS + _IS_FIRST_COPY + _IS_LAST_COPY),
            np.full(
                len(sig_cand),
                _IS_PROMPT + _IS_HARD_PROCESS + _FROM_HARD_PROCESS + _FROM_HARD_PROCESS_BEFORE_FSR + _IS_FIRST_COPY
                + _IS_LAST_COPY_BEFORE_FSR,
            ),
            np.full(len(final_cand), _IS_PROMPT + _FROM_HARD_PROCESS + _IS_LAST_COPY)
            + np.where(np.arange(len(final_cand)) >= len(sig_cand), _IS_FIRST_COPY, 0),
            np.full(len(fsr_cand), _IS_PROMPT + _FROM_HARD_PROCESS + _IS_FIRST_COPY + _IS_LAST_COPY),
        ),
    }
    table = {k: np.concatenate(v) for k, v in blocks.items()}
    sizes = np.cumsum([0, len(sig), len(sig_cand), len(final_cand), len(fsr_cand)])
    z_of_evt = np.full(n, -1, np.int64)
    z_of_evt[sig] = sizes[0] + np.arange(len(sig))
    hard_of_cand = np.full(n_c, -1, np.int64)
    hard_of_cand[sig_cand] = sizes[1] + np.arange(len(sig_cand))
    final_of_cand = np.full(n_c, -1, np.int64)
    final_of_cand[final_cand] = sizes[2] + np.arange(len(final_cand))
    fsr_of_cand = np.full(n_c, -1, np.int64)
    fsr_of_cand[fsr_cand] = sizes[3] + np.arange(len(fsr_cand))
    # Signal: final e and FSR photon descend from the hard e; W-like: from nothing / the final e.
    radiator = np.where(hard_of_cand >= 0, hard_of_cand, final_of_cand)
    table["mother"] = np.concatenate(
        [np.full(len(sig), -1), z_of_evt[cand_evt[sig_cand]], np.where(hard_of_cand[final_cand] >= 0,
         hard_of_cand[final_cand], -1), radiator[fsr_cand]]
    )
    table["pdgId"] = table["pdgId"].astype(np.int32)
    table["status"] = table["status"].astype(np.int32)
    table["statusFlags"] = table["statusFlags"].astype(np.uint16)
    for k in ("pt", "eta", "phi", "mass"):
        table[k] = table[k].astype(np.float32)
    return table, final_of_cand, fsr_of_cand
