"""TEST HOOK: SIGKILL this process at a chosen point (crash-and-resume tests); a no-op unless the env var is set."""

from __future__ import annotations

import os
import signal

KILL_ENV = "RLMAML_TEST_KILL_AT"
"""Test hook: ``stage:iteration`` at which :func:`kill_point` SIGKILLs this process (crash-and-resume tests)."""


def kill_point(stage: str, iteration: int) -> None:
    """TEST HOOK. SIGKILL this process if ``$RLMAML_TEST_KILL_AT`` is ``f"{stage}:{iteration}"``; else a no-op.

    The stages are 'sampling' (after the iteration's first worker result), 'outer_step' (θ updated in memory,
    nothing of the iteration written) and 'checkpoint_write' (a numbered checkpoint's ``.pt`` in place, its
    manifest not yet). It lets tests/test_reliability_resume.py land a kill at a chosen moment deterministically.
    """
    target = os.environ.get(KILL_ENV)
    if target and target == f"{stage}:{iteration}":
        os.kill(os.getpid(), signal.SIGKILL)
