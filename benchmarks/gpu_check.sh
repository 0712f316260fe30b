#!/usr/bin/env bash
# Checks that need a CUDA GPU; each section prints a table. Run from anywhere:
#
#   benchmarks/gpu_check.sh            # every section
#   benchmarks/gpu_check.sh learner    # one section
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
from rlmaml.rl.learner import MetaLearner
from rlmaml.rl.learner_placement import RemoteLearner, current_placement
from rlmaml.rl.ray_runtime import init_ray
from rlmaml.rl.ray_sampler import RaySampler
from rlmaml.rl.trainer import make_task_distribution, task_requests
from rlmaml.rl.worker import WorkerSpec

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
        results = list(sampler.sample(learners["cpu"].weights(), 0, requests))
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

sections=("$@")
[[ ${#sections[@]} -eq 0 ]] && sections=(learner)
status=0
for section in "${sections[@]}"; do
    case "$section" in
        learner) section_learner || status=1 ;;
        *) echo "gpu_check: unknown section '$section' (known: learner)"; status=2 ;;
    esac
done
exit "$status"
