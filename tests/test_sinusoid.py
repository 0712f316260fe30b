"""Specifications of the sinusoid domain (paper section 5.1) and a short meta-training run on it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rlmaml.config import Config, build_config
from rlmaml.runs import RunDir
from rlmaml.supervised import make_domain
from rlmaml.supervised.evaluate import evaluate_supervised
from rlmaml.supervised.sinusoid import SinusoidDomain, sample_sinusoids, sinusoid_points
from rlmaml.supervised.trainer import MetaState, train_supervised

CPU = torch.device("cpu")




def _cfg(tmp_path: Path, preset: str = "sinusoid", *extra: str) -> Config:
    return build_config(preset, [
        f"run.dir={tmp_path / preset}", "run.device=cpu", "run.log_every=100000", "optim.meta_batch=10",
        "eval.test_tasks=100", "eval.shots=[10]", "eval.steps=[1]", *extra,
    ])


def _mse(cfg: Config, domain: SinusoidDomain, params: dict, batching: str = "vmap") -> dict[int, float]:
    """Mean query MSE over the seeded test tasks after 0 and 1 inner steps."""
    model = domain.build_model(cfg.run.seed)
    rows = evaluate_supervised(cfg, domain, model, {k: v.detach() for k, v in params.items()}, cfg.maml.inner_lr,
                               CPU, batching)
    return {r["steps"]: r["mean"] for r in rows if r["metric"] == "mse"}


def _initial_params(cfg: Config, domain: SinusoidDomain) -> dict:
    return {k: v.detach().clone() for k, v in domain.build_model(cfg.run.seed).named_parameters()}


# ---- tasks ---------------------------------------------------------------------------------------------------------


def test_tasks_have_the_right_shapes_and_dtype() -> None:
    domain = SinusoidDomain(build_config("sinusoid", ["sinusoid.k_query=7"]).sinusoid)
    (xs, ys), (xq, yq) = domain.sample_tasks(6, np.random.default_rng(0), "train")
    assert xs.shape == ys.shape == (6, 10, 1)
    assert xq.shape == yq.shape == (6, 7, 1)
    assert all(t.dtype == torch.float32 for t in (xs, ys, xq, yq))
    (xs, _), (xq, _) = domain.sample_tasks(3, np.random.default_rng(0), "test", shots=5, queries=100)
    assert xs.shape == (3, 5, 1) and xq.shape == (3, 100, 1)


def test_amplitudes_phases_and_inputs_lie_in_the_papers_ranges() -> None:
    cfg = build_config("sinusoid").sinusoid
    rng = np.random.default_rng(1)
    amplitude, phase = sample_sinusoids(cfg, 2000, rng)
    assert amplitude.min() >= 0.1 and amplitude.max() <= 5.0
    assert phase.min() >= 0.0 and phase.max() <= math.pi
    assert amplitude.max() - amplitude.min() > 4.5  # the whole range is used
    x, y = sinusoid_points(cfg, amplitude, phase, 20, rng)
    assert x.min() >= -5.0 and x.max() <= 5.0 and x.max() - x.min() > 9.5
    assert torch.all(y.abs() <= torch.as_tensor(amplitude, dtype=torch.float32)[:, None, None] + 1e-5)
    expected = torch.as_tensor(amplitude)[:, None, None] * torch.sin(x.double() - torch.as_tensor(phase)[:, None, None])
    torch.testing.assert_close(y.double(), expected, rtol=0, atol=1e-5)


def test_support_and_query_of_a_task_share_its_sinusoid() -> None:
    domain = SinusoidDomain(build_config("sinusoid").sinusoid)
    (xs, ys), (xq, yq) = domain.sample_tasks(50, np.random.default_rng(2), "train")
    amplitude, phase = sample_sinusoids(domain.cfg, 50, np.random.default_rng(2))
    a = torch.as_tensor(amplitude, dtype=torch.float32)[:, None, None]
    p = torch.as_tensor(phase, dtype=torch.float32)[:, None, None]
    torch.testing.assert_close(ys, a * torch.sin(xs - p), rtol=0, atol=1e-5)
    torch.testing.assert_close(yq, a * torch.sin(xq - p), rtol=0, atol=1e-5)


def test_the_same_seed_gives_the_same_tasks_and_another_seed_other_tasks() -> None:
    domain = SinusoidDomain(build_config("sinusoid").sinusoid)
    first = domain.sample_tasks(5, np.random.default_rng(3), "train")
    again = domain.sample_tasks(5, np.random.default_rng(3), "train")
    other = domain.sample_tasks(5, np.random.default_rng(4), "train")
    flat = [t for part in first for t in part]
    assert all(torch.equal(a, b) for a, b in zip(flat, [t for part in again for t in part], strict=True))
    assert not torch.equal(first[0][0], other[0][0])


def test_the_model_is_the_papers_mlp_and_its_init_depends_only_on_the_seed() -> None:
    domain = SinusoidDomain(build_config("sinusoid").sinusoid)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a, b, c = domain.build_model(0), domain.build_model(0), domain.build_model(1)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    shapes = [tuple(p.shape) for p in a.parameters()]
    assert shapes == [(40, 1), (40,), (40, 40), (40,), (1, 40), (1,)]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(next(a.parameters()), next(c.parameters()))
    assert a(torch.zeros(4, 1)).shape == (4, 1)


def test_evaluation_gives_the_same_numbers_with_vmap_and_loop(tmp_path: Path, one_thread) -> None:
    cfg = _cfg(tmp_path, "sinusoid", "eval.steps=[1,3]", "eval.test_tasks=30")
    domain = make_domain(cfg)
    params = _initial_params(cfg, domain)
    v, lp = _mse(cfg, domain, params, "vmap"), _mse(cfg, domain, params, "loop")
    assert v.keys() == lp.keys() == {0, 1, 3}
    for s in v:
        assert v[s] == pytest.approx(lp[s], rel=1e-5)


# ---- training ------------------------------------------------------------------------------------------------------


def test_a_short_maml_run_lowers_the_post_adaptation_loss(tmp_path: Path, one_thread) -> None:
    # The paper's stated alpha = 0.01 (the preset's 1e-3 needs thousands of iterations to show adaptation).
    cfg = _cfg(tmp_path, "sinusoid", "run.iterations=400", "run.checkpoint_every=400", "maml.inner_lr=0.01")
    domain = make_domain(cfg)
    run = RunDir.create(cfg)
    before = _mse(cfg, domain, _initial_params(cfg, domain))

    state = train_supervised(cfg, domain, run)

    assert isinstance(state, MetaState) and state.iteration == 400
    rows = run.metrics()
    assert [r["iteration"] for r in rows] == list(range(400))
    assert all(math.isfinite(r["meta_loss"]) and r["skipped"] == 0.0 for r in rows)
    after = _mse(cfg, domain, state.params)
    # Same seeded test tasks, one inner step of size alpha from each theta.
    assert after[1] < 0.85 * before[1], (before, after)
    # What was learned is an initialisation that adapts: one step helps it more than it helps the initial theta.
    assert after[0] - after[1] > before[0] - before[1] > 0, (before, after)
    # The final checkpoint holds exactly the trained theta.
    saved = run.load_checkpoint()
    assert saved["iteration"] == 399
    assert all(torch.equal(saved["params"][k], v.detach()) for k, v in state.params.items())


def test_the_pretrained_baseline_preset_trains_without_inner_steps(tmp_path: Path, one_thread) -> None:
    cfg = _cfg(tmp_path, "sinusoid-pretrained", "run.iterations=300", "run.checkpoint_every=300")
    assert cfg.maml.inner_steps == 0
    domain = make_domain(cfg)
    run = RunDir.create(cfg)
    before = _mse(cfg, domain, _initial_params(cfg, domain))

    state = train_supervised(cfg, domain, run)

    losses = [r["meta_loss"] for r in run.metrics()]
    assert len(losses) == 300 and all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-50:]) < np.mean(losses[:50])
    after = _mse(cfg, domain, state.params)
    assert after[0] < 0.92 * before[0], (before, after)  # it fits the mean sinusoid over tasks
    assert run.load_checkpoint()["iteration"] == 299
