"""rlmaml: distributed meta-reinforcement learning with MAML."""

__version__ = "0.1.0"
