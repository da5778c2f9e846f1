"""The IB head: variational encoder q(z|h), reparameterised bottleneck, decoder back to the hidden size, prior."""
from __future__ import annotations

import torch
from torch import nn

from trainables.ib.config import IBConfig
from trainables.ib.priors import Prior, build_prior


class IBHead(nn.Module):
    """Encoder h -> (mu, log sigma^2), z = mu + sigma * eps (z = mu in eval), decoder z -> hidden size.

    The head only ever sees the gathered target-token hidden states [N, hidden], never the padded batch.
    """

    def __init__(self, hidden_size: int, config: IBConfig) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.bottleneck_dim = config.bottleneck_dim
        self.logvar_min = config.logvar_min
        self.logvar_max = config.logvar_max
        # One matmul yields both halves (mu, log sigma^2): half the kernel launches of two Linears.
        self.encoder = nn.Linear(hidden_size, 2 * config.bottleneck_dim)
        self.decoder = nn.Linear(config.bottleneck_dim, hidden_size)
        self.prior: Prior = build_prior(config.prior, config.bottleneck_dim, hidden_size, config.prior_options)
        self.prior.bind_encoder(self.encode)

    def encode(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters (mu, log sigma^2 clamped to [logvar_min, logvar_max]) for hidden [..., hidden].

        The residual stream is RMS-normalised (no learned scale) before the encoder. Mid-depth hidden
        states of real LMs carry "massive activations" (SmolLM2-135M: rms ~40, one dim at ~2e4 on the
        first token), which made the KL at initialisation ~1e3-1e6 nats per token, so alpha * KL
        swamped CE_ft and the LoRA weights were pushed to shrink the residual stream instead of
        learning the task. Normalised, the initial KL is O(10) nats and its gradient is scale-free.
        """
        normalised = nn.functional.rms_norm(hidden.float(), (hidden.shape[-1],), eps=1e-6).to(hidden.dtype)
        mu, logvar = self.encoder(normalised).chunk(2, dim=-1)
        return mu, logvar.clamp(self.logvar_min, self.logvar_max)

    def sample(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = mu + sigma * eps while training (reparameterisation trick); z = mu in eval mode."""
        if not self.training:
            return mu
        return mu + (0.5 * logvar).exp() * torch.randn_like(mu)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token KL [N] (fp32, summed over the bottleneck dims) and decoded vectors [N, hidden_size]."""
        mu, logvar = self.encode(hidden)
        # KL in fp32 even for bf16 models: exp/log of the variances lose too much in 8 mantissa bits.
        kl = self.prior.kl(mu.float(), logvar.float())
        decoded = self.decoder(self.sample(mu, logvar))
        return kl, decoded
