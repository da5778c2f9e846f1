"""IB-FT: the information-bottleneck head, its priors, and the model wrapper that adds the IB loss.

`IBModel` and `PRIORS` load torch on first access only: trainables.train.config (and with it the
CLI's --help and the search driver's space validation) imports `trainables.ib.config` through this
package and must stay torch-free.
"""
from typing import Any

from trainables.ib.config import IBConfig

__all__ = ["IBConfig", "IBModel", "PRIORS"]


def __getattr__(name: str) -> Any:
    if name == "IBModel":
        from trainables.ib.model import IBModel

        return IBModel
    if name == "PRIORS":
        from trainables.ib.priors import PRIORS

        return PRIORS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
