"""Correction bundles: the folder a training command writes and a processor loads.

A bundle is one folder::

    corrections.json.gz   correctionlib CorrectionSet (schema v2): binned corrections, event weights
    *.pt                  TorchScript modules, raw inputs → corrected outputs (standardisation inside)
    bundle.json           the manifest below: which step reads which branches and writes which
                          outputs, every file's sha256, egproc version and training provenance

The manifest is the API (as the CorrectionSet is correctionlib's): :class:`Manifest` is its pydantic
schema, and every file in the folder stays usable without egproc (the JSON with plain correctionlib,
the models with ``torch.jit.load`` or libtorch). :func:`load` verifies every checksum before anything
runs; :meth:`Bundle.apply` is the per-chunk call::

    bundle = egproc.load("corrections/toy-fudge")            # once
    photons = bundle.apply(events.Photon, events)            # per chunk: eager, virtual or dask

Steps run in manifest order on the objects of their detector region; a step sees the outputs of the
steps before it, so a bundle can chain corrections. Each step belongs to one variation (``nominal``,
``up``, ``down``, …) and ``apply(..., variation=...)`` runs that variation's steps.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import json
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from egproc import engine, nano

__all__ = [
    "FORMAT_VERSION",
    "ArtefactFile",
    "Validity",
    "CorrectionlibStep",
    "TorchScriptStep",
    "EventWeight",
    "Manifest",
    "Bundle",
    "load",
    "write",
    "rebuild_models",
]

FORMAT_VERSION = 1
MANIFEST = "bundle.json"
CORRECTIONS = "corrections.json.gz"

#: Detector regions a step can be restricted to (see :func:`egproc.nano.region_mask`);
#: ``EB+EE`` is the instrumented ECAL without the barrel/endcap transition.
StepRegion = Literal["all", "EB", "EE", "EB+EE"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArtefactFile(_Model):
    """A file of the bundle and the sha256 of its content."""

    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Validity(_Model):
    """A correction of the CorrectionSet that is > 0 where a step's models are valid (e.g. the
    training range in pT and ρ); other objects are passed through and flagged not covered."""

    correction: str
    inputs: tuple[str, ...]


class CorrectionlibStep(_Model):
    """Evaluate a correction of the bundle's CorrectionSet and write its result to ``output``.

    ``inputs`` are the branches fed to the correction's inputs, in the correction's order; ``int``
    inputs receive the exact integers (run, luminosityBlock, event), ``real`` inputs doubles. A
    correctionlib ``hashprng`` node over (run, luminosityBlock, event, the object's raw pT, η, φ)
    gives per-object random numbers that depend on nothing else: not on chunking, workers, or
    which selection of the collection is corrected.
    """

    kind: Literal["correctionlib"] = "correctionlib"
    correction: str
    inputs: tuple[str, ...]
    output: str
    region: StepRegion = "all"
    variation: str = "nominal"
    keep: bool = Field(True, description="write the output back as a field (False: used by later steps only)")
    validity: Validity | None = None

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.output,)


class TorchScriptStep(_Model):
    """Run a TorchScript module: float32 [n, len(inputs)] → float32 [n, len(outputs)]."""

    kind: Literal["torchscript"] = "torchscript"
    model: ArtefactFile
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    region: StepRegion = "all"
    variation: str = "nominal"
    keep: bool = Field(True, description="write the outputs back as fields (False: used by later steps only)")
    validity: Validity | None = None


Step = Annotated[Union[CorrectionlibStep, TorchScriptStep], Field(discriminator="kind")]


class EventWeight(_Model):
    """A per-event weight the correction was derived with (e.g. the MC→data ρ reweighting)."""

    name: str
    correction: str
    inputs: tuple[str, ...]


class Manifest(_Model):
    """Schema of ``bundle.json``."""

    format: Literal["egproc-bundle"] = "egproc-bundle"
    format_version: Literal[1] = FORMAT_VERSION
    name: str
    method: str
    collection: str = Field(description="NanoAOD collection the bundle corrects, e.g. Photon")
    description: str
    egproc_version: str
    created: str
    corrections: ArtefactFile
    steps: tuple[Step, ...]
    event_weights: tuple[EventWeight, ...] = ()
    provenance: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_steps(self) -> "Manifest":
        prefix = self.collection + "_"
        for step in self.steps:
            for output in step.outputs:
                if not output.startswith(prefix):
                    raise ValueError(f"step output {output!r} is not a {self.collection} branch")
        if "nominal" not in self.variations:
            raise ValueError("a bundle needs nominal steps")
        return self

    @property
    def variations(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(step.variation for step in self.steps))

    def artefacts(self) -> list[ArtefactFile]:
        models = [s.model for s in self.steps if isinstance(s, TorchScriptStep)]
        return [self.corrections, *dict.fromkeys(models)]


def _region_rows(supercluster_eta: np.ndarray, region: StepRegion) -> np.ndarray:
    if region == "EB+EE":
        return nano.region_mask(supercluster_eta, "EB") | nano.region_mask(supercluster_eta, "EE")
    return nano.region_mask(supercluster_eta, region)


class Bundle:
    """A verified bundle folder; cheap to pickle (path and checksum only)."""

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        manifest_sha256: str,
        *,
        device: str = "auto",
        batch_size: int | None = None,
    ):
        self.path = path
        self.manifest = manifest
        self.manifest_sha256 = manifest_sha256
        self.device = device
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return (
            f"<egproc.Bundle {self.manifest.name!r} ({self.manifest.method}, "
            f"{self.manifest.collection}) at {self.path}>"
        )

    def __reduce__(self):
        # What crosses to a worker: the folder and the manifest's checksum. The worker re-verifies
        # and loads from its process cache (see egproc.engine.load_artefact).
        return (_restore, (str(self.path), self.manifest_sha256, self.device, self.batch_size))

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def variations(self) -> tuple[str, ...]:
        return self.manifest.variations

    @property
    def correction_set(self) -> Any:
        """The bundle's correctionlib CorrectionSet (loaded once per process)."""
        return engine.load_artefact(self._file(self.manifest.corrections), self.manifest.corrections.sha256)

    def _file(self, artefact: ArtefactFile) -> Path:
        return self.path / artefact.file

    def steps(self, variation: str = "nominal") -> tuple[CorrectionlibStep | TorchScriptStep, ...]:
        if variation not in self.variations:
            raise ValueError(
                f"bundle {self.name!r} has no variation {variation!r}; it has {list(self.variations)}"
            )
        return tuple(s for s in self.manifest.steps if s.variation == variation)

    def step_branches(self, variation: str = "nominal") -> tuple[str, ...]:
        """The branches the steps of ``variation`` read from the input (the region needs
        supercluster η); columns an earlier step produces are not read."""
        branches: list[str] = []
        produced: set[str] = set()
        for step in self.steps(variation):
            needed = [
                *step.inputs,
                *([f"{self.manifest.collection}_superclusterEta"] if step.region != "all" else []),
                *(step.validity.inputs if step.validity is not None else ()),
            ]
            branches.extend(b for b in needed if b not in produced)
            produced.update(step.outputs)
        return tuple(dict.fromkeys(branches))

    def required_branches(self, variation: str = "nominal") -> tuple[str, ...]:
        """Every branch the bundle reads (steps and event weights), for checks before a run."""
        weights = (b for w in self.manifest.event_weights for b in w.inputs)
        return tuple(dict.fromkeys((*self.step_branches(variation), *weights)))

    def check_file(self, path: str | Path, tree: str = "Events", variation: str = "nominal") -> dict[str, str]:
        """Check a ROOT file has every branch the bundle needs (with fallbacks); name what is missing."""
        import uproot

        with uproot.open(path) as handle:
            keys = handle[tree].keys()
        return nano.check_tree(keys, self.required_branches(variation), f"{path}:{tree}")

    def apply(self, collection: Any, events: Any = None, *, variation: str = "nominal") -> Any:
        """Return ``collection`` with corrected fields; raw values kept as ``raw_<field>``.

        Adds ``egproc_ok`` (True where the object was corrected) and ``egproc_status`` (bit mask of
        why not; see :mod:`egproc.engine`).
        """
        return engine.apply_columnar(
            _Variation(self, variation), collection, events, label=f"egproc-{self.name}-{variation}"
        )

    def event_weight(self, name: str, events: Any) -> Any:
        """Per-event weight ``name`` (e.g. ``"rho"``) evaluated on eager, virtual or dask events."""
        weights = {w.name: w for w in self.manifest.event_weights}
        if name not in weights:
            raise KeyError(f"bundle {self.name!r} has no event weight {name!r}; it has {list(weights)}")
        weight = weights[name]
        columns = nano.locate(weight.inputs, self.manifest.collection, events, events)
        arrays = [nano.fetch(columns[b], None, events) for b in weight.inputs]
        if engine.is_dask(arrays[0]):
            import dask_awkward as dak

            return dak.map_partitions(
                _evaluate_weight, *arrays, bundle=self, correction=weight.correction,
                label=f"egproc-{self.name}-weight-{name}",
            )
        return _evaluate_weight(*arrays, bundle=self, correction=weight.correction)


def _evaluate_weight(*arrays: Any, bundle: Bundle, correction: str) -> Any:
    import awkward as ak

    if ak.backend(arrays[0]) == "typetracer":
        for array in arrays:
            ak.typetracer.touch_data(array)
        return ak.values_astype(arrays[0], np.float64)
    values = [ak.to_numpy(a).astype(np.float64) for a in arrays]
    return ak.Array(bundle.correction_set[correction].evaluate(*values))


@dataclass(frozen=True)
class _Variation:
    """One variation of a bundle, in the shape :func:`egproc.engine.apply_columnar` applies."""

    bundle: Bundle
    variation: str

    @property
    def collection(self) -> str:
        return self.bundle.manifest.collection

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.bundle.step_branches(self.variation)

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(o for s in self.bundle.steps(self.variation) if s.keep for o in s.outputs))

    def evaluate(self, columns: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        bundle = self.bundle
        steps = bundle.steps(self.variation)
        current = dict(columns)
        n_rows = len(next(iter(columns.values())))
        covered = np.zeros(n_rows, dtype=bool)
        eta_branch = f"{bundle.manifest.collection}_superclusterEta"
        device = engine.resolve_device(bundle.device)
        # What the steps share is computed once and kept while no step overwrites what it was
        # computed from: each region's mask; each validity, evaluated at once on the objects of
        # every region a step uses it for (only there, as it may be undefined elsewhere); and each
        # input column selected on a step's rows (and cast for correctionlib). The flow's uniforms,
        # validity and modules read the same raw columns of the same objects.
        regions: dict[str, np.ndarray] = {}
        validities: dict[Validity, np.ndarray] = {}
        selections: dict[tuple[str, str, Validity | None, str], np.ndarray] = {}

        def region(name: str) -> np.ndarray:
            if name not in regions:
                regions[name] = np.ones(n_rows, dtype=bool) if name == "all" else _region_rows(current[eta_branch], name)
            return regions[name]

        def valid(validity: Validity) -> np.ndarray:
            if validity not in validities:
                candidates = np.flatnonzero(
                    np.logical_or.reduce([region(s.region) for s in steps if s.validity == validity])
                )
                inside = _evaluate(
                    bundle.correction_set[validity.correction],
                    {b: current[b][candidates] for b in validity.inputs},
                    validity.inputs,
                )
                mask = np.zeros(n_rows, dtype=bool)
                mask[candidates[inside > 0]] = True
                validities[validity] = mask
            return validities[validity]

        def selected(branch: str, step: CorrectionlibStep | TorchScriptStep, rows: np.ndarray, dtype: str = "") -> np.ndarray:
            """``branch`` on the rows of ``step`` (its region and validity), optionally cast."""
            key = (branch, step.region, step.validity, dtype)
            if key not in selections:
                selections[key] = current[branch][rows] if not dtype else selected(branch, step, rows).astype(dtype)
            return selections[key]

        for step in steps:
            rows = region(step.region)
            if step.validity is not None:
                rows = rows & valid(step.validity)
            if not rows.any():
                continue
            if step.keep:  # an internal column (keep=False) corrects nothing by itself
                covered |= rows
            if isinstance(step, CorrectionlibStep):
                correction = bundle.correction_set[step.correction]
                corrected = correction.evaluate(*[
                    selected(b, step, rows, _input_dtype(v)) for b, v in zip(step.inputs, correction.inputs)
                ])
                results = {step.output: np.asarray(corrected, dtype=np.float32)}
            else:
                module = engine.load_artefact(bundle._file(step.model), step.model.sha256, device)
                matrix = engine.run_batched(
                    module,
                    np.stack([selected(b, step, rows) for b in step.inputs], axis=1).astype(np.float32, copy=False),
                    len(step.outputs),
                    device=device,
                    batch_size=bundle.batch_size,
                )
                results = {name: matrix[:, j] for j, name in enumerate(step.outputs)}
            for branch, values in results.items():
                column = current[branch].astype(np.float32) if branch in current else np.full(n_rows, np.nan, np.float32)
                column[rows] = values
                current[branch] = column
                if branch == eta_branch:  # every region, validity and selection is stale
                    regions.clear()
                    validities.clear()
                    selections.clear()
                elif any(branch in v.inputs for v in validities):  # some steps' rows are stale
                    validities = {v: mask for v, mask in validities.items() if branch not in v.inputs}
                    selections.clear()
                else:
                    selections = {key: cached for key, cached in selections.items() if key[0] != branch}
        return {b: current[b] for b in self.outputs}, covered


def _input_dtype(variable: Any) -> str:
    """What a correctionlib input takes: exact integers for ``int`` inputs (run, event numbers),
    doubles otherwise."""
    return "int64" if variable.type == "int" else "float64"


def _evaluate(correction: Any, columns: Mapping[str, np.ndarray], branches: Sequence[str]) -> np.ndarray:
    """A correctionlib correction on columns, each cast as the input takes it (:func:`_input_dtype`)."""
    return correction.evaluate(*[columns[b].astype(_input_dtype(v)) for b, v in zip(branches, correction.inputs)])


_bundles: dict[tuple[str, str, str, int | None], Bundle] = {}


def _restore(path: str, manifest_sha256: str, device: str, batch_size: int | None) -> Bundle:
    key = (path, manifest_sha256, device, batch_size)
    cached = _bundles.get(key)
    if cached is None:
        # The client checked the models' signatures when it loaded the bundle; a worker only
        # re-verifies checksums, so a GPU worker holds its models on the GPU alone.
        cached = load(path, device=device, batch_size=batch_size, expected_sha256=manifest_sha256, check_models=False)
        _bundles[key] = cached
    return cached


def load(
    path: str | Path,
    *,
    device: str = "auto",
    batch_size: int | None = None,
    expected_sha256: str | None = None,
    check_models: bool = True,
) -> Bundle:
    """Open a bundle folder, verify every file's checksum and every model's signature.

    ``device`` (``auto``, ``cpu``, ``cuda:N``) is resolved where the correction runs, so a bundle
    loaded on a laptop runs on a worker's GPU. Raises :class:`egproc.engine.ChecksumError` naming the
    file for any modified artefact. ``check_models=False`` skips the probe evaluation of each model
    (used where a bundle is restored on a worker, after the client has checked it). ``batch_size``
    is the rows per model call (``None``: by device, :func:`egproc.engine.run_batched`).
    """
    folder = Path(path).resolve()
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{folder} is not an egproc bundle: it has no {MANIFEST}")
    raw = manifest_path.read_bytes()
    manifest_sha256 = engine.sha256_of(raw)
    if expected_sha256 is not None and manifest_sha256 != expected_sha256:
        raise engine.ChecksumError(
            f"{manifest_path}: sha256 is {manifest_sha256}, but {expected_sha256} was expected; the "
            "bundle changed after the job that uses it was set up"
        )
    manifest = Manifest.model_validate_json(raw)
    bundle = Bundle(folder, manifest, manifest_sha256, device=device, batch_size=batch_size)
    for artefact in manifest.artefacts():
        file = folder / artefact.file
        if not file.is_file():
            raise FileNotFoundError(f"bundle {manifest.name!r}: {file} is listed but missing")
        actual = engine.sha256_of(file)
        if actual != artefact.sha256:
            raise engine.ChecksumError(
                f"bundle {manifest.name!r}: {file} has sha256 {actual}, but bundle.json records "
                f"{artefact.sha256}; the file was modified or corrupted, refusing to load the bundle"
            )
    if check_models:
        _check_signatures(bundle)
    return bundle


def _check_signatures(bundle: Bundle) -> None:
    import torch

    cset = bundle.correction_set
    names = set(cset.keys())
    for step in bundle.manifest.steps:
        if step.validity is not None:
            if step.validity.correction not in names:
                raise KeyError(f"bundle {bundle.name!r}: validity correction {step.validity.correction!r} is missing")
            declared = len(cset[step.validity.correction].inputs)
            if declared != len(step.validity.inputs):
                raise engine.ModelSignatureError(
                    f"bundle {bundle.name!r}: validity correction {step.validity.correction!r} takes {declared} "
                    f"inputs, the step feeds {len(step.validity.inputs)}"
                )
        if isinstance(step, CorrectionlibStep):
            if step.correction not in names:
                raise KeyError(f"bundle {bundle.name!r}: correction {step.correction!r} is not in the CorrectionSet")
            declared = len(cset[step.correction].inputs)
            if declared != len(step.inputs):
                raise engine.ModelSignatureError(
                    f"bundle {bundle.name!r}: correction {step.correction!r} takes {declared} inputs, "
                    f"the step feeds {len(step.inputs)}"
                )
            continue
        # The signature is checked on the module as saved (load verified its checksum just before);
        # freezing it, as the engine does for a run, took about a second per flow module and is
        # left to the process that applies it.
        module = torch.jit.load(str(bundle._file(step.model)), map_location="cpu").eval()
        probe = torch.zeros((2, len(step.inputs)), dtype=torch.float32)
        try:
            with torch.inference_mode():
                output = module(probe)
        except Exception as error:
            raise engine.ModelSignatureError(
                f"{step.model.file}: the model does not accept float32 [n, {len(step.inputs)}] "
                f"({', '.join(step.inputs)}): {error}"
            ) from error
        if not isinstance(output, torch.Tensor) or output.dtype != torch.float32 or tuple(output.shape) != (2, len(step.outputs)):
            raise engine.ModelSignatureError(
                f"{step.model.file}: returns {getattr(output, 'dtype', type(output))} "
                f"{tuple(getattr(output, 'shape', ()))} for 2 rows; bundle.json declares float32 "
                f"[n, {len(step.outputs)}] ({', '.join(step.outputs)})"
            )
    for weight in bundle.manifest.event_weights:
        if weight.correction not in names:
            raise KeyError(f"bundle {bundle.name!r}: event weight correction {weight.correction!r} is missing")


def write(
    folder: str | Path,
    *,
    name: str,
    method: str,
    collection: str,
    description: str,
    correction_set: Any,
    steps: Sequence[CorrectionlibStep | TorchScriptStep | Mapping[str, Any]],
    models: Mapping[str, Any] | None = None,
    event_weights: Sequence[EventWeight] = (),
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write a bundle folder: the CorrectionSet, TorchScript ``models`` (file name → scripted
    module), and the manifest with every sha256. TorchScript steps may give ``model`` as a bare file
    name; its checksum is filled in here. Returns the folder."""
    import torch

    from egproc import __version__

    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    corrections_path = folder / CORRECTIONS
    payload = correction_set.model_dump_json(exclude_unset=True) if hasattr(correction_set, "model_dump_json") else json.dumps(correction_set)
    # mtime=0 keeps the gzip bytes, hence the checksum, a function of the content alone.
    corrections_path.write_bytes(gzip.compress(payload.encode(), mtime=0))
    checksums = {CORRECTIONS: engine.sha256_of(corrections_path)}
    for file_name, module in (models or {}).items():
        target = folder / file_name
        torch.jit.save(module, str(target))
        checksums[file_name] = engine.sha256_of(target)
    resolved_steps = []
    for step in steps:
        data = dict(step) if isinstance(step, Mapping) else step.model_dump()
        if data.get("kind") == "torchscript" and isinstance(data.get("model"), str):
            data["model"] = {"file": data["model"], "sha256": checksums[data["model"]]}
        resolved_steps.append(data)
    manifest = Manifest(
        name=name,
        method=method,
        collection=collection,
        description=description,
        egproc_version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        corrections=ArtefactFile(file=CORRECTIONS, sha256=checksums[CORRECTIONS]),
        steps=resolved_steps,
        event_weights=tuple(event_weights),
        provenance=dict(provenance or {}),
    )
    (folder / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
    load(folder, device="cpu")  # a bundle that does not load is never left behind as written
    return folder


def rebuild_models(
    source: str | Path,
    out: str | Path | None,
    *,
    method: str,
    rebuild: Callable[[Any, TorchScriptStep], Any],
    form: str,
    how: str,
    note: str = "",
) -> Path:
    """Write the ``method`` bundle ``source`` again with each TorchScript module replaced by
    ``rebuild(loaded module, its step)`` (an ``nn.Module``, scripted here), without retraining:
    how a bundle takes up a faster export of the same weights. ``out`` defaults to ``source``
    (replaced only once the new bundle is written and loads). The manifest keeps its steps,
    provenance and correctionlib file (same bytes); provenance gains a ``reexported`` entry
    (``form``, ``how``, ``note`` and the previous checksums). Returns the folder."""
    import correctionlib.schemav2 as correctionlib_schema
    import torch

    source = Path(source)
    out = Path(out) if out is not None else source
    # Checksums verified; the models are checked once written (write loads the result).
    original = load(source, device="cpu", check_models=False)
    manifest = original.manifest
    if manifest.method != method:
        raise ValueError(f"{source}: a {manifest.method} bundle, not {method}")
    models: dict[str, Any] = {}
    steps: list[dict[str, Any]] = []
    for step in manifest.steps:
        data = step.model_dump()
        if isinstance(step, TorchScriptStep):
            file_name = step.model.file
            if file_name not in models:
                module = torch.jit.load(str(source / file_name), map_location="cpu")
                models[file_name] = torch.jit.script(rebuild(module, step))
            data["model"] = file_name
        steps.append(data)
    entry = {
        "form": form,
        "how": how,
        "previous_sha256": {a.file: a.sha256 for a in manifest.artefacts()},
        "note": note,
    }
    provenance = dict(manifest.provenance)
    provenance["reexported"] = [*provenance.get("reexported", []), entry]
    # Parsed and written back as training wrote it: the same bytes, the same checksum.
    payload = correctionlib_schema.CorrectionSet.model_validate_json(
        gzip.decompress((source / manifest.corrections.file).read_bytes())
    )
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as scratch:
        written = write(
            Path(scratch) / out.name, name=manifest.name, method=manifest.method, collection=manifest.collection,
            description=manifest.description, correction_set=payload, steps=steps, models=models,
            event_weights=manifest.event_weights, provenance=provenance,
        )
        if out.exists():
            shutil.rmtree(out)
        shutil.move(str(written), str(out))
    return out
