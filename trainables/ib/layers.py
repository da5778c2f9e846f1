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
        self.normalise_input = config.encoder_input == "rms_norm"
        # "mean" divides each token's KL (a sum over dims, as every prior computes it) by d: the official
        # code's .mean() over tokens x dims once the model averages over tokens.
        self.kl_scale = 1.0 / config.bottleneck_dim if config.kl_reduction == "mean" else 1.0
        # One matmul yields both halves (mu, log sigma^2): half the kernel launches of two Linears.
        self.encoder = nn.Linear(hidden_size, 2 * config.bottleneck_dim)
        self.decoder = nn.Linear(config.bottleneck_dim, hidden_size)
        self.prior: Prior = build_prior(config.prior, config.bottleneck_dim, hidden_size, config.prior_options)
        self.prior.bind_encoder(self.encode)

    def encode(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters (mu, log sigma^2 clamped to [logvar_min, logvar_max]) for hidden [..., hidden].

        encoder_input "raw" reads hidden_states[L] as it is, like the official code. "rms_norm" first
        RMS-normalises it (no learned scale), so the KL no longer depends on the residual stream's scale. That
        was this project's earlier default, added against "massive activations" (SmolLM2-135M: one dim at
        ~2e4 on position 0); but position 0 is always a prompt token, which never enters the KL, and most of the
        blow-up it was meant to tame came from summing the KL over the dims (docs/fidelity.md).
        """
        if self.normalise_input:
            hidden = nn.functional.rms_norm(hidden.float(), (hidden.shape[-1],), eps=1e-6).to(hidden.dtype)
        mu, logvar = self.encoder(hidden).chunk(2, dim=-1)
        return mu, logvar.clamp(self.logvar_min, self.logvar_max)

    def sample(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = mu + sigma * eps while training (reparameterisation trick); z = mu in eval mode."""
        if not self.training:
            return mu
        return mu + (0.5 * logvar).exp() * torch.randn_like(mu)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token KL [N] (fp32; mean or sum over the bottleneck dims per kl_reduction) and decoded vectors [N, hidden_size]."""
        mu, logvar = self.encode(hidden)
        # KL in fp32 even for bf16 models: exp/log of the variances lose too much in 8 mantissa bits.
        kl = self.prior.kl(mu.float(), logvar.float()) * self.kl_scale
        decoded = self.decoder(self.sample(mu, logvar))
        return kl, decoded
