"""What a smaller sweep would save: the flow correction's time for other spline and conditioner shapes.

A flow correction runs the sweep forward (as MC) and inverse (as data): 2 × D one-variable coupling
layers (:class:`egproc.flow.SwitchedFlow`). This builds sweeps of the shipped barrel flow's
structure (its features, context and peak edges, from ``--bundle``) with other numbers of spline
bins and other conditioner hidden layers, gives their output layers random weights (an untrained
layer is the identity; the spline costs the same whatever the values), and times
``SwitchedFlow.correct`` on ``--rows`` rows: frozen TorchScript, one thread, the shapes in
alternating rounds. It prints each shape's best and median time and its ratio to the shipped
shape's, then where the shipped shape's time goes, operator by operator (``torch.profiler``, self
CPU time).

No shape here needs retraining to be timed, but every one but the shipped needs it to be used.
Run it without dask's worker malloc setting: under ``MALLOC_TRIM_THRESHOLD_=65536`` two modules
of the shipped shape in one process took 22 and 15 ms per 4096 rows, with the same number of page
faults per call, so the ratios were not reproducible.

    python benchmarks/flow_shapes.py
    python benchmarks/flow_shapes.py --bins 8 4 --hidden 16,16 16
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import torch

from egproc import flow

SHIPPED_FLOW = Path(__file__).resolve().parents[1] / "corrections" / "toy-flow"


def sweep(
    features: int, bins: int, hidden: tuple[int, ...], activation: str, peak_edges: list[float | None]
) -> torch.jit.ScriptModule:
    switched = flow.SwitchedFlow(
        features, flow.N_CONTEXT, bins=bins, sweep=True, sweep_hidden=hidden, sweep_activation=activation,
        peak_edges=peak_edges, seed=0,
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in switched.switch.layers:
            layer.head.weight.copy_(0.3 * torch.randn(layer.head.weight.shape, generator=generator))
            layer.head.bias.copy_(0.3 * torch.randn(layer.head.bias.shape, generator=generator))

    class Correction(torch.nn.Module):
        def __init__(self, flow_module: flow.SwitchedFlow):
            super().__init__()
            self.flow = flow_module

        def forward(self, x: torch.Tensor, mc: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
            return self.flow.correct(x, mc, data)

    return torch.jit.freeze(torch.jit.script(Correction(switched).eval()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=SHIPPED_FLOW, help="the flow bundle whose barrel structure to time")
    parser.add_argument("--bins", type=int, nargs="+", default=[8, 6, 4])
    parser.add_argument(
        "--hidden", nargs="+", default=["16,16", "16"], help="conditioner hidden layers, comma-separated sizes"
    )
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)
    shipped = flow.correction_from_torchscript(torch.jit.load(str(args.bundle / "flow_EB_nominal.pt")))
    if len(shipped.flow.shared) == 0:
        parser.error(f"{args.bundle}'s flow has the switch in every layer, not a sweep: this benchmark times sweeps")
    first_layer = shipped.flow.switch.layers[0]
    shipped_shape = (
        first_layer.bins,
        tuple(linear.out_features for linear in first_layer.hidden),
    )
    activation = "relu" if isinstance(first_layer.activation, torch.nn.ReLU) else "silu"
    features = shipped.n_variables
    peak_edges = shipped.encoding.peak_edges()
    hidden_shapes = [tuple(int(size) for size in text.split(",")) for text in args.hidden]
    shapes = list(dict.fromkeys([shipped_shape] + [(bins, hidden) for bins in args.bins for hidden in hidden_shapes]))
    modules = {shape: sweep(features, shape[0], shape[1], activation, peak_edges) for shape in shapes}

    generator = torch.Generator().manual_seed(2)
    x = torch.randn(args.rows, features, generator=generator)
    context = torch.randn(args.rows, flow.N_CONTEXT, generator=generator)
    mc, data = context.clone(), context.clone()
    mc[:, -1], data[:, -1] = 0.0, 1.0
    times: dict[tuple[int, tuple[int, ...]], list[float]] = {shape: [] for shape in shapes}
    with torch.inference_mode():
        for module in modules.values():
            for _ in range(5):
                module(x, mc, data)
        for _ in range(args.rounds):
            for shape, module in modules.items():
                start = time.perf_counter()
                for _ in range(10):
                    module(x, mc, data)
                times[shape].append((time.perf_counter() - start) / 10)

    print(
        f"SwitchedFlow.correct of a {features}-variable sweep ({activation} conditioners, {args.bundle.name}'s "
        f"barrel structure) on {args.rows} rows, frozen TorchScript, one thread, best and median of {args.rounds} rounds:"
    )
    reference = min(times[shipped_shape])
    for shape, values in times.items():
        bins, hidden = shape
        label = f"{bins} bins, hidden {'-'.join(map(str, hidden))}" + ("  (shipped)" if shape == shipped_shape else "")
        print(f"  {label:34s} {min(values) * 1e3:7.2f} ms  median {statistics.median(values) * 1e3:7.2f} ms  ×{min(values) / reference:.2f}")

    module = modules[shipped_shape]
    with torch.inference_mode(), torch.profiler.profile() as profile:
        for _ in range(20):
            module(x, mc, data)
    events = [e for e in profile.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events)
    print("where the shipped shape's time goes (self CPU time of aten operators, 20 calls):")
    for event in sorted(events, key=lambda e: -e.self_cpu_time_total)[:10]:
        print(f"  {event.key:22s} {100 * event.self_cpu_time_total / total:5.1f} %   {event.count // 20:4d} calls per correction")


if __name__ == "__main__":
    main()
