"""``rl.compile``: TRPO's direction (meta-gradient and CG) as one function, eager or through torch.compile.

The compiled function must give the eager numbers, the eager function the step-by-step ones, and a learner
whose compile fails must warn and go on eagerly with the same step.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from test_maml_objective import make_objective

from rlmaml.config import build_config
from rlmaml.rl.build import make_task_distribution, task_requests
from rlmaml.rl.learning import learner as learner_module
from rlmaml.rl.learning.learner import MetaLearner
from rlmaml.rl.learning.maml_objective import candidate_terms, compiled, natural_direction
from rlmaml.rl.learning.trpo import conjugate_gradient
from rlmaml.rl.policies import GaussianMLPPolicy
from rlmaml.rl.sampling.worker import RolloutWorker, WorkerSpec


def _policy_and_params(seed: int) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(3, 2, (8,)).double()
    return policy, {k: v.detach().clone() for k, v in policy.named_parameters()}


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("curvature_tasks", [None, 2])
def test_natural_direction_is_the_step_by_step_cg_solution(steps: int, curvature_tasks: int | None) -> None:
    policy, params = _policy_and_params(0)
    obj = make_objective(policy, steps, False, False)
    phis, old_logp, gradient, x, r = natural_direction(obj, params, 1e-3, 10, curvature_tasks)
    phis_ref, old_logp_ref, gradient_ref, hvp = obj.trpo_terms(params, 1e-3, curvature_tasks)
    x_ref, r_ref = conjugate_gradient(hvp, -gradient_ref, 10, with_residual=True)
    torch.testing.assert_close(gradient, gradient_ref)
    torch.testing.assert_close(old_logp, old_logp_ref)
    torch.testing.assert_close(x, x_ref)
    torch.testing.assert_close(r, r_ref)
    for k in phis:
        torch.testing.assert_close(phis[k], phis_ref[k])
    assert float(x.norm()) > 0


@pytest.mark.slow
@pytest.mark.parametrize("steps", [1, 2])
def test_compiled_natural_direction_equals_eager(steps: int) -> None:
    policy, params = _policy_and_params(1)
    obj = make_objective(policy, steps, False, False)
    # 3 CG iterations: on this tiny, ill-conditioned system 10 would amplify float64 rounding to 1e-8
    eager = natural_direction(obj, params, 1e-3, 3, 2)
    compiled_out = compiled(policy, natural_direction)(obj, params, 1e-3, 3, 2)
    for k in eager[0]:
        torch.testing.assert_close(compiled_out[0][k], eager[0][k], rtol=1e-10, atol=1e-12)
    for got, want in zip(compiled_out[1:], eager[1:], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # the line search's candidate terms too, at a point off θ
    candidate = {k: v + 0.01 * torch.randn_like(v) for k, v in params.items()}
    want = candidate_terms(obj, candidate, eager[1], eager[0])
    got = compiled(policy, candidate_terms)(obj, candidate, eager[1], eager[0])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    assert float(want[1]) > 0


BASE = ["optim.meta_batch=3", "rl.trajectories=4", "rl.horizon=12", "rl.cg_task_fraction=0.67"]


def eager_results(learner: MetaLearner, iteration: int = 1) -> list[dict]:
    """A small nav2d meta-batch sampled with ``learner``'s θ."""
    worker = RolloutWorker(WorkerSpec.from_config(learner.cfg))
    return worker.sample_tasks(learner.weights(), task_requests(learner.cfg, make_task_distribution(learner.cfg),
                                                                iteration))


def _learners_on_one_batch(overrides: list[str]) -> tuple[MetaLearner, MetaLearner]:
    """An eager and a compiling learner (same θ), both given one small nav2d meta-batch."""
    cfg = build_config("nav2d", [*BASE, *overrides])
    spaces = RolloutWorker(WorkerSpec.from_config(cfg)).spaces()
    learners = (MetaLearner(cfg, *spaces, torch.device("cpu")),
                MetaLearner(build_config("nav2d", [*BASE, *overrides, "rl.compile=true"]), *spaces, torch.device("cpu")))
    results = eager_results(learners[0], 0)
    for learner in learners:
        for result in results:
            learner.add_task(result)
    return learners


def test_a_learner_whose_compile_fails_warns_and_takes_the_eager_step(monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("InductorError: no working C++ compiler")

    monkeypatch.setattr(learner_module, "compiled", lambda policy, fn: broken)
    eager, compiling = _learners_on_one_batch([])
    want = eager.step()
    with pytest.warns(UserWarning, match="rl.compile: the compiled learner failed .* running it eagerly from now on: "
                                         "RuntimeError: InductorError: no working C"):
        got = compiling.step()
    assert compiling.direction is None and compiling.candidate is candidate_terms  # eager from now on
    assert got["accepted"] and want["accepted"]
    for k in eager.params:
        torch.testing.assert_close(compiling.params[k], eager.params[k], rtol=1e-4, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning on the next step
        for learner in (eager, compiling):
            for result in eager_results(eager):
                learner.add_task(result)
        assert compiling.step()["accepted"] == eager.step()["accepted"]


@pytest.mark.slow
def test_a_compiling_learner_takes_the_eager_learners_step() -> None:
    eager, compiling = _learners_on_one_batch(["run.seed=3"])
    want, got = eager.step(), compiling.step()
    assert compiling.direction is not None and compiling.candidate is not candidate_terms  # it did compile
    assert got["accepted"] and want["accepted"]
    assert got["kl"] <= compiling.trpo.max_kl
    # float32 rounding differs between the compiled and eager kernels, and 10 CG iterations amplify it: the
    # line search may stop one candidate apart, so compare what precedes it (the float64 test above is exact)
    assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4)
    assert got["surrogate_before"] == pytest.approx(want["surrogate_before"], rel=1e-4, abs=1e-7)
    # a new iteration (new data, new objective object, same shapes) reuses the compiled graphs
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for result in eager_results(compiling):
        compiling.add_task(result)
    assert compiling.step()["accepted"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs > 0
