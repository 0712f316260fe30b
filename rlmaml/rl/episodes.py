"""A time-major padded batch of trajectories, and the return/advantage recursions over it.

``Episodes`` holds K trajectories of one task, padded to a common length T: ``mask[t, k]`` is 1.0 while
trajectory k is alive at step t (a prefix of ones). Every recursion here multiplies by the mask, so
padding never leaks into returns, advantages or statistics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from torch import Tensor

_OPTIONAL = ("returns", "advantages")


@dataclass(eq=False)
class Episodes:
    """K padded trajectories, time-major: ``observations [T, K, obs_dim]``, ``rewards/mask [T, K]``.

    ``actions`` is ``[T, K, act_dim]`` float32 (continuous) or ``[T, K]`` int64 (discrete).
    ``returns`` / ``advantages`` (``[T, K]``) are filled in by ``rlmaml.rl.objectives.with_advantages``.
    """

    observations: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor
    returns: Tensor | None = None
    advantages: Tensor | None = None

    def __post_init__(self) -> None:
        tk = tuple(self.mask.shape)
        if len(tk) != 2:
            raise ValueError(f"mask must be [T, K], got {tk}")
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and tuple(value.shape[:2]) != tk:
                raise ValueError(f"{f.name} has shape {tuple(value.shape)}, expected leading {tk}")

    @property
    def horizon(self) -> int:
        """T, the padded length."""
        return int(self.mask.shape[0])

    @property
    def batch_size(self) -> int:
        """K, the number of trajectories."""
        return int(self.mask.shape[1])

    @property
    def lengths(self) -> Tensor:
        """``[K]`` int64: the number of valid steps of each trajectory."""
        return self.mask.sum(0).round().to(torch.int64)

    @property
    def num_steps(self) -> int:
        """The total number of valid steps."""
        return int(self.mask.sum().round().item())

    @property
    def device(self) -> torch.device:
        return self.mask.device

    def total_return(self) -> Tensor:
        """``[K]``: the undiscounted sum of each trajectory's valid rewards."""
        return (self.rewards * self.mask).sum(0)

    def to(self, device: torch.device | str) -> Episodes:
        """A copy with every tensor on ``device``."""
        return replace(
            self, **{f.name: _to(getattr(self, f.name), device) for f in fields(self)}
        )

    def to_numpy(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays (for shipping between processes); unset optional fields are omitted."""
        return {
            f.name: getattr(self, f.name).detach().cpu().numpy()
            for f in fields(self)
            if getattr(self, f.name) is not None
        }

    @classmethod
    def from_numpy(cls, d: Mapping[str, np.ndarray], device: torch.device | str = "cpu") -> Episodes:
        """The inverse of ``to_numpy``: integer actions stay int64, everything else becomes float32."""
        out: dict[str, Tensor] = {}
        for name, a in d.items():
            a = np.asarray(a)
            dtype = torch.int64 if name == "actions" and np.issubdtype(a.dtype, np.integer) else torch.float32
            out[name] = torch.as_tensor(a).to(device=device, dtype=dtype)
        return cls(**out)


def _to(x: Tensor | None, device: torch.device | str) -> Tensor | None:
    return None if x is None else x.to(device)


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """``[T, K]``: ``R_t = Σ_{u ≥ t} γ^{u-t} r_u`` over the valid steps; 0 on padding."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = mask[t] * (rewards[t] + gamma * running)
        out[t] = running
    return out


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tensor:
    """``[T, K]`` generalised advantage estimates (Schulman et al. 2016); 0 on padding.

    ``δ_t = r_t + γ V_{t+1} - V_t`` with the value after a trajectory's last valid step taken as 0 (the
    paper's convention: episode ends are treated as terminal), and ``A_t = δ_t + γλ A_{t+1}``.
    """
    values = values * mask
    next_values = torch.cat([values[1:], torch.zeros_like(values[:1])], dim=0)
    deltas = (rewards + gamma * next_values - values) * mask
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = mask[t] * (deltas[t] + gamma * lam * running)
        out[t] = running
    return out


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over the valid entries (0 if there are none)."""
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def normalize(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """``(x - mean) / (std + eps)`` with mean and (population) std over valid entries; 0 on padding."""
    mean = masked_mean(x, mask)
    std = masked_mean((x - mean) ** 2, mask).sqrt()
    return (x - mean) / (std + eps) * mask
