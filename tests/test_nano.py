"""NanoAOD branch lookup: fallbacks, error messages, detector regions."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest

from egproc import nano


def test_region_boundaries():
    eta = np.array([0.0, -1.44, 1.4442, 1.5, -1.566, 1.57, -2.49, 2.5, 3.0])
    np.testing.assert_array_equal(nano.region_mask(eta, "EB"), [1, 1, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(nano.region_mask(eta, "EE"), [0, 0, 0, 0, 0, 1, 1, 0, 0])
    assert nano.region_mask(eta, "all").all()
    with pytest.raises(ValueError, match="unknown detector region 'EF'"):
        nano.region_mask(eta, "EF")


def test_check_tree_resolves_fallbacks_in_order():
    v9 = ["Photon_pt", "Photon_eta", "Photon_r9", "fixedGridRhoFastjetAll", "Electron_eta", "Electron_deltaEtaSC"]
    resolved = nano.check_tree(v9, ["Photon_pt", "Photon_superclusterEta", "Rho_fixedGridRhoAll", "Electron_superclusterEta"], "v9.root")
    assert resolved == {
        "Photon_pt": "Photon_pt",
        "Photon_superclusterEta": "Photon_eta",
        "Rho_fixedGridRhoAll": "fixedGridRhoFastjetAll",
        "Electron_superclusterEta": "Electron_eta+Electron_deltaEtaSC",
    }
    with_both = nano.check_tree([*v9, "Rho_fixedGridRhoFastjetAll"], ["Rho_fixedGridRhoAll"], "x")
    assert with_both["Rho_fixedGridRhoAll"] == "Rho_fixedGridRhoFastjetAll"  # v12 name preferred


def test_missing_branch_message_names_branch_place_and_neighbours():
    with pytest.raises(nano.MissingBranchError) as error:
        nano.check_tree(["Photon_pt", "Photon_r9", "Photon_sieie"], ["Photon_s4"], "old.root:Events")
    message = str(error.value)
    assert message.startswith("branch 'Photon_s4' is missing from old.root:Events")
    with pytest.raises(nano.MissingBranchError, match="Fallbacks tried: Photon_eta"):
        nano.check_tree(["Photon_pt"], ["Photon_superclusterEta"], "f")


def test_electron_supercluster_eta_is_derived_exactly():
    events = ak.Array({"Electron": [[{"eta": 1.0, "deltaEtaSC": 0.25}], []]})
    with pytest.warns(nano.FallbackWarning, match="Electron_eta \\+ Electron_deltaEtaSC"):
        value = nano.column("Electron_superclusterEta", events, "Electron", events.Electron)
    assert value.tolist() == [[1.25], []]


def test_event_level_branches_by_collection_or_flat_name():
    events = ak.Array({"Rho": [{"fixedGridRhoAll": 10.0}], "fixedGridRhoFastjetAll": [11.0], "HLT": [{"Ele32_WPTight_Gsf": True}]})
    assert nano.column("Rho_fixedGridRhoAll", events).tolist() == [10.0]
    assert nano.column("HLT_Ele32_WPTight_Gsf", events).tolist() == [True]
    old = events[["fixedGridRhoFastjetAll"]]
    with pytest.warns(nano.FallbackWarning):
        assert nano.column("Rho_fixedGridRhoAll", old).tolist() == [11.0]
    with pytest.raises(nano.MissingBranchError, match="'HLT_Ele27_WPTight_Gsf' is missing from the events"):
        nano.column("HLT_Ele27_WPTight_Gsf", events)
