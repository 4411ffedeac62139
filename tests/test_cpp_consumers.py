"""Bundle files are usable without egproc: libtorch C++ and correctionlib C++ give Python's outputs.

``tests/cpp/consumer.cpp`` is compiled once against the libtorch inside the installed torch wheel
and the C++ library shipped with the correctionlib wheel; it reads raw little-endian inputs and
writes raw outputs, which are compared with ``torch.jit.load`` and Python correctionlib.
"""

from __future__ import annotations

import gzip
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import correctionlib
import correctionlib.schemav2 as cs
import numpy as np
import pytest
import torch
import torch.utils.cpp_extension as cpp_extension

from conftest import write_known_bundle
from egproc import cqr, fudge, reweight
from egproc.bundle import CORRECTIONS
from egproc.variables import ABS_ETA_EDGES, ISOLATIONS, PT_EDGES, variable

SOURCE = Path(__file__).parent / "cpp" / "consumer.cpp"
SHIPPED_BUNDLE = Path(__file__).resolve().parents[1] / "corrections" / "toy-fudge"


@pytest.fixture(scope="module")
def consumer(tmp_path_factory) -> Path:
    """The consumer binary, compiled once for the module."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("g++ is not installed: cannot build the C++ consumer of bundle files")
    correctionlib_flags = subprocess.run(
        [sys.executable, "-m", "correctionlib.cli", "config", "--cflags", "--ldflags", "--rpath"],
        check=True, capture_output=True, text=True,
    ).stdout
    torch_lib = cpp_extension.library_paths()[0]
    binary = tmp_path_factory.mktemp("cpp") / "consumer"
    command = [
        compiler, "-std=c++17", "-O1", "-Wall", str(SOURCE), "-o", str(binary),
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        *(f"-I{path}" for path in cpp_extension.include_paths()),
        *shlex.split(correctionlib_flags),  # -std=c++17 -I… -L… -lcorrectionlib -Wl,-rpath,…
        f"-L{torch_lib}", f"-Wl,-rpath,{torch_lib}", "-ltorch", "-ltorch_cpu", "-lc10",
    ]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, f"compiling the consumer failed:\n{shlex.join(command)}\n{result.stderr}"
    print(f"compiled {binary.name} in {time.perf_counter() - start:.1f} s")
    return binary


def run_consumer(binary: Path, *args) -> str:
    result = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"consumer {args[0]} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def evaluate_cpp_correction(binary: Path, json_path: Path, name: str, inputs: np.ndarray, workdir: Path) -> np.ndarray:
    n, k = inputs.shape
    input_path, output_path = workdir / f"{name}.in.bin", workdir / f"{name}.out.bin"
    np.ascontiguousarray(inputs, dtype="<f8").tofile(input_path)
    stdout = run_consumer(binary, "correctionlib", json_path, name, input_path, n, k, output_path)
    assert f"output shape: [{n}]" in stdout
    return np.fromfile(output_path, dtype="<f8")


def assert_corrections_identical(binary: Path, json_path: Path, inputs_of, workdir: Path) -> None:
    """Every correction of ``json_path``, in C++ and Python correctionlib: identical doubles."""
    cset = correctionlib.CorrectionSet.from_file(str(json_path))
    assert len(cset) > 0
    for name, correction in cset.items():
        types = [variable.type for variable in correction.inputs]
        assert set(types) == {"real"}, f"{name}: the consumer feeds real inputs only, got {types}"
        inputs = inputs_of([variable.name for variable in correction.inputs])
        expected = correction.evaluate(*inputs.T)
        got = evaluate_cpp_correction(binary, json_path, name, inputs, workdir)
        assert np.all(np.isfinite(expected)), name
        # Same correctionlib C++ code on the same doubles: no tolerance.
        assert np.array_equal(got, expected), f"{name}: C++ and Python correctionlib differ"


def random_inputs(rng: np.random.Generator, names: list[str], n: int = 4000) -> np.ndarray:
    """Inputs by name, beyond the binning on purpose (clamped edge bins) and with the bin edges."""
    columns = []
    for name in names:
        if name == "pt":
            edges = np.asarray(PT_EDGES)
            values = rng.uniform(0.0, 400.0, n)
        elif "eta" in name.lower():
            edges = np.concatenate([ABS_ETA_EDGES, -np.asarray(ABS_ETA_EDGES)])
            values = rng.uniform(-3.5, 3.5, n)
        elif name == "rho":
            edges = np.asarray(reweight.RHO_EDGES)
            values = rng.uniform(-5.0, 120.0, n)
        else:  # a corrected variable: several orders of magnitude, exact zeros and negatives
            edges = np.array([0.0, -0.0, 1e-300, -1e-300])
            values = rng.choice([-1.0, 1.0], n) * 10.0 ** rng.uniform(-5.0, 1.5, n)
        values[: len(edges)] = edges
        columns.append(rng.permutation(values))
    return np.stack(columns, axis=1)


def fudge_factors(rng: np.random.Generator, field: str) -> fudge.FudgeFactors:
    shape = (len(PT_EDGES) - 1, len(ABS_ETA_EDGES) - 1)
    applied = rng.random(shape) > 0.2
    applied[:, 2] = False  # the barrel/endcap transition, as fudge.derive
    scale = {"sieie": 0.01, "esEffSigmaRR": 5.0}[field]
    return fudge.FudgeFactors(
        variable=variable(field),
        pt_edges=PT_EDGES,
        abs_eta_edges=ABS_ETA_EDGES,
        mean_data=np.where(applied, rng.uniform(0.9, 1.1, shape) * scale, 0.0),
        mean_mc=np.where(applied, rng.uniform(0.9, 1.1, shape) * scale, 0.0),
        width_ratio=np.where(applied, rng.uniform(0.8, 1.2, shape), 1.0),
        n_eff_data=rng.uniform(0, 1e4, shape),
        n_eff_mc=rng.uniform(0, 1e4, shape),
        applied=applied,
    )


def test_torchscript_model_in_libtorch(consumer, tmp_path):
    folder = write_known_bundle(tmp_path / "known-shift")
    model_path = folder / "known_shift.pt"
    rng = np.random.default_rng(11)
    n = 5000
    x = np.column_stack(
        [rng.uniform(0.4, 1.1, n), rng.uniform(0.0, 0.04, n), rng.exponential(30, n) + 15, rng.gamma(9, 2.5, n)]
    ).astype(np.float32)
    info = np.finfo(np.float32)
    edges = np.array([0.0, -0.0, 1.0, -1.0, info.tiny, info.smallest_subnormal, info.max, -info.max,
                      np.inf, -np.inf, np.nan, 1e30, -1e30, 1e-30], dtype=np.float32)
    for column in range(4):  # every edge value in every input column, other columns ordinary
        x[column * len(edges) : (column + 1) * len(edges), column] = edges
    input_path, output_path = tmp_path / "x.bin", tmp_path / "y.bin"
    x.astype("<f4").tofile(input_path)

    stdout = run_consumer(consumer, "torch", model_path, input_path, n, 4, output_path)
    assert "output shape: [5000, 3]" in stdout
    got = np.fromfile(output_path, dtype="<f4").reshape(n, 3)

    with torch.no_grad():
        expected = torch.jit.load(str(model_path)).eval()(torch.from_numpy(x)).numpy()
    assert expected.shape == (n, 3)
    # The same libtorch_cpu.so runs the same kernels on the same float32 inputs: bitwise equal
    # (NaN where the inputs make one, in the same places).
    assert np.array_equal(got, expected, equal_nan=True)


def test_correctionlib_json_in_cpp(consumer, tmp_path):
    rng = np.random.default_rng(5)
    n_rho = len(reweight.RHO_EDGES) - 1
    empty = np.zeros(n_rho, dtype=bool)
    empty[-2:] = True
    weights = np.where(empty, 1.0, rng.uniform(0.5, 1.5, n_rho))
    cset = cs.CorrectionSet(
        schema_version=2,
        corrections=[
            reweight.rho_weight_correction(weights, empty),
            fudge.to_correction(fudge_factors(rng, "sieie")),
            fudge.to_correction(fudge_factors(rng, "esEffSigmaRR")),  # the (x>0)* zero-peak form
        ],
    )
    json_path = tmp_path / CORRECTIONS
    # As egproc.bundle.write does.
    json_path.write_bytes(gzip.compress(cset.model_dump_json(exclude_unset=True).encode(), mtime=0))
    assert_corrections_identical(consumer, json_path, lambda names: random_inputs(rng, names), tmp_path)


@pytest.mark.skipif(
    not SHIPPED_BUNDLE.is_dir(), reason=f"no shipped bundle at {SHIPPED_BUNDLE} (written by the training job)"
)
def test_shipped_bundle_corrections_in_cpp(consumer, tmp_path):
    json_path = SHIPPED_BUNDLE / CORRECTIONS
    assert json_path.is_file(), f"{SHIPPED_BUNDLE} has no {CORRECTIONS}"
    rng = np.random.default_rng(3)
    assert_corrections_identical(consumer, json_path, lambda names: random_inputs(rng, names), tmp_path)


@pytest.mark.parametrize("method", ["cqr", "flow"])
def test_shipped_network_correction_in_libtorch(consumer, tmp_path, method):
    """The whole correction of a region gives the same floats in libtorch C++ as in Python: for
    CQR every network, the chain, the morphing and the zero-peak migration; for the flow the
    encoding, the flow forward as MC, its inverse as data, and the decoding."""
    folder = Path(__file__).resolve().parents[1] / "corrections" / f"toy-{method}"
    rng = np.random.default_rng(5)
    n = 3000
    for region, chain in cqr.CHAINS.items():
        n_variables, n_uniforms = len(chain), sum(v in cqr.ZERO_PEAK for v in chain)
        model_path = folder / f"{method}_{region}_nominal.pt"
        eta = rng.uniform(0.0, 1.44, n) if region == "EB" else rng.uniform(1.57, 2.5, n)
        conditions = np.column_stack([rng.uniform(20, 150, n), eta * rng.choice([-1, 1], n), rng.uniform(-np.pi, np.pi, n), rng.uniform(0, 45, n)])
        # Plausible raw values: sieip around 0, fractions below 1, widths, zero peaks with tails
        # (GeV for isolations, a few percent for H/E).
        variables = np.abs(rng.normal(0.0, 1.0, (n, n_variables))) * 0.01 + 0.005
        column = {v: chain.index(v) for v in chain}
        variables[:, column["sieip"]] = rng.normal(0.0, 1e-4, n)
        variables[:, [column["s4"], column["r9"]]] = rng.uniform(0.5, 1.0, (n, 2))
        for field in ("hoe", *(v.field for v in ISOLATIONS)):
            scale = 0.02 if field == "hoe" else 2.0
            variables[:, column[field]] = np.where(rng.random(n) < 0.4, 0.0, rng.exponential(scale, n))
        x = np.column_stack([conditions, variables, rng.random((n, n_uniforms))]).astype(np.float32)
        module = torch.jit.load(str(model_path))
        with torch.no_grad():
            expected = module(torch.from_numpy(x)).numpy()
        input_path, output_path = tmp_path / f"{region}.in.bin", tmp_path / f"{region}.out.bin"
        np.ascontiguousarray(x, dtype="<f4").tofile(input_path)
        stdout = run_consumer(consumer, "torch", model_path, input_path, n, x.shape[1], output_path)
        assert f"output shape: [{n}, {n_variables}]" in stdout
        got = np.fromfile(output_path, dtype="<f4").reshape(n, n_variables)
        assert np.all(np.isfinite(expected))
        np.testing.assert_array_equal(got, expected)
