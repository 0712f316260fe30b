"""Starting or joining Ray for the meta-RL trainer.

``init_ray("")`` starts the embedded default: a new local, single-node Ray owned by this process
(``ray.init(address="local")``, so never a cluster that ``ray start`` left running on this machine), with the
dashboard bound to 127.0.0.1. ``init_ray("auto")`` or ``init_ray("host:port")`` joins a running cluster (one
started from ``launch/``); so does ``init_ray("")`` when ``RAY_ADDRESS`` is set (Ray's convention, e.g. inside
a Ray job). The call is idempotent: if Ray is already initialised (tests share one instance, or a caller
started Ray itself) it does nothing.

Security defaults (checked against Ray 2.60's docs and its ``ray/_private/worker.py``):

* Token authentication. Ray 2.52 introduced it, off by default; from 2.59 a *new local* cluster started by a
  plain ``ray.init()`` turns it on by default (``enable_token_auth_by_default``): unless ``RAY_AUTH_MODE`` is
  set, Ray sets ``RAY_AUTH_MODE=token`` for this process and its children and creates ``~/.ray/auth_token``
  if it is missing. We never set ``RAY_AUTH_MODE`` ourselves, so the embedded start keeps it on; we only
  warn when the environment turns it off (``RAY_AUTH_MODE=disabled``). When joining, ``address="auto"``
  turns token mode on if a token is available, and an explicit ``host:port`` (or ``RAY_ADDRESS``) follows
  ``RAY_AUTH_MODE`` only: the cluster's nodes and this driver must agree, which the ``launch/`` files
  arrange (``RAY_AUTH_MODE=token`` on every node and in ``submit.sh``, the same token file).
* The token file. Ray 2.60 writes a missing ``~/.ray/auth_token`` with ``open(path, "w")``, i.e. readable by
  every user of the machine under the usual umask (0644), and the token lets its holder run code on the
  cluster. :func:`ensure_private_token` creates it first, mode 0600 in a 0700 ``~/.ray`` (with Ray's own
  generator), and narrows an existing one that others can read (with a warning). Skipped when the token comes
  from ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH`` or authentication is turned off.
* The dashboard (and the Jobs API behind it) binds to ``dashboard_host`` (``rl.dashboard_host``, default
  127.0.0.1).
* The metrics export is off (``_system_config={"enable_metrics_collection": False}``, a setting of Ray's own
  ``ray_config_def.h``; ``RAY_enable_metrics_collection`` in the environment takes precedence). With it on, each
  node's dashboard agent serves Prometheus metrics on ``metrics_export_port`` bound to every interface (Ray's
  ``reporter_agent.py`` binds to 127.0.0.1 only when the node's IP is loopback, and ``ray.init`` resolves a
  loopback ``_node_ip_address`` to the machine's IP). Other listeners of a local Ray are listed in
  launch/README.md ("Ports").
"""

from __future__ import annotations

import logging
import os
import stat
import sys
from pathlib import Path
from typing import Any

_STARTED_HERE = False
"""Whether :func:`init_ray` started the Ray instance this process is connected to."""

LOOPBACK = "127.0.0.1"
METRICS_ENV = "RAY_enable_metrics_collection"
"""Ray's environment switch for its metrics collection and export; when set, it is left to decide."""


def token_path() -> Path:
    """Where Ray 2.60 reads (and writes) the token when no environment variable names one: ~/.ray/auth_token."""
    return Path.home() / ".ray" / "auth_token"


def ensure_private_token() -> Path | None:
    """Create ~/.ray/auth_token (mode 0600, in a 0700 ~/.ray) before Ray would create it world-readable, or narrow
    an existing one that group or others can read. Returns the file, or None where Ray will not read it (token from
    ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH``, authentication turned off)."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return None
    if os.environ.get("RAY_AUTH_MODE", "token").lower() == "disabled":
        return None
    path = token_path()
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            os.chmod(path, 0o600)
            print(f"rlmaml: warning: {path} was readable by other users (mode {mode:04o}); it is now 0600",
                  file=sys.stderr, flush=True)
        return path
    from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(generate_new_authentication_token())
    os.chmod(path, 0o600)  # whatever the umask
    return path


def init_ray(address: str = "", dashboard_host: str = LOOPBACK, num_cpus: int | None = None,
             include_dashboard: bool | None = None, num_gpus: int | None = None,
             runtime_env: dict[str, Any] | None = None) -> None:
    """Start a local Ray (no address) or join a cluster (``"auto"`` / ``host:port``); no-op if Ray is up.

    ``include_dashboard=None`` starts the dashboard when its packages are installed (``ray[default]``), bound to
    ``dashboard_host``. Workers' output is not forwarded to the driver (``log_to_driver=False``): errors still
    arrive as exceptions.
    """
    global _STARTED_HERE
    import ray

    if ray.is_initialized():
        return
    common: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if runtime_env:
        common["runtime_env"] = runtime_env
    if address or os.environ.get("RAY_ADDRESS"):
        # Joining: the cluster owns its resources, dashboard and authentication mode.
        ray.init(address=address or None, **common)
        return
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        print("rlmaml: warning: RAY_AUTH_MODE=disabled turns off Ray's token authentication for the local "
              "instance; unset it to keep authentication on", file=sys.stderr, flush=True)
    if dashboard_host not in (LOOPBACK, "localhost", "::1"):
        print(f"rlmaml: warning: the Ray dashboard will listen on {dashboard_host}; anyone who can reach it "
              "can run code on this machine", file=sys.stderr, flush=True)
    ensure_private_token()
    if METRICS_ENV not in os.environ:  # no Prometheus endpoint on every interface for a local run
        common["_system_config"] = {"enable_metrics_collection": False}
    # address="local": always a new instance. address=None would join the cluster recorded in
    # /tmp/ray/ray_current_cluster (a `ray start` on this machine) instead of starting ours with these settings.
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=include_dashboard,
             dashboard_host=dashboard_host, **common)
    _STARTED_HERE = True


def started_here() -> bool:
    """True if the current Ray instance was started by :func:`init_ray` (and so is ours to shut down)."""
    import ray

    return _STARTED_HERE and ray.is_initialized()


def shutdown_ray() -> None:
    """Shut Ray down if, and only if, :func:`init_ray` started it."""
    global _STARTED_HERE
    if started_here():
        import ray

        ray.shutdown()
    _STARTED_HERE = False


def ray_is_initialized() -> bool:
    """Whether this process is connected to Ray, without importing Ray when nothing has."""
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def cluster_resources() -> dict[str, float]:
    """The cluster's total resources now (``{}`` when Ray is not initialised)."""
    if not ray_is_initialized():
        return {}
    import ray

    return dict(ray.cluster_resources())


def autoscaler_max_resources() -> dict[str, float]:
    """The most of each resource the autoscaler could provide (``{}`` without an autoscaler config).

    Uses ``ray._private.state.state.get_max_resources_from_cluster_config`` (the call Ray Train and Ray Data
    use for the same purpose); a cluster whose GPU node type has ``min_workers: 0`` shows its GPU here
    before any GPU node exists.
    """
    if not ray_is_initialized():
        return {}
    try:
        from ray._private.state import state

        found = state.get_max_resources_from_cluster_config()
    except Exception:  # a private API: absent or changed means "no autoscaler information"
        return {}
    return {k: float(v) for k, v in (found or {}).items()}


def driver_node_cpus() -> float:
    """CPUs the driver's node advertises to Ray (0 on a head started with ``--num-cpus=0``)."""
    if not ray_is_initialized():
        return 0.0
    import ray

    me = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == me:
            return float(node.get("Resources", {}).get("CPU", 0.0))
    return 0.0


def default_num_workers(total_cpus: float, driver_cpus: float) -> int:
    """Rollout actors by default: the cluster's CPUs minus one for the driver/learner when the driver's node
    advertises CPUs (a head with ``num_cpus=0`` leaves every CPU to workers); at least 1."""
    reserve = 1 if driver_cpus >= 1 else 0
    return max(int(total_cpus) - reserve, 1)
