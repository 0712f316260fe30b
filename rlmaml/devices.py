"""Choosing the learner's device: CUDA when available under ``auto``, or what the config forces."""

from __future__ import annotations

import torch

from rlmaml.config import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` without a GPU is a configuration error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device=cuda but no CUDA device is available; use run.device=auto or cpu")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"run.device must be auto, cpu or cuda; got {name!r}")
    return torch.device(name)
