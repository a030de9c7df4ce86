"""coursepkg.diffusion.guidance and the exact guidance quantities of coursepkg.diffusion.exact (chapter 10):
the guided score against its closed form, classifier-free guidance's special cases and conventions, label
dropout's rate, guided samples at gamma = 1 against the exact conditional, and the errors bad input gets."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from coursepkg import diffusion as D
from coursepkg import gmm as G
from coursepkg.diffusion import exact as E
from coursepkg.diffusion import guidance as GD
from coursepkg.nn import NULL_CLASS, ClassEmbedding, TimeMLP, UNet
from coursepkg.train import fit

from .helpers import seeded

F64 = torch.float64


@pytest.fixture
def mixture():
    """Four 2-D components in two classes, unequal weights and widths: class 0 is components 0 and 2."""
    ang = torch.arange(4, dtype=F64) * (math.pi / 2)
    means = 2 * torch.stack([ang.cos(), ang.sin()], 1)
    covs = torch.stack([v * torch.eye(2, dtype=F64) for v in (0.05, 0.2, 0.1, 0.3)])
    return G.GMM(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64), means, covs), torch.tensor([0, 1, 0, 1])


@pytest.fixture
def line():
    """A 1-D mixture of three components, classes (0, 1, 0): class 0 is bimodal."""
    data = G.GMM(torch.tensor([0.3, 0.3, 0.4], dtype=F64), torch.tensor([[-2.0], [0.0], [2.0]], dtype=F64),
                 torch.tensor([0.1, 0.2, 0.15], dtype=F64).reshape(3, 1, 1))
    return data, torch.tensor([0, 1, 0])


S100 = D.Schedule.named("linear", 100)


# --------------------------------------------------------------------------------------------------
# exact quantities
# --------------------------------------------------------------------------------------------------
def test_class_posterior_is_bayes_rule(mixture):
    data, labels = mixture
    x = torch.randn(30, 2, dtype=F64, generator=seeded(1))
    for t in (0, 1, 40, 100):
        logp = E.class_log_posterior(data, labels, x, t, S100)
        resp = G.e_step(x, data if t == 0 else E.marginal(data, t, S100))
        assert torch.allclose(logp.exp(), torch.stack([resp[:, [0, 2]].sum(1), resp[:, [1, 3]].sum(1)], 1))
    # at large t the class carries almost no information: p(y | x_T) is nearly the prior p(y)
    prior = torch.tensor([0.4, 0.6], dtype=F64)
    s1000 = D.Schedule.named("linear", 1000)
    assert torch.allclose(E.class_log_posterior(data, labels, x, 1000, s1000).exp(), prior.expand(30, 2), atol=0.01)


def test_bayes_rule_score_autograd_against_closed_form(mixture):
    data, labels = mixture
    x = torch.randn(25, 2, dtype=F64, generator=seeded(2)).requires_grad_(True)
    for t, y in ((1, 0), (30, 1), (100, 0)):
        (grad,) = torch.autograd.grad(E.class_log_posterior(data, labels, x, t, S100)[:, y].sum(), x)
        closed = E.class_score(data, labels, x.detach(), t, S100, y)
        assert torch.allclose(grad, closed, atol=1e-10)
        # Bayes' rule for the score: the conditional's score is the marginal's plus the classifier's
        cond = E.score(E.class_conditional(data, labels, y), x.detach(), t, S100)
        assert torch.allclose(cond, E.score(data, x.detach(), t, S100) + grad, atol=1e-10)


def test_guided_eps_with_gamma_one_is_the_conditional_denoiser(mixture):
    data, labels = mixture
    clf = E.ExactClassifier(data, labels, S100)
    x = torch.randn(40, 2, dtype=F64, generator=seeded(3))
    t = torch.randint(1, 101, (40,), generator=seeded(4))
    for y in (0, 1):
        guided = GD.classifier_guidance(E.OptimalDenoiser(data, S100), clf, y, 1.0, S100)(x, t)
        exact = E.OptimalDenoiser(E.class_conditional(data, labels, y), S100)(x, t)
        assert torch.allclose(guided, exact, atol=1e-10)
    # gamma = 0 is the model unchanged; gamma = 2 adds the classifier's term twice
    model = E.OptimalDenoiser(data, S100)
    assert torch.equal(GD.classifier_guidance(model, clf, 1, 0.0, S100)(x, t), model(x, t))
    g1 = GD.classifier_guidance(model, clf, 1, 1.0, S100)(x, t)
    g2 = GD.classifier_guidance(model, clf, 1, 2.0, S100)(x, t)
    assert torch.allclose(g2 - model(x, t), 2 * (g1 - model(x, t)), atol=1e-10)


def test_guided_eps_carries_the_sqrt_one_minus_alpha_bar_factor():
    s = D.Schedule.named("cosine", 50)
    eps, grad = torch.randn(6, 3, dtype=F64), torch.randn(6, 3, dtype=F64)
    t = torch.tensor([1, 5, 10, 25, 40, 50])
    out = GD.guided_eps(eps, grad, t, 1.5, s)
    factor = (1 - s.alpha_bar[t]).sqrt()[:, None]
    assert torch.allclose(out, eps - 1.5 * factor * grad)
    # it is eps_from_score of the guided score
    score = D.score_from_eps(torch.zeros_like(eps), t, eps, s) + 1.5 * grad
    assert torch.allclose(out, D.eps_from_score(torch.zeros_like(eps), t, score, s))


def test_tilted_density(mixture):
    data, labels = mixture
    x = torch.randn(20, 2, dtype=F64, generator=seeded(5))
    logp = G.log_likelihood(x, data)
    assert torch.allclose(E.tilted_log_density(data, labels, 1, 0.0, x), logp)
    cond = G.log_likelihood(x, E.class_conditional(data, labels, 1))
    assert torch.allclose(E.tilted_log_density(data, labels, 1, 1.0, x), cond + math.log(0.6))


def test_exact_classifier_per_row_steps(mixture):
    data, labels = mixture
    clf = E.ExactClassifier(data, labels, S100)
    x = torch.randn(12, 2, dtype=F64, generator=seeded(6))
    t = torch.tensor([1, 50, 100] * 4)
    out = clf(x, t)
    for i in range(12):
        assert torch.allclose(out[i], E.class_log_posterior(data, labels, x[i:i + 1], int(t[i]), S100)[0])
    assert clf.num_classes == 2


def test_implicit_classifier_of_exact_denoisers_is_the_class_score(mixture):
    data, labels = mixture
    x = torch.randn(20, 2, dtype=F64, generator=seeded(7))
    for t in (2, 50):
        eps_c = E.OptimalDenoiser(E.class_conditional(data, labels, 0), S100)(x, t)
        eps_u = E.OptimalDenoiser(data, S100)(x, t)
        assert torch.allclose(GD.implicit_classifier_grad(eps_c, eps_u, t, S100),
                              E.class_score(data, labels, x, t, S100, 0), atol=1e-10)


# --------------------------------------------------------------------------------------------------
# classifier-free guidance
# --------------------------------------------------------------------------------------------------
class _TwoHeads(torch.nn.Module):
    """A 'conditional network' with known outputs: eps_c = sin(x) + y, eps_u = cos(x)."""

    num_classes = 3

    def forward(self, xt, t, y=None):
        y = torch.full((xt.shape[0],), NULL_CLASS) if y is None else y
        cond = torch.sin(xt) + y[:, None].to(xt.dtype)
        return torch.where((y == NULL_CLASS)[:, None], torch.cos(xt), cond)


def test_cfg_special_cases_and_the_two_conventions():
    net, x, t = _TwoHeads(), torch.randn(9, 2, dtype=F64), torch.randint(1, 101, (9,))
    y = torch.tensor([0, 1, 2] * 3)
    eps_c, eps_u = net(x, t, y), net(x, t, None)
    assert torch.equal(GD.classifier_free_guidance(net, y, 1.0)(x, t), eps_c)   # s = 1: conditional (H&S w = 0)
    assert torch.allclose(GD.classifier_free_guidance(net, y, 0.0)(x, t), eps_u)  # s = 0: unconditional
    for s in (0.5, 3.0, 7.5):
        w = s - 1                                                               # Ho and Salimans' weight
        assert torch.allclose(GD.classifier_free_guidance(net, y, s)(x, t), (1 + w) * eps_c - w * eps_u)
        assert torch.allclose(GD.cfg_combine(eps_c, eps_u, s), s * eps_c + (1 - s) * eps_u)


def test_cfg_sampling_reproduces_the_conditional_and_unconditional_samplers():
    torch.manual_seed(0)
    net = GD.ConditionalDDPM(TimeMLP(2, hidden=(16,), num_classes=3), S100)
    y = torch.tensor([0, 1, 2, 1])
    for sampler in (D.DDPMSampler(S100, steps=20), D.DDIMSampler(S100, steps=10)):
        def run(model):
            return D.sample(model, sampler, (4, 2), generator=seeded(8), progress=False).x
        assert torch.equal(run(GD.classifier_free_guidance(net, y, 1.0)), run(lambda x, t: net(x, t, y)))
        assert torch.allclose(run(GD.classifier_free_guidance(net, y, 0.0)), run(lambda x, t: net(x, t)), atol=1e-6)


# --------------------------------------------------------------------------------------------------
# label dropout, the conditional network, the classifier
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
def test_label_dropout_rate(p):
    y = torch.randint(0, 10, (40_000,), generator=seeded(9))
    before = y.clone()
    out = GD.drop_labels(y, p, generator=seeded(10))
    assert torch.equal(y, before)                                  # not modified
    dropped = out == GD.NULL
    assert torch.equal(out[~dropped], y[~dropped])                 # the rest kept
    n = y.numel()
    assert abs(dropped.float().mean().item() - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12
    # independent rows: the drops of the first and second halves are uncorrelated
    if 0 < p < 1:
        a, b = dropped[: n // 2].float(), dropped[n // 2:].float()
        assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1]) < 0.03


def test_conditional_loss_drops_labels_at_the_stated_rate():
    seen = []

    class Spy(torch.nn.Module):
        num_classes = 4

        def forward(self, xt, t, y):
            seen.append(y.clone())
            return torch.zeros_like(xt)

    x, y = torch.randn(20_000, 2), torch.randint(0, 4, (20_000,))
    GD.conditional_loss(Spy(), x, y, S100, p_uncond=0.2, generator=seeded(11))
    rate = (seen[0] == GD.NULL).float().mean().item()
    assert abs(rate - 0.2) < 5 * math.sqrt(0.2 * 0.8 / 20_000)
    GD.conditional_loss(Spy(), x, y, S100, p_uncond=0.0)
    assert torch.equal(seen[1], y)


def test_conditional_networks_use_the_label():
    torch.manual_seed(0)
    net = TimeMLP(2, hidden=(8, 8), num_classes=3)
    x = torch.randn(5, 2)
    outs = [net(x, 10, y) for y in (0, 1, 2, None)]
    assert all(not torch.allclose(a, b) for i, a in enumerate(outs) for b in outs[i + 1:])
    assert torch.equal(net(x, 10, None), net(x, 10, torch.full((5,), NULL_CLASS)))
    unet = UNet(1, 8, base=8, num_classes=10)
    img = torch.randn(3, 64)
    assert unet(img, 4, torch.tensor([0, 5, -1])).shape == (3, 64)
    assert not torch.allclose(unet(img, 4, 0), unet(img, 4, 1))
    emb = ClassEmbedding(4, 6)
    assert emb(torch.tensor([-1, 0, 3])).shape == (3, 6)


def test_conditional_model_and_noisy_classifier_train_with_fit(line):
    data, labels = line
    x = data.sample(4000, generator=seeded(12))
    xs, ys = x.x.float(), labels[x.z]
    torch.manual_seed(0)
    model = GD.ConditionalDDPM(TimeMLP(1, hidden=(32, 32), num_classes=2), S100, p_uncond=0.2)
    hist = fit(model, (xs, ys), steps=100, batch_size=128, lr=3e-3, progress=False)
    assert hist.mean(last=20) < hist["loss"][0]
    clf = GD.NoisyClassifier(TimeMLP(1, hidden=(32, 32), out_dim=2), S100, 2)
    hist = fit(clf, (xs, ys), steps=200, batch_size=128, lr=3e-3, progress=False)
    assert hist.mean(last=20) < hist["loss"][0]
    with torch.no_grad():                                           # clean-ish data is classified well
        acc = (clf(xs, 1).argmax(1) == ys).float().mean().item()
    exact = (E.class_log_posterior(data, labels, x.x, 0, S100).argmax(1) == ys).float().mean().item()
    assert acc > exact - 0.05


def test_classifier_guidance_differentiates_in_xt_not_in_the_parameters():
    torch.manual_seed(0)
    clf = GD.NoisyClassifier(TimeMLP(2, hidden=(16,), out_dim=3), S100, 3)
    guided = GD.classifier_guidance(lambda x, t: torch.zeros_like(x), clf, 2, 1.0, S100)
    x = torch.randn(7, 2, requires_grad=True)
    with torch.no_grad():                                           # as in the sampling loop
        out = guided(x, 30)
    assert all(p.grad is None for p in clf.parameters())
    xr = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.log_softmax(clf(xr, 30), 1)[:, 2].sum(), xr)
    assert torch.allclose(out, -(1 - S100.alpha_bar[30]).sqrt() * g, atol=1e-6)


COS = D.Schedule.named("cosine", 200)   # alpha_bar_T = 0: x_T is exactly N(0, 1), unlike linear with T = 100


def _sample_1d(model, n, seed):
    return D.sample(model, D.DDPMSampler(COS), (n, 1), generator=seeded(seed), dtype=F64, progress=False).x[:, 0]


def _cdf(mix: G.GMM):
    w, m, sd = mix.weights.numpy(), mix.means[:, 0].numpy(), mix.covariances[:, 0, 0].sqrt().numpy()
    return lambda v: sum(wk * stats.norm.cdf(v, mk, sk) for wk, mk, sk in zip(w, m, sd, strict=True))


def test_gamma_one_samples_the_exact_conditional_and_gamma_three_does_not(line):
    data, labels = line
    clf = E.ExactClassifier(data, labels, COS)
    target = _cdf(E.class_conditional(data, labels, 0))
    x1 = _sample_1d(GD.classifier_guidance(E.OptimalDenoiser(data, COS), clf, 0, 1.0, COS), 3000, 13)
    assert stats.kstest(x1.numpy(), target).pvalue > 1e-3
    x3 = _sample_1d(GD.classifier_guidance(E.OptimalDenoiser(data, COS), clf, 0, 3.0, COS), 3000, 13)
    assert stats.kstest(x3.numpy(), target).pvalue < 1e-6        # the test has power: gamma = 3 is sharper
    assert x3.abs().min() > x1.abs().min()                          # fewer samples near the other class at 0


# --------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------
def test_errors_name_what_is_wrong(mixture):
    data, labels = mixture
    net = TimeMLP(2, hidden=(8,), num_classes=2)
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="y must hold classes 0..1"):
        net(x, 3, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="takes no labels"):
        TimeMLP(2, hidden=(8,))(x, 3, 0)
    with pytest.raises(ValueError, match="non-negative"):
        GD.classifier_free_guidance(GD.ConditionalDDPM(net, S100), 0, -1.0)
    with pytest.raises(ValueError, match="non-negative"):
        GD.classifier_guidance(E.OptimalDenoiser(data, S100), E.ExactClassifier(data, labels, S100), 0, -0.5, S100)
    three = E.ExactClassifier(data, torch.tensor([0, 1, 2, 1]), S100)
    with pytest.raises(ValueError, match="3 classes but the model has 2"):
        GD.classifier_guidance(GD.ConditionalDDPM(net, S100), three, 0, 1.0, S100)
    with pytest.raises(ValueError, match="needs a conditional model"):
        GD.classifier_free_guidance(E.OptimalDenoiser(data, S100), 0, 2.0)
    with pytest.raises(ValueError, match="must be conditional"):
        GD.ConditionalDDPM(TimeMLP(2, hidden=(8,)), S100)
    with pytest.raises(ValueError, match="y must hold classes 0..2"):
        GD.classifier_guidance(E.OptimalDenoiser(data, S100), three, 3, 1.0, S100)(x.double(), 5)
    with pytest.raises(ValueError, match="y must be a class 0..1"):
        E.class_conditional(data, labels, 2)
    with pytest.raises(ValueError, match="every class"):
        E.ExactClassifier(data, torch.tensor([0, 2, 0, 2]), S100)
    with pytest.raises(ValueError, match="probability"):
        GD.drop_labels(torch.tensor([1, 2]), 1.5)
    with pytest.raises(ValueError, match=r"one per row; got shape \[3\]"):
        GD.classifier_free_guidance(GD.ConditionalDDPM(net, S100), torch.tensor([0, 1, 0]), 2.0)(x, 5)
    with pytest.raises(ValueError, match="logits"):
        GD.classifier_guidance(lambda a, t: a, lambda a, t: a.sum(1), 0, 1.0, S100)(x, 5)
