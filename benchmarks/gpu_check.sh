#!/usr/bin/env bash
# Checks that need a CUDA GPU; each section prints a table. Run from anywhere:
#
#   benchmarks/gpu_check.sh            # the default sections: learner, supervised
#   benchmarks/gpu_check.sh learner    # one section (compile runs only when asked for)
#
# Without CUDA it says so and exits 0. Sections keep to a minute or two each (a GPU session is short).
# GPU_CHECK_DRY_RUN=1 runs the sections on the CPU in place of CUDA (to test this script without a GPU;
# the figures then mean nothing).
#
# Sections
#   learner  One TRPO meta-step of the MetaLearner on cuda vs cpu with the same sampled data (nav2d at the
#            paper's size, HalfCheetahVel at GPU_CHECK_CHEETAH_TASKS tasks, default 10 of the paper's 40):
#            times, speed-up and agreement of θ after the step; then the same step in a Ray learner actor
#            (num_gpus=1, the path taken when the driver has no GPU) against the driver's cuda step.
#   supervised  One second-order Omniglot meta-step (5-way 1-shot T=32 and 20-way 1-shot T=16) through
#            rlmaml.meta (loop and vmap) against the `higher` library on cuda (goal: >= 3x faster than higher),
#            and the meta-gradient on cuda against the cpu (float32 tolerance); a sinusoid meta-step likewise.
#   compile  (not in the default set: ask for it) The learner with rl.compile=true on cuda at nav2d's paper size
#            and with nav2d-fast's settings: the compiling first step, then the eager and compiled steps timed,
#            and their meta-gradient norm and surrogate compared (float32 tolerance).
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"

if [[ "${GPU_CHECK_DRY_RUN:-0}" != "1" ]] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing to check"
    exit 0
fi

section_learner() {
    echo "== learner: TRPO meta-step, cuda vs cpu, and the GPU learner actor =="
    timeout "${GPU_CHECK_LEARNER_TIMEOUT:-420}" "$PY" - <<'PYEOF'
import os, sys, time

import numpy as np
import torch

from rlmaml.config import build_config
from rlmaml.rl.learning.learner import MetaLearner
from rlmaml.rl.learning.placement import RemoteLearner, current_placement
from rlmaml.rl.ray_runtime import init_ray
from rlmaml.rl.sampling.ray_sampler import RaySampler
from rlmaml.rl.build import make_task_distribution, task_requests
from rlmaml.rl.sampling.worker import WorkerSpec

DRY = os.environ.get("GPU_CHECK_DRY_RUN") == "1"
GPU = "cpu" if DRY else "cuda"
CHEETAH_TASKS = int(os.environ.get("GPU_CHECK_CHEETAH_TASKS", "10"))
RTOL, ATOL = 1e-3, 1e-4
cpus = os.cpu_count() or 2
init_ray("", num_cpus=cpus, num_gpus=None if not DRY else 0, include_dashboard=False)
if not DRY:
    print(f"device: {torch.cuda.get_device_name(0)}; {cpus} CPUs; placement with run.device=auto: "
          f"{current_placement(build_config('nav2d', [])).reason}", flush=True)


def step(learner, results):
    for r in results:
        learner.add_task(r)
    if GPU == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    metrics = learner.step()
    if GPU == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, metrics


def theta(learner):
    return {k: np.asarray(v, dtype=np.float64) for k, v in learner.weights().items()}


def max_rel_diff(a, b):
    return max(float(np.max(np.abs(a[k] - b[k]) / (ATOL / RTOL + np.abs(b[k])))) for k in b)


rows, failures = [], []
for preset, overrides in (("nav2d", []), ("halfcheetah-vel", [f"optim.meta_batch={CHEETAH_TASKS}"])):
    cfg = build_config(preset, overrides)
    spec = WorkerSpec.from_config(cfg)
    sampler = RaySampler(spec, num_workers=max(1, min(cpus - 2, cfg.optim.meta_batch, 16)), task_timeout_s=600)
    try:
        spaces = sampler.spaces()
        learners = {d: MetaLearner(cfg, *spaces, torch.device(d)) for d in ("cpu", GPU)}
        requests = task_requests(cfg, make_task_distribution(cfg), 0)
        t0 = time.perf_counter()
        results = list(sampler.sample(learners["cpu"].weights(), requests))
        t_sample = time.perf_counter() - t0
    finally:
        sampler.close()
    warm = MetaLearner(cfg, *spaces, torch.device(GPU))  # first CUDA step pays kernel loading: not timed
    step(warm, results)
    t_cpu, m_cpu = step(learners["cpu"], results)
    t_gpu, m_gpu = step(learners[GPU], results)
    diff = max_rel_diff(theta(learners[GPU]), theta(learners["cpu"]))
    agree = m_cpu["accepted"] == m_gpu["accepted"] and diff <= 1.0
    remote = RemoteLearner(cfg, *spaces, device=GPU, num_gpus=0 if DRY else 1)
    try:
        step(remote, results)  # warm-up in the actor
        remote.load_state_dict(MetaLearner(cfg, *spaces, torch.device("cpu")).state_dict())
        t_act, m_act = step(remote, results)
        where = remote.device_name()
        diff_act = max_rel_diff(theta(remote), theta(learners[GPU]))
    finally:
        remote.close()
    agree_act = m_act["accepted"] == m_gpu["accepted"] and diff_act <= 1.0
    n = len(results)
    rows.append((f"{preset} ({n} tasks, sampled in {t_sample:.1f} s)", t_cpu, t_gpu, t_act, diff, diff_act,
                 agree and agree_act, where))
    if not (agree and agree_act):
        failures.append(f"{preset}: cpu/{GPU} accepted {m_cpu['accepted']}/{m_gpu['accepted']}, actor {m_act['accepted']}; "
                        f"max |dθ| / (|θ| rtol + atol) = {diff:.3g} (cpu vs {GPU}), {diff_act:.3g} (actor vs driver)")

print()
print(f"{'env':<44} {'cpu step':>9} {GPU + ' step':>10} {'speed-up':>9} {'actor step':>11} "
      f"{'dθ cpu/' + GPU:>12} {'dθ actor':>9} {'agree':>6}")
for name, t_cpu, t_gpu, t_act, diff, diff_act, ok, where in rows:
    print(f"{name:<44} {t_cpu:>8.2f}s {t_gpu:>9.2f}s {t_cpu / t_gpu:>8.1f}x {t_act:>10.2f}s {diff:>12.3g} "
          f"{diff_act:>9.3g} {'yes' if ok else 'NO':>6}")
print(f"(dθ: max |Δθ| / (rtol |θ| + atol), rtol {RTOL}, atol {ATOL}; <= 1 agrees. Actor device: {rows[-1][-1]})")
if failures:
    print("learner check FAILED:\n  " + "\n  ".join(failures))
    sys.exit(1)
print("learner check passed")
PYEOF
}

section_supervised() {
    echo "== supervised: Omniglot meta-step vs higher on $([[ "${GPU_CHECK_DRY_RUN:-0}" == 1 ]] && echo cpu || echo cuda) =="
    local dev=cuda
    [[ "${GPU_CHECK_DRY_RUN:-0}" == "1" ]] && dev=cpu
    timeout "${GPU_CHECK_SUPERVISED_TIMEOUT:-240}" "$PY" benchmarks/omniglot_speed.py --device "$dev" --repeats 3 || return 1
    timeout 120 "$PY" - "$dev" <<'PYEOF'
import sys

import numpy as np
import torch

from rlmaml.config import build_config
from rlmaml.meta import meta_objective
from rlmaml.supervised.models import build_network
from rlmaml.supervised.sinusoid import SinusoidDomain
from rlmaml.seeding import seeded_init

dev = torch.device(sys.argv[1])
ok = True
# Omniglot-shaped random tasks (values do not matter for agreement): meta-gradient on the device vs the cpu.
rng = np.random.default_rng(0)
xs = torch.tensor(rng.random((8, 5, 1, 28, 28)), dtype=torch.float32)
ys = torch.tensor(np.tile(np.arange(5), (8, 1)))
xq = torch.tensor(rng.random((8, 25, 1, 28, 28)), dtype=torch.float32)
yq = torch.tensor(np.tile(np.repeat(np.arange(5), 5), (8, 1)))
grads = {}
for d in ("cpu", dev.type):
    model = seeded_init(0, lambda: build_network("conv", 5)).to(d)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    loss_fn = lambda p, b, model=model: torch.nn.functional.cross_entropy(torch.func.functional_call(model, p, (b[0],)), b[1])
    batching = "vmap" if d == "cuda" else "loop"
    loss = meta_objective(loss_fn, loss_fn, params, (xs.to(d), ys.to(d)), (xq.to(d), yq.to(d)), steps=1, lr=0.4,
                          batching=batching)
    grads[d] = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(params.values()))]).cpu()
rel = float((grads[dev.type] - grads["cpu"]).norm() / grads["cpu"].norm())
print(f"omniglot meta-gradient {dev.type} vs cpu: relative difference {rel:.2e} (float32; <= 1e-3 agrees)")
ok &= rel <= 1e-3
# Sinusoid: the same check, vmap path.
cfg = build_config("sinusoid", [])
dom = SinusoidDomain(cfg.sinusoid)
sup, qry = dom.sample_tasks(25, np.random.default_rng(0))
grads = {}
for d in ("cpu", dev.type):
    model = dom.build_model(0).to(d)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    to = lambda t, d=d: tuple(x.to(d) for x in t)
    loss = meta_objective(dom.loss_fn(model), dom.loss_fn(model), params, to(sup), to(qry), steps=1, lr=0.01,
                          batching="vmap")
    grads[d] = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(params.values()))]).cpu()
rel = float((grads[dev.type] - grads["cpu"]).norm() / grads["cpu"].norm())
print(f"sinusoid meta-gradient {dev.type} vs cpu: relative difference {rel:.2e}")
ok &= rel <= 1e-4
print("supervised check " + ("passed" if ok else "FAILED"))
sys.exit(0 if ok else 1)
PYEOF
}

section_compile() {
    echo "== compile: the nav2d learner with rl.compile on $([[ "${GPU_CHECK_DRY_RUN:-0}" == 1 ]] && echo cpu || echo cuda) =="
    local dev=cuda
    [[ "${GPU_CHECK_DRY_RUN:-0}" == "1" ]] && dev=cpu
    timeout "${GPU_CHECK_COMPILE_TIMEOUT:-360}" "$PY" - "$dev" <<'PYEOF'
import sys, time

import torch

from rlmaml.config import build_config
from rlmaml.rl.learning.learner import MetaLearner
from rlmaml.rl.build import make_task_distribution, task_requests
from rlmaml.rl.sampling.worker import RolloutWorker, WorkerSpec

dev = torch.device(sys.argv[1])
ok = True
print(f"{'preset':<12} {'first compiled step':>20} {'eager step':>11} {'compiled step':>14} {'|g| rel diff':>13} "
      f"{'surr. rel diff':>15}")
for preset in ("nav2d", "nav2d-fast"):
    base = [f"run.device={dev.type}", "rl.compile=false"]
    cfg = build_config(preset, base)
    worker = RolloutWorker(WorkerSpec.from_config(cfg))
    results = worker.sample_tasks(MetaLearner(cfg, *worker.spaces(), torch.device("cpu")).weights(),
                                  task_requests(cfg, make_task_distribution(cfg), 0))

    def timed_step(learner):
        for r in results:
            learner.add_task(r)
        theta = {k: v.detach().clone() for k, v in learner.params.items()}
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        metrics = learner.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        with torch.no_grad():
            for k, v in theta.items():
                learner.params[k].copy_(v)
        return time.perf_counter() - start, metrics

    eager = MetaLearner(cfg, *worker.spaces(), dev)
    compiling = MetaLearner(build_config(preset, [*base, "rl.compile=true"]), *worker.spaces(), dev)
    timed_step(eager)  # warm-up: kernel loading
    t_first, _ = timed_step(compiling)
    t_eager, m_eager = min((timed_step(eager) for _ in range(3)), key=lambda t: t[0])
    t_comp, m_comp = min((timed_step(compiling) for _ in range(3)), key=lambda t: t[0])
    rel = abs(m_comp["grad_norm"] - m_eager["grad_norm"]) / m_eager["grad_norm"]
    rel_s = abs(m_comp["surrogate_before"] - m_eager["surrogate_before"]) / max(abs(m_eager["surrogate_before"]), 1e-6)
    good = compiling.direction is not None and m_comp["accepted"] and rel <= 1e-3 and rel_s <= 1e-3
    ok &= good
    print(f"{preset:<12} {t_first:>19.1f}s {t_eager:>10.2f}s {t_comp:>13.2f}s {rel:>13.2e} {rel_s:>15.2e} "
          f"{'' if good else 'FAILED'}")
print("compile check " + ("passed" if ok else "FAILED (a compile failure warns above and falls back to eager)"))
sys.exit(0 if ok else 1)
PYEOF
}

sections=("$@")
[[ ${#sections[@]} -eq 0 ]] && sections=(learner supervised)
status=0
for section in "${sections[@]}"; do
    case "$section" in
        learner) section_learner || status=1 ;;
        supervised) section_supervised || status=1 ;;
        compile) section_compile || status=1 ;;
        *) echo "gpu_check: unknown section '$section' (known: learner, supervised, compile)"; status=2 ;;
    esac
done
exit "$status"
