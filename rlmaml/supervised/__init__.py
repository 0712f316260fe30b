"""The paper's supervised experiments: sinusoid regression and few-shot Omniglot classification."""

from __future__ import annotations

from rlmaml.config import Config
from rlmaml.supervised.domain import SupervisedDomain


def make_domain(cfg: Config) -> SupervisedDomain:
    """The domain object of a supervised experiment."""
    if cfg.experiment == "sinusoid":
        from rlmaml.supervised.sinusoid import SinusoidDomain

        return SinusoidDomain(cfg.sinusoid)
    if cfg.experiment == "omniglot":
        from rlmaml.supervised.omniglot import OmniglotDomain

        return OmniglotDomain(cfg.omniglot)
    raise ValueError(f"experiment {cfg.experiment!r} is not supervised")
