"""Specifications of rlmaml.rl.episodes: the padded batch and its return/advantage recursions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlmaml.rl.episodes import Episodes, discounted_returns, gae, normalize

# Two trajectories: k=0 lives 3 steps, k=1 lives 2 steps (T = 3).
REWARDS = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 99.0]])
MASK = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])


def test_discounted_returns_hand_example_with_padding() -> None:
    g = 0.5
    expected = torch.tensor([[1 + g * 3 + g * g * 5, 2 + g * 4], [3 + g * 5, 4.0], [5.0, 0.0]])
    torch.testing.assert_close(discounted_returns(REWARDS, MASK, g), expected)


def test_gae_hand_example() -> None:
    g, lam = 0.5, 0.5
    values = torch.tensor([[1.0, 1.0], [2.0, 3.0], [4.0, 7.0]])
    # k=0: deltas with V after the last step = 0
    d0 = [1 + g * 2 - 1, 3 + g * 4 - 2, 5 + 0 - 4]
    # k=1: the padded value 7 must not be used
    d1 = [2 + g * 3 - 1, 4 + 0 - 3]
    a0_2 = d0[2]
    a0_1 = d0[1] + g * lam * a0_2
    a0_0 = d0[0] + g * lam * a0_1
    a1_1 = d1[1]
    a1_0 = d1[0] + g * lam * a1_1
    expected = torch.tensor([[a0_0, a1_0], [a0_1, a1_1], [a0_2, 0.0]])
    torch.testing.assert_close(gae(REWARDS, values, MASK, g, lam), expected)


def test_gae_with_lambda_one_and_zero_values_is_discounted_returns() -> None:
    rewards = torch.randn(7, 4)
    mask = (torch.arange(7).unsqueeze(1) < torch.tensor([7, 5, 1, 3])).float()
    torch.testing.assert_close(
        gae(rewards, torch.zeros(7, 4), mask, 0.9, 1.0), discounted_returns(rewards, mask, 0.9)
    )


def test_gae_ignores_rewards_and_values_on_padding() -> None:
    rewards = torch.randn(6, 3)
    values = torch.randn(6, 3)
    mask = (torch.arange(6).unsqueeze(1) < torch.tensor([6, 4, 2])).float()
    noisy_r = rewards + 100.0 * (1 - mask) * torch.randn(6, 3)
    noisy_v = values + 100.0 * (1 - mask) * torch.randn(6, 3)
    out = gae(rewards, values, mask, 0.99, 0.95)
    torch.testing.assert_close(gae(noisy_r, noisy_v, mask, 0.99, 0.95), out)
    assert bool((out[mask == 0] == 0).all())


def test_normalize_uses_only_valid_entries() -> None:
    x = torch.randn(5, 3) * 3 + 2
    mask = (torch.arange(5).unsqueeze(1) < torch.tensor([5, 3, 1])).float()
    x = x + 1000.0 * (1 - mask)
    out = normalize(x, mask)
    valid = out[mask > 0]
    torch.testing.assert_close(valid.mean(), torch.tensor(0.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(valid.std(unbiased=False), torch.tensor(1.0), atol=1e-5, rtol=0)
    assert bool((out[mask == 0] == 0).all())


def test_episodes_summaries() -> None:
    ep = Episodes(torch.zeros(3, 2, 4), torch.zeros(3, 2, 1), REWARDS, MASK)
    assert ep.lengths.tolist() == [3, 2]
    assert ep.num_steps == 5
    assert (ep.horizon, ep.batch_size) == (3, 2)
    torch.testing.assert_close(ep.total_return(), torch.tensor([9.0, 6.0]))


def test_episodes_numpy_round_trip_keeps_discrete_actions_integer() -> None:
    ep = Episodes(torch.randn(3, 2, 4), torch.tensor([[0, 1], [2, 0], [1, 0]]), REWARDS, MASK,
                  advantages=torch.randn(3, 2))
    d = ep.to_numpy()
    assert set(d) == {"observations", "actions", "rewards", "mask", "advantages"}
    back = Episodes.from_numpy(d, "cpu")
    assert back.actions.dtype == torch.int64 and back.observations.dtype == torch.float32
    assert back.returns is None
    for name in d:
        np.testing.assert_array_equal(getattr(back, name).numpy(), d[name])
    assert ep.to("cpu").observations.device.type == "cpu"


def test_episodes_reject_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        Episodes(torch.zeros(4, 2, 3), torch.zeros(3, 2, 1), REWARDS, MASK)
