"""What a supervised few-shot domain supplies to the shared trainer: a model, tasks, a loss, metrics.

A domain owns no training logic. :mod:`rlmaml.supervised.trainer` runs the meta-update for any domain
through :mod:`rlmaml.meta`, and :mod:`rlmaml.supervised.evaluate` evaluates it.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from rlmaml.meta import LossFn, Params
from rlmaml.seeding import seeded_init  # noqa: F401  (re-exported for domains)

# A batch of tasks: (support, query), each a pytree of tensors with a leading task dimension,
# e.g. support = (inputs [T, N*K, ...], targets [T, N*K]).
TaskBatch = tuple[Any, Any]


class SupervisedDomain(Protocol):
    """A family of supervised few-shot tasks."""

    name: str

    def build_model(self, seed: int) -> nn.Module:
        """A freshly initialised model; its initialisation depends only on ``seed`` (see ``seeded_init``)."""
        ...

    def sample_tasks(self, n: int, rng: np.random.Generator, split: str, shots: int | None = None,
                     queries: int | None = None) -> TaskBatch:
        """``n`` tasks from ``split`` ('train' or 'test') stacked along a leading task dimension.

        ``shots`` / ``queries`` override the configured support and query sizes (for evaluation).
        """
        ...

    def loss_fn(self, model: nn.Module) -> LossFn:
        """The loss closure ``loss(params, (inputs, targets))`` used for both inner and outer steps."""
        ...

    def metrics(self, model: nn.Module, params: Params, batch: Any, step: int = 0) -> dict[str, Tensor]:
        """Per-task metrics of ``params`` on one task's ``batch``, e.g. {'loss', 'accuracy'}.

        ``step`` is the inner step that produced ``params`` (for per-step batch-norm weights).
        """
        ...

    def preferred_batching(self, device: torch.device) -> str:
        """'vmap' or 'loop': the faster way to batch this domain's tasks on ``device`` (measured)."""
        ...

