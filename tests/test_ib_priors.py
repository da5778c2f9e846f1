"""Priors: registry, closed-form KLs against Monte-Carlo estimates, sampled KLs, option validation."""
from __future__ import annotations


import pytest
import torch

from trainables.errors import ConfigError
from trainables.ib.layers import IBHead
from trainables.ib.config import IBConfig
from trainables.ib.prior_names import PRIOR_NAMES
from trainables.ib.priors import PRIORS, Prior, build_prior

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIM = 8
HIDDEN = 16


def _posterior(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, DIM, generator=g), torch.empty(n, DIM).uniform_(-2.0, 1.0, generator=g)


def _monte_carlo_kl(mu, logvar, log_p, samples: int = 20000) -> torch.Tensor:
    """E_q[log q(z) - log p(z)] by brute force, with torch.distributions, independent of the priors' code."""
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    z = q.sample((samples,))
    return (q.log_prob(z).sum(-1) - log_p(z)).mean(0)


def test_registry_keys_equal_the_torch_free_name_list():
    assert tuple(PRIORS) == PRIOR_NAMES
    assert all(issubclass(cls, Prior) and cls.name == name for name, cls in PRIORS.items())


def test_standard_normal_closed_form_matches_monte_carlo():
    mu, logvar = _posterior()
    prior = build_prior("standard_normal", DIM, HIDDEN)
    exact = prior.kl(mu, logvar)
    p = torch.distributions.Normal(0.0, 1.0)
    estimate = _monte_carlo_kl(mu[:8], logvar[:8], lambda z: p.log_prob(z).sum(-1))
    assert exact.shape == (64,)
    torch.testing.assert_close(exact[:8], estimate, rtol=0.05, atol=0.05)
    # KL is zero exactly at the prior itself.
    torch.testing.assert_close(prior.kl(torch.zeros(3, DIM), torch.zeros(3, DIM)), torch.zeros(3))


def test_learnable_gaussian_closed_form_matches_monte_carlo_after_moving_the_prior():
    mu, logvar = _posterior()
    prior = build_prior("learnable_gaussian", DIM, HIDDEN)
    torch.testing.assert_close(prior.kl(mu, logvar), build_prior("standard_normal", DIM, HIDDEN).kl(mu, logvar))
    with torch.no_grad():
        prior.mean.uniform_(-1, 1)
        prior.log_scale.uniform_(-0.5, 0.5)
    p = torch.distributions.Normal(prior.mean.detach(), prior.log_scale.detach().exp())
    estimate = _monte_carlo_kl(mu[:8], logvar[:8], lambda z: p.log_prob(z).sum(-1))
    torch.testing.assert_close(prior.kl(mu, logvar)[:8].detach(), estimate, rtol=0.05, atol=0.05)


def test_mog_with_one_standard_component_estimates_the_standard_normal_kl_without_bias():
    mu, logvar = _posterior(n=16)
    prior = build_prior("mog", DIM, HIDDEN, {"components": 1, "samples": 4000})
    with torch.no_grad():
        prior.means.zero_()
    torch.manual_seed(0)
    estimate = prior.kl(mu, logvar)
    exact = build_prior("standard_normal", DIM, HIDDEN).kl(mu, logvar)
    torch.testing.assert_close(estimate.detach(), exact, rtol=0.05, atol=0.05)


def test_mog_density_matches_torch_distributions_mixture():
    torch.manual_seed(1)
    prior = build_prior("mog", DIM, HIDDEN, {"components": 3, "samples": 3000})
    with torch.no_grad():
        prior.log_scales.uniform_(-0.5, 0.5)
        prior.logits.uniform_(-1, 1)
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=prior.logits.detach()),
        torch.distributions.Independent(
            torch.distributions.Normal(prior.means.detach(), prior.log_scales.detach().exp()), 1
        ),
    )
    mu, logvar = _posterior(n=4)
    estimate = _monte_carlo_kl(mu, logvar, mixture.log_prob)
    torch.testing.assert_close(prior.kl(mu, logvar).detach(), estimate, rtol=0.05, atol=0.1)


@pytest.mark.parametrize("name", ["mog", "vamp"])
def test_sampled_priors_give_finite_kl_and_gradients(name):
    torch.manual_seed(0)
    head = IBHead(HIDDEN, IBConfig(prior=name, bottleneck_dim=DIM, prior_options={"components": 3, "samples": 2}))
    hidden = torch.randn(10, HIDDEN, requires_grad=True)
    kl, decoded = head(hidden)
    assert kl.shape == (10,) and torch.isfinite(kl).all()
    kl.sum().backward()
    for pname, param in head.prior.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, pname
    assert head.encoder.weight.grad.abs().sum() > 0
    assert hidden.grad.abs().sum() > 0


def test_vamp_prior_reuses_the_encoder_without_registering_it_twice():
    head = IBHead(HIDDEN, IBConfig(prior="vamp", bottleneck_dim=DIM))
    keys = set(head.state_dict())
    assert "prior.pseudo_inputs" in keys
    assert not any(k.startswith("prior.") and "encoder" in k for k in keys)
    assert head.prior.pseudo_inputs.shape == (4, HIDDEN)


@pytest.mark.parametrize(
    "name, options, fragment",
    [
        ("mog", {"components": 0}, "components for prior 'mog' must be an int >= 1, got 0"),
        ("mog", {"samples": 1.5}, "samples for prior 'mog' must be an int >= 1, got 1.5"),
        ("vamp", {"components": "many"}, "got 'many'"),
        ("mog", {"componets": 2}, "unknown option(s) componets for prior 'mog'; allowed: components, samples"),
        ("standard_normal", {"components": 2}, "allowed: none"),
        ("learnable_gaussian", {"x": 1}, "unknown option(s) x"),
    ],
)
def test_bad_prior_options_are_one_line_config_errors(name, options, fragment):
    with pytest.raises(ConfigError) as info:
        build_prior(name, DIM, HIDDEN, options)
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_unknown_prior_lists_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        build_prior("laplace", DIM, HIDDEN)
    assert str(info.value) == (
        "ib.prior 'laplace' is unknown; valid priors: standard_normal, learnable_gaussian, mog, vamp"
    )


def test_vamp_kl_matches_monte_carlo_against_the_uniform_mixture_of_encoded_pseudo_inputs():
    torch.manual_seed(2)
    head = IBHead(HIDDEN, IBConfig(prior="vamp", bottleneck_dim=DIM, prior_options={"components": 3, "samples": 20000}))
    prior = head.prior
    # The components q(z | u_k), written out from the encoder's weights (not through IBHead.encode): raw input,
    # mu and log sigma^2 the two halves of one linear map, log sigma^2 clamped like every posterior.
    with torch.no_grad():
        out = torch.nn.functional.linear(prior.pseudo_inputs, head.encoder.weight, head.encoder.bias)
        means, logvars = out[:, :DIM], out[:, DIM:].clamp(head.logvar_min, head.logvar_max)
    assert means.std(0).mean() > 0.1  # distinct components, so the mixture is no single Gaussian
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=torch.full((3,), 1.0 / 3)),
        torch.distributions.Independent(torch.distributions.Normal(means, (0.5 * logvars).exp()), 1),
    )
    mu, logvar = _posterior(n=4)
    estimate = _monte_carlo_kl(mu, logvar, mixture.log_prob)
    exact = prior.kl(mu, logvar).detach()
    assert exact.shape == (4,)
    # A sign error or the weights at +log K (KL off by 2 log 3 = 2.2 nats) lie far outside this tolerance.
    torch.testing.assert_close(exact, estimate, rtol=0.05, atol=0.1)
