"""Two Ray nodes on one machine (``ray.cluster_utils.Cluster``): train_rl spreads its workers over both, and
removing a node mid-iteration loses no task.

The cluster needs a driver of its own, so the test runs this file as a subprocess (``python
tests/test_ray_cluster.py RUN_DIR``), which leaves the session's shared Ray instance alone; the subprocess
prints a JSON summary that the test checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
ITERATIONS = 3
META_BATCH = 6


class NodeRemovingSampler:
    """Wraps a RaySampler: records (iteration, task, pid) of every result and removes a node from the cluster
    right after the first result of ``remove_at`` arrives (the other worker is then mid-task)."""

    def __init__(self, inner: Any, cluster: Any, node: Any, remove_at: int) -> None:
        self.inner, self.cluster, self.node, self.remove_at = inner, cluster, node, remove_at
        self.seen: list[tuple[int, int, int]] = []
        self.removed = False

    def sample(self, weights, requests):
        for result in self.inner.sample(weights, requests):
            self.seen.append((result["iteration"], result["task_index"], result["pid"]))
            if result["iteration"] == self.remove_at and not self.removed:
                self.cluster.remove_node(self.node, allow_graceful=False)
                self.removed = True
            yield result

    def spaces(self):
        return self.inner.spaces()

    def fault_counts(self):
        return self.inner.fault_counts()

    def close(self):
        self.inner.close()


def two_node_run(run_dir: str) -> dict[str, Any]:
    """Start a head (1 CPU) and a worker node (2 CPUs), train a few small iterations, remove the worker node
    during iteration 1. Returns what the test checks."""
    import ray
    from ray.cluster_utils import Cluster

    from rlmaml.config import build_config
    from rlmaml.rl.ray_runtime import init_ray
    from rlmaml.rl.sampling.ray_sampler import RaySampler
    from rlmaml.rl.sampling.worker import WorkerSpec
    from rlmaml.rl.trainer import train_rl
    from rlmaml.runs import RunDir

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        worker_node = cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        init_ray(cluster.address)
        cfg = build_config("nav2d", [
            "rl.env=rlmaml_test/SlowNav-v0", "rl.env_module=ray_test_envs", "rl.trajectories=4", "rl.horizon=20",
            "rl.hidden=[16,16]", f"optim.meta_batch={META_BATCH}", f"run.iterations={ITERATIONS}",
            "run.checkpoint_every=10", "rl.num_workers=2", "rl.task_timeout_s=60", f"rl.address={cluster.address}",
            # one task per call: the node goes away while its actor still has tasks to do, whichever node's result
            # arrives first (with several tasks per call its actor could already be done with the iteration)
            "rl.tasks_per_call=1",
            f"run.dir={run_dir}"])
        inner = RaySampler.from_config(cfg, WorkerSpec.from_config(cfg))
        workers = inner.worker_info()
        sampler = NodeRemovingSampler(inner, cluster, worker_node, remove_at=1)
        train_rl(cfg, RunDir.create(cfg), sampler=sampler)
        metrics = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if x.strip()]
        return {"head": cluster.head_node.node_id, "worker": worker_node.node_id, "workers": workers,
                "seen": sampler.seen, "removed": sampler.removed, "metrics": metrics}
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.ray
@pytest.mark.slow
def test_two_nodes_spread_workers_and_survive_node_removal(tmp_path):
    pytest.importorskip("ray")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH", "")) if p)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, __file__, str(tmp_path / "run")], env=env, cwd=str(HERE.parent),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    node_of = {w["pid"]: w["node_id"] for w in out["workers"]}
    assert set(node_of.values()) == {out["head"], out["worker"]}  # one actor per node (SPREAD)
    first = [(t, pid) for it, t, pid in out["seen"] if it == 0]
    assert {node_of[pid] for _, pid in first} == {out["head"], out["worker"]}  # iteration 0 used both nodes
    assert out["removed"]
    for it in range(ITERATIONS):  # every task of every iteration, exactly once
        assert sorted(t for i, t, _ in out["seen"] if i == it) == list(range(META_BATCH)), it
    metrics = out["metrics"]
    assert [m["iteration"] for m in metrics] == list(range(ITERATIONS))
    assert metrics[0]["faults_actor_deaths"] == 0
    assert metrics[1]["faults_actor_deaths"] >= 1 and metrics[1]["faults_retries"] >= 1
    # after the removal only the head's actor is left
    head_pids = {pid for pid, node in node_of.items() if node == out["head"]}
    assert {pid for it, _, pid in out["seen"] if it == ITERATIONS - 1} <= head_pids


if __name__ == "__main__":
    summary = two_node_run(sys.argv[1])
    print(json.dumps(summary))
