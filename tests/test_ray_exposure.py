"""What the trainer exposes through Ray by default: the dashboard on loopback, token authentication left on.

These tests catch the arguments ``rlmaml train`` hands to ``ray.init`` (through ``rlmaml.rl.ray_runtime.init_ray``)
instead of starting Ray. That a started instance really runs in token mode is checked on the shared session
instance by tests/test_ray_sampler.py::test_init_ray_is_idempotent_and_keeps_token_auth.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rlmaml.cli import main
from rlmaml.config import RLConfig, build_config, preset_names
from rlmaml.rl import ray_runtime

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray")

LAUNCH_README = Path(__file__).resolve().parent.parent / "launch" / "README.md"


class _Stop(Exception):
    """Raised by the fake ``ray.init`` once it has recorded its arguments."""


@pytest.fixture
def ray_init_calls(monkeypatch) -> list[dict]:
    """``ray.init`` replaced by a recorder, Ray seen as not started, and no Ray/auth settings in the environment."""
    calls: list[dict] = []

    def fake_init(*args, **kwargs):
        calls.append({"args": args, **kwargs})
        raise _Stop

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    for var in ("RAY_ADDRESS", "RAY_AUTH_MODE"):
        monkeypatch.setenv(var, "x")  # set, then delete: monkeypatch restores whatever was there
        monkeypatch.delenv(var)
    return calls


def test_the_default_dashboard_host_is_loopback_in_the_config_and_every_rl_preset() -> None:
    assert RLConfig().dashboard_host == "127.0.0.1"
    for name in preset_names():
        cfg = build_config(name)
        if cfg.experiment == "rl":
            assert cfg.rl.dashboard_host == "127.0.0.1", name
            assert cfg.rl.address == "", name  # the default starts an embedded local Ray, joins nothing


def test_rlmaml_train_with_its_defaults_starts_ray_with_the_dashboard_on_loopback(ray_init_calls, tmp_path) -> None:
    with pytest.raises(_Stop):
        main(["train", "nav2d", f"run.dir={tmp_path / 'run'}", "run.iterations=1", "run.device=cpu"])
    assert len(ray_init_calls) == 1
    call = ray_init_calls[0]
    assert call["dashboard_host"] == "127.0.0.1"
    assert not call["args"] and call["address"] == "local"  # a new local instance, never a join
    assert "auth" not in repr(call.get("_system_config", {})).lower()


def test_rlmaml_train_leaves_rays_token_authentication_default_on(ray_init_calls, tmp_path) -> None:
    import os

    from ray._private.authentication.authentication_token_setup import enable_token_auth_by_default

    with pytest.raises(_Stop):
        main(["train", "nav2d", f"run.dir={tmp_path / 'run'}", "run.iterations=1", "run.device=cpu"])
    # Nothing on our side decided the auth mode, so Ray 2.60's default for a new local instance applies: token.
    assert "RAY_AUTH_MODE" not in os.environ
    assert enable_token_auth_by_default() is True
    assert os.environ["RAY_AUTH_MODE"] == "token"


def test_the_embedded_start_never_joins_another_local_cluster(ray_init_calls) -> None:
    # address=None would join a cluster recorded in /tmp/ray/ray_current_cluster (a `ray start` on this machine),
    # with that cluster's dashboard and auth settings, instead of starting ours with the settings above.
    with pytest.raises(_Stop):
        ray_runtime.init_ray("")
    assert ray_init_calls[0]["address"] == "local"  # Ray's value for 'start a new local instance'


def test_joining_a_cluster_passes_no_dashboard_or_auth_settings(ray_init_calls) -> None:
    with pytest.raises(_Stop):
        ray_runtime.init_ray("auto")
    call = ray_init_calls[0]
    assert call["address"] == "auto"
    assert "dashboard_host" not in call and "include_dashboard" not in call


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5"])
def test_a_dashboard_host_beyond_loopback_is_started_only_with_a_warning(ray_init_calls, host, capsys) -> None:
    with pytest.raises(_Stop):
        ray_runtime.init_ray("", dashboard_host=host)
    assert ray_init_calls[0]["dashboard_host"] == host
    err = capsys.readouterr().err
    assert err.startswith("rlmaml: warning:") and host in err and "run code" in err


def test_token_authentication_turned_off_by_the_environment_is_warned_about(ray_init_calls, monkeypatch,
                                                                           capsys) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.raises(_Stop):
        ray_runtime.init_ray("")
    err = capsys.readouterr().err
    assert err.startswith("rlmaml: warning:") and "RAY_AUTH_MODE=disabled" in err


def test_the_launch_readme_says_plainly_that_a_ray_cluster_must_sit_on_a_private_network() -> None:
    text = " ".join(LAUNCH_README.read_text().split())
    assert re.search(r"\*\*A Ray cluster must sit on a private network\.\*\*", text)
    security = text[text.index("## 4. Security"):]
    assert "must sit on a private network" in security
