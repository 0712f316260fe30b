"""The errors a run reports to the user in one line (the CLI maps each to an exit code)."""

from __future__ import annotations


class RunError(ValueError):
    """A run directory or checkpoint problem the user can act on; the message is one line."""


class TrainingStopped(RuntimeError):
    """A run stopped on purpose (e.g. too many consecutive skipped updates); the message says why."""


class CheckpointError(RunError):
    """A checkpoint that is missing, truncated, corrupted or not an rlmaml checkpoint."""
