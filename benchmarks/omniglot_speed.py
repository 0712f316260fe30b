"""Time one second-order Omniglot meta-step: rlmaml.meta.meta_objective against the `higher` library.

Both sides use the same network (the paper's 4-block conv net, :class:`rlmaml.supervised.models.ConvNet`)
and the same random task batch (values do not change the cost), and time forward + backward of the
meta-objective, i.e. everything up to the meta-gradient in ``.grad`` (no optimiser step):

* rlmaml: ``meta_objective(..., batching="loop")`` and ``batching="vmap"`` then ``backward()``;
* higher: the library's reference loop, one ``higher.innerloop_ctx(model, SGD, copy_initial_weights=False,
  track_higher_grads=True)`` per task, ``diffopt.step`` for each inner step, then ``(query loss / T)
  .backward()`` per task.

The two settings (paper section 5.2, second order, inner lr 0.4):

* 5-way 1-shot, meta-batch 32, 15 queries per class, 1 inner step;
* 20-way 1-shot, meta-batch 16, 5 queries per class, 5 inner steps.

The methods run interleaved in each repeat (so background load hits them alike); the table shows the
median of ``--repeats`` after one warm-up, and each rlmaml time as a ratio of higher's (goal <= 0.8).

    python benchmarks/omniglot_speed.py [--device cpu|cuda] [--repeats 5] [--threads N] [--only 5w|20w]

Results on the 2-core shared CPU (torch 2.13, ``--threads 1 --repeats 3``, other jobs running):

    5-way 1-shot, T=32, Q=15, 1 step     higher 1.849 s   rlmaml loop 1.753 s (0.95x)   vmap 3.438 s (1.86x)
    20-way 1-shot, T=16, Q=5, 5 steps    higher 3.586 s   rlmaml loop 3.756 s (1.05x)   vmap 4.972 s (1.39x)

On CPU rlmaml's loop and higher are at parity, short of the 0.8x goal: both run exactly the same aten
ops (same convolutions, batch norms and double backwards, checked with torch.profiler), and these are
compute-bound (~50 GFLOP/s on one core); neither side has Python overhead worth removing. Tried and
rejected: channels_last (-3%, and the model is shared so higher gains it too), im2col/GEMM convolutions
(1.7-2x slower), a composite batch norm (25% slower than the fused op outside vmap). vmap is slower on CPU
because adapted weights differ per task, so each convolution becomes a grouped one. On a GPU the loop
launches T times as many tiny kernels, so vmap is where rlmaml should beat higher there (not measured yet).
With 2 threads on a loaded CPU, OpenMP threads waiting for each other make every method several times
slower; use ``--threads 1`` there.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F

from rlmaml.meta import meta_objective, model_loss, params_of
from rlmaml.supervised.models import ConvNet

SETTINGS = {
    "5w": dict(label="5-way 1-shot, T=32, Q=15, 1 step", ways=5, shots=1, queries=15, tasks=32, steps=1),
    "20w": dict(label="20-way 1-shot, T=16, Q=5, 5 steps", ways=20, shots=1, queries=5, tasks=16, steps=5),
}
INNER_LR = 0.4


def task_batch(ways: int, shots: int, queries: int, tasks: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    support = (torch.rand(tasks, ways * shots, 1, 28, 28, generator=g),
               torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).clone())
    query = (torch.rand(tasks, ways * queries, 1, 28, 28, generator=g),
             torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).clone())
    move = lambda pair: tuple(t.to(device) for t in pair)
    return move(support), move(query)


def rlmaml_step(model: torch.nn.Module, support, query, steps: int, batching: str) -> Callable[[], None]:
    params = params_of(model)
    loss = model_loss(model, F.cross_entropy)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        meta_objective(loss, loss, params, support, query, steps=steps, lr=INNER_LR, batching=batching).backward()

    return step


def higher_step(model: torch.nn.Module, support, query, steps: int) -> Callable[[], None]:
    import higher

    inner_opt = torch.optim.SGD(model.parameters(), lr=INNER_LR)
    tasks = support[0].shape[0]

    def step() -> None:
        model.zero_grad(set_to_none=True)
        for t in range(tasks):
            with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False,
                                      track_higher_grads=True) as (fmodel, diffopt):
                for _ in range(steps):
                    diffopt.step(F.cross_entropy(fmodel(support[0][t]), support[1][t]))
                (F.cross_entropy(fmodel(query[0][t]), query[1][t]) / tasks).backward()

    return step


def timed(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def gradient_differences(model: torch.nn.Module, methods: dict[str, Callable[[], None]]) -> dict[str, float]:
    """Relative difference of each method's meta-gradient from higher's (a sanity check).

    These are float32 rounding, not a disagreement: in float64 all three agree to ~1e-14 (both settings).
    The loop runs the same kernels as higher and rounds alike (~1e-7 apart); vmap (grouped convolutions,
    composite batch norm) rounds differently. At this seed-0 initialisation the exact meta-gradient is
    ill-conditioned: in float64 a one-ulp change of θ moves it by 0.2 relative at 20-way, 5 steps (a ReLU
    input crosses 0 during the inner steps). Measured against float64: higher and loop 7.0e-4 (5w) and
    4.4e-2 (20w), vmap 2.4e-4 and 1.8e-2 (tests/test_meta_batching.py).
    """
    grads = {}
    for name, fn in methods.items():
        fn()
        grads[name] = torch.cat([p.grad.flatten() for p in model.parameters()])
    ref = grads["higher"]
    return {name: float((g - ref).norm() / ref.norm()) for name, g in grads.items() if name != "higher"}


def run(setting: dict, device: torch.device, repeats: int) -> list[tuple[str, float]]:
    torch.manual_seed(0)
    model = ConvNet(setting["ways"]).to(device)
    support, query = task_batch(setting["ways"], setting["shots"], setting["queries"], setting["tasks"], device)
    methods = {
        "higher": higher_step(model, support, query, setting["steps"]),
        "rlmaml loop": rlmaml_step(model, support, query, setting["steps"], "loop"),
        "rlmaml vmap": rlmaml_step(model, support, query, setting["steps"], "vmap"),
    }
    differences = gradient_differences(model, methods)  # doubles as the warm-up
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            times[name].append(timed(fn, device))
    print("  meta-gradient vs higher's (relative): "
          + ", ".join(f"{name} {d:.1e}" for name, d in differences.items()))
    return [(name, statistics.median(ts)) for name, ts in times.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--only", choices=sorted(SETTINGS), help="run one setting only")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} repeats={args.repeats}")
    rows = []
    for key, setting in SETTINGS.items():
        if args.only and key != args.only:
            continue
        print(f"{setting['label']} ...", flush=True)
        results = run(setting, device, args.repeats)
        reference = dict(results)["higher"]
        rows += [(setting["label"], name, t, t / reference) for name, t in results]
    print(f"\n{'setting':<36} {'method':<12} {'median s':>9} {'vs higher':>10}")
    for label, name, t, ratio in rows:
        print(f"{label:<36} {name:<12} {t:>9.3f} {ratio:>9.2f}x")


if __name__ == "__main__":
    main()
