"""rlmaml: distributed meta-reinforcement learning with MAML.

The MAML core is a small public API (see ``docs/own_model.md``): :func:`params_of` takes a model's
parameters as a ``dict[str, Tensor]``, :func:`model_loss` builds the ``loss_fn(params, batch)`` that runs the
model functionally, :func:`adapt` takes inner gradient steps and :func:`meta_objective` averages the
post-adaptation loss over a batch of tasks. They are imported on first use, so ``import rlmaml`` stays light
(no torch, ray or gymnasium until needed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["adapt", "meta_objective", "model_loss", "params_of"]

if TYPE_CHECKING:
    from rlmaml.meta import adapt, meta_objective, model_loss, params_of


def __getattr__(name: str) -> Any:
    """The public core functions, imported from :mod:`rlmaml.meta` on first access."""
    if name in __all__:
        from rlmaml import meta

        value = getattr(meta, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rlmaml' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
