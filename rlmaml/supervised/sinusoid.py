"""Sinusoid regression (paper section 5.1): y = A sin(x - phase), a 1-40-40-1 ReLU MLP, MSE loss."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rlmaml.config import SinusoidConfig
from rlmaml.meta import LossFn, Params, model_loss
from rlmaml.networks import mlp
from rlmaml.seeding import seeded_init
from rlmaml.supervised.domain import TaskBatch


def sample_sinusoids(cfg: SinusoidConfig, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Amplitudes and phases of ``n`` tasks."""
    amplitude = rng.uniform(*cfg.amplitude, size=n)
    phase = rng.uniform(*cfg.phase, size=n)
    return amplitude, phase


def sinusoid_points(cfg: SinusoidConfig, amplitude: np.ndarray, phase: np.ndarray, k: int,
                    rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """``k`` points of each task: inputs and targets of shape ``[n, k, 1]`` (float32)."""
    x = rng.uniform(*cfg.x_range, size=(len(amplitude), k, 1))
    y = amplitude[:, None, None] * np.sin(x - phase[:, None, None])
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)


class SinusoidDomain:
    """Sinusoid regression tasks for the shared supervised trainer."""

    name = "sinusoid"

    def __init__(self, cfg: SinusoidConfig) -> None:
        self.cfg = cfg

    def build_model(self, seed: int) -> nn.Module:
        """The paper's 1-40-40-1 ReLU MLP, initialised as the original code: weights ~ N(0, 0.01²)
        truncated at 2 std, biases 0.

        PyTorch's default (Kaiming-uniform) initialisation trained to a sharper solution: with it, 10 test-time
        steps at K=5 diverged on a few of the 600 test tasks (mean MSE ~1e12 after 10 steps in one 70k run).
        """

        def build() -> nn.Module:
            model = mlp(1, self.cfg.hidden, 1)
            for layer in model:
                if isinstance(layer, nn.Linear):
                    nn.init.trunc_normal_(layer.weight, std=0.01, a=-0.02, b=0.02)
                    nn.init.zeros_(layer.bias)
            return model

        return seeded_init(seed, build)

    def sample_tasks(self, n: int, rng: np.random.Generator, split: str = "train", shots: int | None = None,
                     queries: int | None = None) -> TaskBatch:
        """``n`` tasks with ``shots`` support and ``queries`` query points each; the split only names intent."""
        amplitude, phase = sample_sinusoids(self.cfg, n, rng)
        support = sinusoid_points(self.cfg, amplitude, phase, shots or self.cfg.k_shot, rng)
        query = sinusoid_points(self.cfg, amplitude, phase, queries or self.cfg.k_query, rng)
        return support, query

    def loss_fn(self, model: nn.Module) -> LossFn:
        """Mean squared error of the model run functionally with ``params``."""
        return model_loss(model, nn.functional.mse_loss)

    def metrics(self, model: nn.Module, params: Params, batch: Any, step: int = 0) -> dict[str, Tensor]:
        """MSE on a task's query points."""
        return {"mse": self.loss_fn(model)(params, batch)}

    def preferred_batching(self, device: torch.device) -> str:
        """vmap: measured ~10x faster than a loop for 25 tasks of this small MLP on a 2-core CPU."""
        return "vmap"
