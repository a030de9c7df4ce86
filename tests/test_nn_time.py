"""The time-conditioned networks of chapter 09 (coursepkg.nn): the sinusoidal embedding against its formula,
TimeMLP and UNet (shapes for an int and a tensor t, dependence on t, errors naming the argument, 8x8 and 28x28
images), and short training runs through coursepkg.train.fit and the simplified loss that must lower it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from coursepkg import diffusion as D
from coursepkg.data import digits, toy_2d
from coursepkg.nn import SinusoidalEmbedding, TimeMLP, UNet
from coursepkg.train import fit

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: see conftest.py


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def fixed_loss(net, x0, schedule, seed=1):
    """The simplified loss at fixed steps and noise, so that two evaluations compare the network only."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(1, schedule.T + 1, (x0.shape[0],), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        return float(D.simplified_loss(net, x0, schedule, t=t, eps=eps))


def told(net, x0, schedule, t, t_told, seed=2):
    """The noise error at step ``t`` when the network is told the step ``t_told``."""
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return float(((net(D.q_sample(x0, t, eps, schedule), t_told) - eps) ** 2).mean())


# --------------------------------------------------------------------------------------------------
# the sinusoidal embedding
# --------------------------------------------------------------------------------------------------
def test_embedding_matches_its_formula():
    dim, period = 6, 10_000
    emb = SinusoidalEmbedding(dim, max_period=period)
    t = torch.tensor([0, 1, 7, 999])
    out = emb(t)
    assert out.shape == (4, dim) and out.dtype == torch.get_default_dtype()
    for row, step in zip(out, t.tolist(), strict=True):
        want = [math.sin(step * period ** (-i / 3)) for i in range(3)] + \
               [math.cos(step * period ** (-i / 3)) for i in range(3)]
        torch.testing.assert_close(row, torch.tensor(want), atol=1e-5, rtol=0)


def test_embedding_of_one_step_and_of_continuous_time():
    emb = SinusoidalEmbedding(8)
    assert emb(5).shape == (1, 8)
    torch.testing.assert_close(emb(5), emb(torch.tensor([5])))
    torch.testing.assert_close(emb(torch.tensor(5)), emb(torch.tensor([5])))
    torch.testing.assert_close(emb(0)[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    half = emb(torch.tensor([2.5]))                                   # a float step lies between its neighbours
    assert not torch.allclose(half, emb(2)) and not torch.allclose(half, emb(3))


def test_embedding_inner_products_depend_on_the_distance_only():
    """sum_i sin(w t) sin(w s) + cos(w t) cos(w s) = sum_i cos(w (t - s)): a property of the pairs of sin / cos."""
    emb = SinusoidalEmbedding(16)
    a, b = emb(torch.tensor([10, 500])), emb(torch.tensor([30, 520]))
    torch.testing.assert_close((a * b).sum(1), (a[:1] * b[:1]).sum(1).expand(2), atol=1e-4, rtol=0)
    torch.testing.assert_close((a * a).sum(1), torch.full((2,), 8.0))        # |e(t)|^2 = dim / 2
    assert (emb(torch.tensor([10])) * emb(torch.tensor([11]))).sum() > (a[:1] * b[:1]).sum()


def test_embedding_equals_diffusers():
    embeddings = pytest.importorskip("diffusers.models.embeddings")  # the dev extra
    t = torch.tensor([1, 2, 50, 999])
    torch.testing.assert_close(SinusoidalEmbedding(64)(t),
                               embeddings.get_timestep_embedding(t, 64, downscale_freq_shift=0), atol=1e-4, rtol=0)


@pytest.mark.parametrize(("kwargs", "error", "name"), [
    ({"dim": 7}, ValueError, "dim"), ({"dim": 0}, ValueError, "dim"), ({"dim": 4.0}, TypeError, "dim"),
    ({"dim": 8, "max_period": 0}, ValueError, "max_period"),
])
def test_embedding_rejects_bad_arguments(kwargs, error, name):
    with pytest.raises(error, match=name):
        SinusoidalEmbedding(**kwargs)


def test_embedding_rejects_bad_steps():
    emb = SinusoidalEmbedding(8)
    with pytest.raises(ValueError, match=r"t must .*\(N,\).*\[2, 3\]"):
        emb(torch.zeros(2, 3))
    with pytest.raises(TypeError, match="t must"):
        emb(True)
    with pytest.raises(TypeError, match="t must"):
        emb(torch.tensor([True, False]))
    with pytest.raises(TypeError, match="t must"):
        emb("5")


# --------------------------------------------------------------------------------------------------
# TimeMLP
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    return TimeMLP(2, hidden=(32, 32), t_dim=16)


def test_time_mlp_shapes_for_int_and_tensor_t(mlp):
    x = torch.randn(5, 2)
    out = mlp(x, 7)
    assert out.shape == x.shape
    torch.testing.assert_close(out, mlp(x, torch.full((5,), 7)))         # an int is broadcast to the batch
    torch.testing.assert_close(out, mlp(x, torch.tensor(7)))
    per_row = mlp(x, torch.arange(1, 6))
    torch.testing.assert_close(per_row[2], mlp(x[2:3], 3)[0])            # one step per row, rows independent
    assert mlp(x, torch.linspace(1.0, 5.0, 5)).shape == x.shape        # continuous time works


def test_time_mlp_output_depends_on_t(mlp):
    x = torch.randn(64, 2)
    assert (mlp(x, 1) - mlp(x, 500)).abs().mean() > 1e-3
    assert (mlp(x, 500) - mlp(x, 501)).abs().max() > 0


def test_time_mlp_is_deterministic_given_the_seed():
    torch.manual_seed(3)
    a = TimeMLP(2, hidden=(16,))
    torch.manual_seed(3)
    b = TimeMLP(2, hidden=(16,))
    x = torch.randn(4, 2)
    torch.testing.assert_close(a(x, 10), b(x, 10), rtol=0, atol=0)
    assert n_params(a) == (2 * 16 + 16) + (64 * 64 + 64) + (64 * 32 + 32) + (16 * 2 + 2)  # layer, time, film, out


def test_time_mlp_rejects_bad_shapes(mlp):
    with pytest.raises(ValueError, match=r"xt must have shape \(N, 2\), got \[5, 3\]"):
        mlp(torch.randn(5, 3), 1)
    with pytest.raises(ValueError, match="xt must have shape"):
        mlp(torch.randn(2), 1)
    with pytest.raises(ValueError, match=r"t must .*\(N,\) = \(5,\).*\[4\]"):
        mlp(torch.randn(5, 2), torch.arange(4))
    with pytest.raises(ValueError, match="t must"):
        mlp(torch.randn(5, 2), torch.ones(5, 1))
    with pytest.raises(TypeError, match="t must"):
        mlp(torch.randn(5, 2), None)


@pytest.mark.parametrize(("kwargs", "error", "name"), [
    ({"dim": 0}, ValueError, "dim"), ({"dim": 2, "hidden": ()}, ValueError, "hidden"),
    ({"dim": 2, "hidden": (32, 0)}, ValueError, r"hidden\[1\]"), ({"dim": 2, "t_dim": 7}, ValueError, "dim"),
    ({"dim": 2, "activation": nn.SiLU()}, TypeError, "activation"),
])
def test_time_mlp_rejects_bad_arguments(kwargs, error, name):
    with pytest.raises(error, match=name):
        TimeMLP(**kwargs)


# --------------------------------------------------------------------------------------------------
# UNet
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [8, 28])
def test_unet_shapes_at_8_and_28(size):
    torch.manual_seed(0)
    net = UNet(channels=1, size=size)
    assert 100_000 <= n_params(net) <= 1_000_000
    x = torch.randn(3, 1, size, size)
    out = net(x, 10)
    assert out.shape == x.shape
    torch.testing.assert_close(out, net(x, torch.full((3,), 10)), rtol=1e-5, atol=1e-6)
    flat = net(x.flatten(1), torch.tensor([10, 10, 10]))                 # the flat layout of coursepkg.data
    assert flat.shape == (3, size * size)
    torch.testing.assert_close(flat, out.flatten(1), rtol=1e-5, atol=1e-6)
    assert (net(x, 1) - net(x, 900)).abs().mean() > 1e-4                # the step changes the prediction


def test_unet_other_widths_channels_and_depths():
    torch.manual_seed(0)
    net = UNet(channels=3, size=16, base=8, mults=(1, 2, 2), t_dim=8)   # halved three times, 16 -> 2
    x = torch.randn(2, 3, 16, 16)
    assert net(x, torch.tensor([1, 2])).shape == x.shape
    assert n_params(UNet(size=8, base=16)) < n_params(UNet(size=8, base=32))


def test_unet_rows_are_independent():
    """GroupNorm normalises each example on its own: one row's output does not depend on the others."""
    torch.manual_seed(0)
    net = UNet(size=8, base=16)
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(net(x, torch.arange(1, 5))[1:2], net(x[1:2], 2), rtol=1e-4, atol=1e-5)


def test_unet_rejects_bad_shapes_and_sizes():
    net = UNet(channels=1, size=8, base=8)
    with pytest.raises(ValueError, match=r"xt must have shape \(N, 1, 8, 8\) or \(N, 64\).*\[2, 1, 28, 28\]"):
        net(torch.randn(2, 1, 28, 28), 1)
    with pytest.raises(ValueError, match="xt must have shape"):
        net(torch.randn(2, 3, 8, 8), 1)
    with pytest.raises(ValueError, match="xt must have shape"):
        net(torch.randn(2, 63), 1)
    with pytest.raises(ValueError, match=r"t must .*\(2,\)"):
        net(torch.randn(2, 1, 8, 8), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"size must be divisible by 2 \*\* len\(mults\) = 4.*size=10"):
        UNet(size=10)
    with pytest.raises(ValueError, match="size must be divisible by .* = 8"):
        UNet(size=28, mults=(1, 2, 2))
    for kwargs, error, name in [({"channels": 0}, ValueError, "channels"), ({"base": 2.5}, TypeError, "base"),
                                ({"mults": ()}, ValueError, "mults"), ({"t_dim": 5}, ValueError, "dim"),
                                ({"activation": "silu"}, TypeError, "activation")]:
        with pytest.raises(error, match=name):
            UNet(size=8, **kwargs)


# --------------------------------------------------------------------------------------------------
# short training runs: fit + the simplified loss lower the loss, and the network uses t
# --------------------------------------------------------------------------------------------------
def test_time_mlp_learns_the_swiss_roll():
    schedule = D.Schedule.named("linear", 1000)
    data, held_out = toy_2d("swiss_roll", 4096, seed=0), toy_2d("swiss_roll", 4096, seed=1)
    torch.manual_seed(0)
    net = TimeMLP(2, hidden=(128, 128, 128))
    before = fixed_loss(net, held_out, schedule)
    history = fit(net, data, loss=lambda x0: D.simplified_loss(net, x0, schedule), steps=200, batch_size=256,
                  lr=2e-3, seed=0, progress=False)
    after = fixed_loss(net, held_out, schedule)
    assert len(history.values["loss"]) == 200
    assert after < 0.45 < 0.9 < before                                  # ~1 untrained, ~0.3 at the optimum
    # it uses t: told t = 900 at t = 100, it takes the data for noise
    assert told(net, held_out, schedule, 100, 900) > 2 * told(net, held_out, schedule, 100, 100)


@pytest.mark.slow
def test_unet_learns_the_digits():
    schedule = D.Schedule.named("linear", 1000)
    x = digits()[0] * 2 - 1                                             # (1797, 64) in [-1, 1], flat
    torch.manual_seed(0)
    net = UNet(channels=1, size=8, base=16)
    before = fixed_loss(net, x[:512], schedule)
    fit(net, x, loss=lambda x0: D.simplified_loss(net, x0, schedule), steps=150, batch_size=64, lr=2e-3,
        seed=0, progress=False)
    after = fixed_loss(net, x[:512], schedule)
    assert after < 0.25 < 0.8 < before
    # Shuffled steps would cost it little: an image of 64 pixels shows its own noise level. Told t = 900 at
    # t = 100, it still takes the data for noise.
    assert told(net, x[:512], schedule, 100, 900) > 2 * told(net, x[:512], schedule, 100, 100)
