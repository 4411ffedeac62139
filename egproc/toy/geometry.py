"""CMS-like electromagnetic-calorimeter geometry for the toy generator.

Everything here is *detector description*: it is identical for data and
simulation.  How strongly a sample reacts to it (e.g. how much containment is
lost in a super-module gap, how much material the simulation is missing) lives
in :mod:`egproc.toy.truth`.

Coordinates follow CMS: :math:`z` along the beam, :math:`r` transverse radius,
:math:`\\eta = \\operatorname{asinh}(z / r)` seen from the nominal interaction
point, :math:`\\phi` the azimuth.  The solenoid field is 3.8 T along :math:`+z`.

Shower position
    A particle produced at :math:`(0, 0, v_z)` with direction :math:`(\\eta, \\phi)`
    reaches the barrel cylinder (:math:`r = R_{EB}`) at
    :math:`z_b = v_z + R_{EB} \\sinh\\eta`.  If :math:`|z_b| \\le Z_{EB}` the shower is in
    the barrel, otherwise it hits the endcap plane :math:`|z| = Z_{EE}` at
    :math:`r_e = (\\pm Z_{EE} - v_z) / \\sinh\\eta`.  The supercluster pseudorapidity is
    the pseudorapidity of the impact point *seen from the origin*, so it differs
    from the physics :math:`\\eta` (seen from the vertex) by
    :math:`\\approx v_z / (R \\cosh\\eta)` — this is why ``Electron_deltaEtaSC`` is
    not zero.  Trajectories that leave the barrel end and reach the endcap face
    at :math:`r > R_{EB}` land in the EB/EE transition ("crack") at
    :math:`1.4442 < |\\eta_{SC}| < 1.566`.

Bending
    A charged particle of transverse momentum :math:`p_T` reaches radius
    :math:`r` at azimuth :math:`\\phi - q \\arcsin(0.3 B r / 2 p_T)` (SI-ish units: GeV,
    T, m), so the cluster azimuth of an electron differs from its track azimuth
    at the vertex.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "B_FIELD",
    "CRACK_HIGH",
    "CRACK_LOW",
    "EB_EE_BOUNDARY",
    "ES_HIGH",
    "ES_LOW",
    "R_EB",
    "TRACKER_ACCEPTANCE",
    "Z_EB",
    "Z_EE",
    "CaloImpact",
    "calo_impact",
    "crack_profile",
    "delta_phi",
    "in_preshower",
    "is_endcap",
    "material_budget",
    "module_gap_profile",
    "supermodule_gap_profile",
    "wrap_phi",
]

FloatArray = NDArray[np.float64]

R_EB: Final = 129.0
"""Radius of the barrel crystal front face [cm]."""
EB_EE_BOUNDARY: Final = 1.479
"""Geometrical barrel/endcap boundary in :math:`|\\eta_{SC}|` (CMS ``isEB``)."""
Z_EB: Final = R_EB * float(np.sinh(EB_EE_BOUNDARY))
"""Half-length of the barrel at the front face [cm]."""
Z_EE: Final = 317.0
"""Distance of the endcap crystal front face from the nominal interaction point [cm]."""
CRACK_LOW: Final = 1.4442
"""Upper edge of the barrel fiducial region (NanoAOD ``isScEtaEB``)."""
CRACK_HIGH: Final = 1.566
"""Lower edge of the endcap fiducial region (NanoAOD ``isScEtaEE``)."""
ES_LOW: Final = 1.653
"""Lower edge of the preshower acceptance in :math:`|\\eta_{SC}|`."""
ES_HIGH: Final = 2.6
"""Upper edge of the preshower acceptance in :math:`|\\eta_{SC}|`."""
TRACKER_ACCEPTANCE: Final = 2.5
"""Electrons (and, in this toy, photons) are reconstructed for :math:`|\\eta_{SC}| < 2.5`."""
B_FIELD: Final = 3.8
"""Solenoid field [T]."""

_N_SUPERMODULES: Final = 18
_MODULE_EDGES: Final = (0.0, 0.435, 0.783, 1.131)
_MODULE_EDGE_WIDTH: Final = 0.015
_CRACK_CENTRE: Final = 0.5 * (CRACK_LOW + CRACK_HIGH)
_CRACK_WIDTH: Final = 0.05


def wrap_phi(phi: FloatArray) -> FloatArray:
    """Map an azimuth to :math:`(-\\pi, \\pi]`."""
    return np.pi - np.mod(np.pi - phi, 2.0 * np.pi)


def delta_phi(a: FloatArray, b: FloatArray) -> FloatArray:
    """Signed azimuthal difference ``a - b`` wrapped to :math:`(-\\pi, \\pi]`."""
    return wrap_phi(a - b)


class CaloImpact:
    """Where a particle showers: supercluster :math:`\\eta`, azimuth and impact point.

    Attributes are plain arrays: ``sc_eta`` (seen from the origin), ``sc_phi``
    (after bending), ``r`` and ``z`` of the impact point in cm.
    """

    __slots__ = ("r", "sc_eta", "sc_phi", "z")

    def __init__(self, sc_eta: FloatArray, sc_phi: FloatArray, r: FloatArray, z: FloatArray) -> None:
        self.sc_eta = sc_eta
        self.sc_phi = sc_phi
        self.r = r
        self.z = z

    def eta_from(self, vz: FloatArray) -> FloatArray:
        """Pseudorapidity of the impact point seen from a vertex at ``(0, 0, vz)``.

        This is how a photon direction is built: from the chosen primary vertex
        to the supercluster position.
        """
        return np.arcsinh((self.z - vz) / self.r)


def calo_impact(
    eta: FloatArray,
    phi: FloatArray,
    vz: FloatArray,
    pt: FloatArray,
    charge: NDArray[np.integer],
) -> CaloImpact:
    """Propagate straight (in :math:`r`-:math:`z`) helices from the vertex to the ECAL front face.

    Parameters
    ----------
    eta, phi
        Direction of the particle at the vertex.
    vz
        Longitudinal vertex position [cm].
    pt
        Transverse momentum [GeV]; only used for the bending of charged particles.
    charge
        Electric charge (0 for photons).
    """
    sinh_eta = np.sinh(eta)
    z_barrel = vz + R_EB * sinh_eta
    barrel = np.abs(z_barrel) <= Z_EB
    z_face = np.copysign(Z_EE, eta)
    # The endcap branch is only selected where |z_barrel| > Z_EB, hence |sinh eta| is
    # bounded away from zero there; the guard only silences the unused barrel lanes.
    safe_sinh = np.where(barrel, 1.0, sinh_eta)
    r_endcap = (z_face - vz) / safe_sinh
    r = np.where(barrel, R_EB, r_endcap)
    z = np.where(barrel, z_barrel, z_face)
    bend_arg = np.minimum(0.3 * B_FIELD * (r / 100.0) / (2.0 * pt), 1.0)
    sc_phi = wrap_phi(phi - charge * np.arcsin(bend_arg))
    return CaloImpact(np.arcsinh(z / r), sc_phi, r, z)


def is_endcap(abs_sc_eta: FloatArray) -> NDArray[np.bool_]:
    """Geometrical endcap (:math:`|\\eta_{SC}| \\ge 1.479`); the crack is split at this line."""
    return abs_sc_eta >= EB_EE_BOUNDARY


def in_preshower(abs_sc_eta: FloatArray) -> NDArray[np.bool_]:
    """Inside the preshower (ES) acceptance, :math:`1.653 < |\\eta_{SC}| < 2.6`."""
    return (abs_sc_eta > ES_LOW) & (abs_sc_eta < ES_HIGH)


def supermodule_gap_profile(sc_phi: FloatArray) -> FloatArray:
    """Proximity to a barrel super-module boundary, in :math:`[0, 1]`.

    The 18 super-modules per half-barrel are 20° wide with inactive material
    between them; :math:`((1 + \\cos 18\\phi) / 2)^{48}` is 1 on a boundary and falls
    to 1/2 about 0.8° away, i.e. within about one crystal (1° in :math:`\\phi`).
    """
    return (0.5 * (1.0 + np.cos(_N_SUPERMODULES * sc_phi))) ** 48


def module_gap_profile(abs_sc_eta: FloatArray) -> FloatArray:
    """Proximity to a barrel module boundary in :math:`\\eta` (0, 0.435, 0.783, 1.131)."""
    profile = np.zeros_like(abs_sc_eta)
    for edge in _MODULE_EDGES:  # four fixed detector boundaries, not a loop over objects
        profile += np.exp(-(((abs_sc_eta - edge) / _MODULE_EDGE_WIDTH) ** 2))
    return profile


def crack_profile(abs_sc_eta: FloatArray) -> FloatArray:
    """Proximity to the EB/EE transition, 1 in the middle of the crack."""
    return np.exp(-(((abs_sc_eta - _CRACK_CENTRE) / _CRACK_WIDTH) ** 2))


def material_budget(abs_eta: FloatArray) -> FloatArray:
    """Tracker material in front of the ECAL, :math:`x / X_0`, as a function of :math:`|\\eta|`.

    A smooth caricature of the CMS tracker material budget: about 0.4
    :math:`X_0` at :math:`\\eta = 0`, a maximum of about 2.2 :math:`X_0` around the EB/EE
    transition (services and support structures) and about 1 :math:`X_0` at
    :math:`|\\eta| = 2.5`,

    .. math:: t(|\\eta|) = 0.4 + 1.4\\, e^{-((|\\eta| - 1.5)/0.5)^2} + 0.25 |\\eta|.
    """
    return 0.4 + 1.4 * np.exp(-(((abs_eta - 1.5) / 0.5) ** 2)) + 0.25 * abs_eta
