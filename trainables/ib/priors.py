"""Priors p(z) for the IB bottleneck, and the registry that maps a config name to one.

Every prior answers one question, `kl(mu, logvar)`: the per-token KL(q(z|h) || p(z)) of diagonal
Gaussian posteriors, summed over the bottleneck dimensions (shape [N]). The head then applies the config's
kl_reduction (ib.kl_reduction "mean" divides by d, the official code's scale), the same for every prior, so
alpha means one thing whichever prior a trial draws. Closed form where one
exists; otherwise a reparameterised Monte-Carlo estimate log q(z) - log p(z), z ~ q, which is
unbiased and differentiable in the posterior and the prior's parameters.

A new prior is one `Prior` subclass plus one line in `PRIORS` (and its name in
`trainables.ib.prior_names.PRIOR_NAMES`, which config validation reads without importing torch).
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from trainables.errors import ConfigError

_LOG_2PI = math.log(2.0 * math.pi)

Encoder = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class PriorOption:
    """One option a prior accepts in `ib.prior_options`: its default and the rule it must satisfy."""

    default: Any
    """Value used when the option is not given."""
    check: Callable[[Any], bool]
    """True when a given value is acceptable."""
    allowed: str
    """What is acceptable, in words, for the error message."""


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


_COMPONENTS = PriorOption(4, _positive_int, "an int >= 1")
_SAMPLES = PriorOption(1, _positive_int, "an int >= 1")


class Prior(nn.Module, abc.ABC):
    """Base class: parses and validates the options, declares the KL interface.

    Subclasses list their options in `OPTIONS`; the validated values arrive as `self.options`.
    """

    name: str = ""
    OPTIONS: dict[str, PriorOption] = {}

    def __init__(self, dim: int, hidden_size: int, options: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.hidden_size = hidden_size
        self.options = self.validate_options(options or {})

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """The options with defaults filled in; a ConfigError names any unknown or bad option."""
        unknown = sorted(set(options) - set(cls.OPTIONS))
        if unknown:
            allowed = ", ".join(sorted(cls.OPTIONS)) or "none"
            raise ConfigError(
                f"ib.prior_options: unknown option(s) {', '.join(unknown)} for prior {cls.name!r}; allowed: {allowed}"
            )
        values = {}
        for key, spec in cls.OPTIONS.items():
            value = options.get(key, spec.default)
            if not spec.check(value):
                raise ConfigError(
                    f"ib.prior_options.{key} for prior {cls.name!r} must be {spec.allowed}, got {value!r}"
                )
            values[key] = value
        return values

    def bind_encoder(self, encode: Encoder) -> None:
        """Give the prior the posterior's encoder h -> (mu, logvar); only priors defined through it use it."""

    @abc.abstractmethod
    def kl(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """Per-token KL(N(mu, exp(logvar)) || p) summed over the bottleneck dims: [N, dim] -> [N].

        Computed in the dtype of `mu` (the head passes fp32 even for a bf16 model)."""


class StandardNormalPrior(Prior):
    """p(z) = N(0, I), the paper's prior; KL in closed form."""

    name = "standard_normal"

    def kl(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(-1)


class LearnableGaussianPrior(Prior):
    """p(z) = N(m, diag(s^2)) with trainable m and log s (initialised to N(0, I)); KL in closed form."""

    name = "learnable_gaussian"

    def __init__(self, dim: int, hidden_size: int, options: dict[str, Any] | None = None) -> None:
        super().__init__(dim, hidden_size, options)
        self.mean = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))

    def kl(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        prior_logvar = 2.0 * self.log_scale.to(mu.dtype)
        ratio = (logvar.exp() + (mu - self.mean.to(mu.dtype)).square()) / prior_logvar.exp()
        return 0.5 * (prior_logvar - logvar + ratio - 1.0).sum(-1)


def _sample_posterior(mu: torch.Tensor, logvar: torch.Tensor, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reparameterised samples z ~ q [S, N, dim] and their log q(z) [S, N]."""
    std = (0.5 * logvar).exp()
    eps = torch.randn((samples, *mu.shape), dtype=mu.dtype, device=mu.device)
    z = mu + std * eps
    # log N(z; mu, std^2) with z - mu = std * eps, so the quadratic term is eps^2 exactly.
    log_q = -0.5 * (eps.square() + logvar + _LOG_2PI).sum(-1)
    return z, log_q


def _log_mixture_density(z: torch.Tensor, means: torch.Tensor, logvars: torch.Tensor,
                         log_weights: torch.Tensor) -> torch.Tensor:
    """log sum_k w_k N(z; means_k, diag(exp(logvars_k))) for z [..., dim] and K components -> [...].

    The quadratic form is expanded into matmuls so no [..., K, dim] tensor is built: with
    thousands of tokens and dozens of components that tensor would dwarf everything else.
    """
    precision = (-logvars).exp()  # [K, dim]
    quadratic = (
        z.square() @ precision.T
        - 2.0 * (z @ (means * precision).T)
        + (means.square() * precision).sum(-1)
    )  # [..., K]
    log_components = -0.5 * (quadratic + logvars.sum(-1) + means.shape[-1] * _LOG_2PI)
    return torch.logsumexp(log_components + log_weights, dim=-1)


class MixtureOfGaussiansPrior(Prior):
    """p(z) = sum_k pi_k N(m_k, diag(s_k^2)), all learnable; KL estimated by sampling z from q.

    Options: `components` (K, default 4), `samples` (Monte-Carlo samples per token, default 1).
    """

    name = "mog"
    OPTIONS = {"components": _COMPONENTS, "samples": _SAMPLES}

    def __init__(self, dim: int, hidden_size: int, options: dict[str, Any] | None = None) -> None:
        super().__init__(dim, hidden_size, options)
        k = self.options["components"]
        # Distinct small offsets break the symmetry between components; at 0.1 the mixture starts
        # close to N(0, I), so the KL at initialisation is on the paper's (standard normal) scale.
        self.means = nn.Parameter(0.1 * torch.randn(k, dim))
        self.log_scales = nn.Parameter(torch.zeros(k, dim))
        self.logits = nn.Parameter(torch.zeros(k))

    def kl(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        z, log_q = _sample_posterior(mu, logvar, self.options["samples"])
        dtype = mu.dtype
        log_p = _log_mixture_density(
            z, self.means.to(dtype), 2.0 * self.log_scales.to(dtype), torch.log_softmax(self.logits.to(dtype), -1)
        )
        return (log_q - log_p).mean(0)


class VampPrior(Prior):
    """VampPrior (Tomczak & Welling 2018): p(z) = 1/K sum_k q(z | u_k) over K learnable pseudo-inputs
    u_k in the tapped hidden space, pushed through the same encoder as the data; KL by sampling.

    Options: `components` (K, default 4), `samples` (Monte-Carlo samples per token, default 1).
    """

    name = "vamp"
    OPTIONS = {"components": _COMPONENTS, "samples": _SAMPLES}

    def __init__(self, dim: int, hidden_size: int, options: dict[str, Any] | None = None) -> None:
        super().__init__(dim, hidden_size, options)
        # Unit-scale pseudo-inputs: the same order of magnitude as embeddings and normed hidden states.
        self.pseudo_inputs = nn.Parameter(torch.randn(self.options["components"], hidden_size))
        self._encode: Encoder | None = None

    def bind_encoder(self, encode: Encoder) -> None:
        # Kept as a plain attribute, not a submodule: the encoder's weights belong to the head and
        # must appear once in its state dict.
        self._encode = encode

    def kl(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        if self._encode is None:
            raise RuntimeError("VampPrior.kl called before bind_encoder: build it through IBHead")
        means, logvars = (t.to(mu.dtype) for t in self._encode(self.pseudo_inputs))
        z, log_q = _sample_posterior(mu, logvar, self.options["samples"])
        k = means.shape[0]
        log_weights = torch.full((k,), -math.log(k), dtype=means.dtype, device=means.device)
        log_p = _log_mixture_density(z, means, logvars, log_weights)
        return (log_q - log_p).mean(0)


PRIORS: dict[str, type[Prior]] = {
    "standard_normal": StandardNormalPrior,
    "learnable_gaussian": LearnableGaussianPrior,
    "mog": MixtureOfGaussiansPrior,
    "vamp": VampPrior,
}


def build_prior(name: str, dim: int, hidden_size: int, options: dict[str, Any] | None = None) -> Prior:
    """The prior registered under `name`, with validated options; ConfigError lists the valid names."""
    if name not in PRIORS:
        raise ConfigError(f"ib.prior {name!r} is unknown; valid priors: {', '.join(PRIORS)}")
    return PRIORS[name](dim, hidden_size, options)
