"""The ``egproc`` command line: a thin layer over the library.

    egproc generate --out samples --events 1000000 --seed 1
    egproc train fudge --data samples/data_*.root --mc samples/mc_*.root --out corrections/toy-fudge
    egproc train cqr --data samples/data_*.root --mc samples/mc_*.root --out corrections/toy-cqr --seed 1
    egproc train flow --data samples/data_*.root --mc samples/mc_*.root --out corrections/toy-flow --seed 1
    egproc check corrections/toy-fudge samples/mc_0.root
    egproc report egproc-demo/output --out egproc-demo/report
    egproc run --workdir egproc-demo
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence

__all__ = ["main"]


def _generate(args: argparse.Namespace) -> None:
    from egproc import toy

    paths = toy.generate_samples(
        args.out, args.events, args.seed, files_per_sample=args.files_per_sample, workers=args.workers
    )
    for path in paths:
        print(path)


def _train_fudge(args: argparse.Namespace) -> None:
    from egproc import fudge

    notes = dict(item.split("=", 1) for item in args.provenance)
    folder = fudge.train(args.data, args.mc, args.out, name=args.name, provenance=notes)
    print(f"wrote bundle {folder}")


def _train_network_method(args: argparse.Namespace) -> None:
    """``train cqr`` and ``train flow``: the method module's Settings from the flags given, then
    its ``train``."""
    import dataclasses
    import importlib

    method = importlib.import_module(f"egproc.{args.method}")
    given = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(method.Settings)}
    for name in ("hidden", "sweep_hidden"):
        if given.get(name) is not None:
            given[name] = tuple(given[name])
    settings = method.Settings(**{k: v for k, v in given.items() if v is not None})
    notes = dict(item.split("=", 1) for item in args.provenance)
    folder = method.train(
        args.data, args.mc, args.out, settings=settings, seed=args.seed, device=args.device,
        name=args.name, splits=not args.no_splits, provenance=notes,
    )
    print(f"wrote bundle {folder}")


def _check(args: argparse.Namespace) -> None:
    import egproc

    bundle = egproc.load(args.bundle, device="cpu")
    print(f"{bundle}: variations {list(bundle.variations)}, checksums verified")
    for path in args.files:
        resolved = bundle.check_file(path)
        renamed = {k: v for k, v in resolved.items() if k != v}
        print(f"{path}: all {len(resolved)} branches present" + (f" (fallbacks: {json.dumps(renamed)})" if renamed else ""))


def _report(args: argparse.Namespace) -> None:
    from egproc import costs, histio, report

    folder = report.write(histio.read(args.output), args.out, classifier=not args.no_classifier, costs=costs.read(args.output))
    print(report.headline(json.loads((folder / "summary.json").read_text())))
    print(f"wrote {folder / 'index.html'}")


def _run(args: argparse.Namespace) -> None:
    from egproc import pipeline

    pipeline.demo(
        args.workdir,
        n_events=args.events,
        seed=args.seed,
        workers=args.workers,
        step_size=args.step_size,
        bundle_path=args.bundle,
        bundles={
            name: None if path == "none" else path
            for name, path in (("cqr", args.cqr), ("flow", args.flow)) if path is not None
        },
    )


def _key_value(text: str) -> str:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return text


def _training_arguments(parser: argparse.ArgumentParser, default_name: str) -> None:
    """The arguments every network-training method takes."""
    parser.add_argument("--data", nargs="+", required=True, help="data NanoAOD files")
    parser.add_argument("--mc", nargs="+", required=True, help="MC NanoAOD files")
    parser.add_argument("--out", required=True, help="bundle folder to write")
    parser.add_argument("--name", default=default_name)
    parser.add_argument("--seed", type=int, default=0, help="seeds every network and shuffle (deterministic on CPU)")
    parser.add_argument("--device", default="auto", help="auto (a GPU when present), cpu or cuda:N")
    parser.add_argument("--no-splits", action="store_true", help="skip the split-sample trainings (no up/down variations)")
    parser.add_argument(
        "--provenance", nargs="*", default=[], metavar="KEY=VALUE", type=_key_value,
        help="facts to record in the bundle, e.g. toy_seed=2026",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="egproc", description="e/γ ML corrections for coffea")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="write toy NanoAOD data, data2 and MC samples")
    generate.add_argument("--out", required=True, help="output folder")
    generate.add_argument("--events", type=int, default=1_000_000, help="events per sample")
    generate.add_argument("--seed", type=int, default=1)
    generate.add_argument("--files-per-sample", type=int, default=1)
    generate.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    generate.set_defaults(handler=_generate)

    train = commands.add_parser("train", help="derive a correction and write a bundle")
    methods = train.add_subparsers(dest="method", required=True)
    fudge = methods.add_parser("fudge", help="per-(pT, |eta|) shift and stretch (pure correctionlib)")
    fudge.add_argument("--data", nargs="+", required=True, help="data NanoAOD files")
    fudge.add_argument("--mc", nargs="+", required=True, help="MC NanoAOD files")
    fudge.add_argument("--out", required=True, help="bundle folder to write")
    fudge.add_argument("--name", default="toy-fudge")
    fudge.add_argument(
        "--provenance", nargs="*", default=[], metavar="KEY=VALUE", type=_key_value,
        help="facts to record in the bundle, e.g. toy_seed=2026",
    )
    fudge.set_defaults(handler=_train_fudge)

    cqr = methods.add_parser("cqr", help="chained quantile regression with neural networks (TorchScript chain)")
    _training_arguments(cqr, "toy-cqr")
    cqr.add_argument("--steps", type=int, help="optimiser steps per quantile network (default: egproc.cqr.Settings)")
    cqr.add_argument("--classifier-steps", type=int, help="optimiser steps per zero-peak classifier")
    cqr.add_argument("--hidden", type=int, nargs="+", help="hidden layer sizes of the quantile networks")
    cqr.add_argument("--batch-size", type=int)
    cqr.add_argument("--learning-rate", type=float, help="quantile networks of continuous variables")
    cqr.add_argument("--tail-learning-rate", type=float, help="tail quantile networks of zero-peak variables")
    cqr.add_argument("--classifier-learning-rate", type=float, help="zero-peak classifiers")
    cqr.add_argument("--evaluate-every", type=int, help="steps between held-out loss evaluations (the best is kept; 0: no held-out events)")
    cqr.add_argument("--patience", type=int, help="evaluations without improvement that stop a network's training (0: never)")
    cqr.set_defaults(handler=_train_network_method)

    flow = methods.add_parser("flow", help="one normalizing flow with a data/MC switch (TorchScript module per region)")
    _training_arguments(flow, "toy-flow")
    flow.add_argument("--steps", type=int, help="optimiser steps per flow (default: egproc.flow.Settings)")
    flow.add_argument("--transforms", type=int, help="spline coupling layers (after the sweep, if any)")
    flow.add_argument(
        "--switch", choices=("sweep", "every-layer"),
        help="where the data/MC switch enters: a sweep of one layer per variable before the shared layers, or every layer",
    )
    flow.add_argument("--sweep-hidden", type=int, nargs="+", help="hidden layer sizes of the sweep's conditioners")
    flow.add_argument("--sweep-activation", choices=("relu", "silu"), help="hidden activation of the sweep's conditioners")
    flow.add_argument(
        "--no-peak-indicators", dest="peak_indicators", action="store_false", default=None,
        help="sweep conditioners without the in-peak indicators of the zero-peak variables after theirs",
    )
    flow.add_argument("--bins", type=int, help="spline bins per transformed feature")
    flow.add_argument(
        "--tail-objects", type=int,
        help="pooled training objects beyond each outer knot of a variable's normal-score map",
    )
    flow.add_argument("--hidden", type=int, nargs="+", help="hidden layer sizes of the coupling conditioners")
    flow.add_argument("--batch-size", type=int)
    flow.add_argument("--learning-rate", type=float)
    flow.add_argument("--evaluate-every", type=int, help="steps between held-out loss evaluations (the best is kept)")
    flow.add_argument("--patience", type=int, help="evaluations without improvement that stop training (0: never)")
    flow.set_defaults(handler=_train_network_method)

    check = commands.add_parser("check", help="verify a bundle and check files have its branches")
    check.add_argument("bundle")
    check.add_argument("files", nargs="*")
    check.set_defaults(handler=_check)

    report = commands.add_parser("report", help="fidelity report of a tag-and-probe output (data, data2, mc)")
    report.add_argument("output", help="processor output folder (egproc run writes <workdir>/output)")
    report.add_argument("--out", required=True, help="report folder to write")
    report.add_argument("--no-classifier", action="store_true", help="skip the classifier two-sample test")
    report.set_defaults(handler=_report)

    run = commands.add_parser("run", help="generate → derive fudge factors → tag and probe (fudge, CQR and flow stages) under dask")
    run.add_argument("--workdir", default="egproc-demo")
    run.add_argument("--events", type=int, default=400_000, help="events per sample")
    run.add_argument("--seed", type=int, default=7, help="toy seed (the shipped bundles were trained on 2026)")
    run.add_argument("--workers", type=int, default=2, help="dask worker processes")
    run.add_argument("--step-size", type=int, default=100_000, help="events per dask partition")
    run.add_argument("--bundle", default=None, help="use this fudge bundle instead of deriving one")
    run.add_argument("--cqr", default=None, help="CQR bundle of the cqr stage (default: corrections/toy-cqr; 'none' to skip)")
    run.add_argument("--flow", default=None, help="flow bundle of the flow stage (default: corrections/toy-flow; 'none' to skip)")
    run.set_defaults(handler=_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Toy samples carry only the e/γ collections; NanoAODSchema would warn once per missing
    # cross-referenced collection (Jet, Muon, Tau, …) on every file it opens.
    warnings.filterwarnings("ignore", "Missing cross-reference index", RuntimeWarning)
    args.handler(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
