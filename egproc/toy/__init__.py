"""Toy NanoAOD Z→ee tag-and-probe samples with a known data/simulation mismodelling.

No collision data are reachable from egproc's development environment, so
this generator provides the ground truth for every quality claim: "data"
and "MC" files in the NanoAOD v12+ layout whose e/gamma shower shapes and
isolations differ in a documented, kinematics-dependent way
(:mod:`egproc.toy.truth`), plus an independent second data replica for the
data-vs-data noise floor.

>>> from egproc.toy import generate_samples
>>> if __name__ == "__main__":                      # doctest: +SKIP
...     paths = generate_samples("toy", n_events=1_000_000, seed=42)

Modules: :mod:`~egproc.toy.truth` (data and MC truth, shower sampler),
:mod:`~egproc.toy.events` (event physics and reconstruction),
:mod:`~egproc.toy.photon_id` / :mod:`~egproc.toy.electron_id` (IDs),
:mod:`~egproc.toy.geometry` (calorimeter), :mod:`~egproc.toy.schema`
(branches and types), :mod:`~egproc.toy.writer` (ROOT output, seeding).
"""

from egproc.toy.photon_id import MVA_INPUTS, MVA_WP80, MVA_WP90, toy_cut_based, toy_mva_id
from egproc.toy.schema import branch_types
from egproc.toy.truth import (
    SHOWER_VARIABLES,
    ClusterKinematics,
    EventTruth,
    Origin,
    SampleTruth,
    ShowerTruth,
    sample_showers,
)
from egproc.toy.writer import SAMPLES, generate_sample, generate_samples

__all__ = [
    "MVA_INPUTS",
    "MVA_WP80",
    "MVA_WP90",
    "SAMPLES",
    "SHOWER_VARIABLES",
    "ClusterKinematics",
    "EventTruth",
    "Origin",
    "SampleTruth",
    "ShowerTruth",
    "branch_types",
    "generate_sample",
    "generate_samples",
    "sample_showers",
    "toy_cut_based",
    "toy_mva_id",
]
