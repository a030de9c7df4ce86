"""coursepkg.nn (the MLP, the conv encoder / decoder, the autoregressive decoder) and coursepkg.train.fit (the
one training loop): shapes, errors, determinism, checkpoint and resume, divergence detection, the autoregressive
property."""

from __future__ import annotations

import functools
import random

import numpy as np
import pytest
import torch
from torch import nn

from coursepkg.data import digits, toy_2d
from coursepkg.nn import MLP, AutoregressiveDecoder, ConvDecoder, ConvEncoder, MaskedLinear
from coursepkg.train import History, TrainingDiverged, fit, load_checkpoint
from coursepkg.vae import VAE

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py


@pytest.fixture(scope="module")
def x300():
    return digits()[0][:300]


def regression(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    w = torch.tensor([[1.5], [-2.0], [0.5]])
    return x, x @ w + 0.3 + 0.01 * torch.randn(n, 1, generator=g), w


def same_params(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------------------------------
# nn
# --------------------------------------------------------------------------------------------------
def test_mlp_layers_and_shapes():
    net = MLP(5, (7, 9), 3)
    assert net(torch.randn(4, 5)).shape == (4, 3)
    assert net(torch.randn(2, 4, 5)).shape == (2, 4, 3)  # leading sample dimensions pass through
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(5, 7), (7, 9), (9, 3)]
    assert [type(m) for m in net.net] == [nn.Linear, nn.SiLU, nn.Linear, nn.SiLU, nn.Linear]  # no output activation
    assert isinstance(MLP(5, (7,), 3, nn.ReLU).net[1], nn.ReLU)
    assert len(MLP(5, (), 3).net) == 1 and MLP(5, 7, 3).hidden == (7,)


@pytest.mark.parametrize("kwargs, error, words", [
    ({"in_dim": 0}, ValueError, "in_dim"),
    ({"out_dim": 2.0}, TypeError, "out_dim must be a positive int"),
    ({"hidden": (7, 0)}, ValueError, "hidden[1]"),
    ({"hidden": "77"}, TypeError, "hidden"),
    ({"activation": nn.ReLU()}, TypeError, "activation"),
])
def test_mlp_rejects_bad_arguments(kwargs, error, words):
    args = {"in_dim": 5, "hidden": (7,), "out_dim": 3, **kwargs}
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        MLP(**args)


def test_mlp_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(\.\.\., 5\)"):
        MLP(5, (7,), 3)(torch.randn(4, 6))


@pytest.mark.parametrize("size, inner", [(8, 2), (16, 4), (28, 7)])
def test_conv_encoder_decoder_shapes(size, inner):
    enc = ConvEncoder((1, size, size), 10)
    dec = ConvDecoder(10, (1, size, size))
    img = torch.rand(3, 1, size, size)
    assert enc.conv(img).shape == (3, 64, inner, inner)          # two stride-2 convs: 28 -> 14 -> 7
    h = enc(img)
    assert h.shape == (3, 10)
    assert torch.equal(enc(img.flatten(1)), h)                    # flat input: the same images
    out = dec(h)
    assert out.shape == (3, 1, size, size)
    assert ConvDecoder(10, (1, size, size), flat=True)(h).shape == (3, size * size)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())


def test_conv_nets_with_odd_sizes_colour_and_three_layers():
    for shape in [(3, 7, 9), (1, 5, 5), (2, 12, 10)]:
        enc = ConvEncoder(shape, 6, channels=(8, 16, 32))
        dec = ConvDecoder(6, shape, channels=(32, 16, 8))
        x = torch.rand(2, *shape)
        assert dec(enc(x)).shape == (2, *shape)


def test_conv_nets_reject_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="in_shape"):
        ConvEncoder((28, 28), 10)
    with pytest.raises(ValueError, match="out_shape"):
        ConvDecoder(10, (1, 0, 28))
    with pytest.raises(ValueError, match="channels"):
        ConvEncoder((1, 8, 8), 10, channels=())
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\) or \(N, 784\)"):
        ConvEncoder((1, 28, 28), 10)(torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"z must have shape \(N, 10\)"):
        ConvDecoder(10, (1, 8, 8))(torch.rand(2, 11))


# --------------------------------------------------------------------------------------------------
# fit: the loop
# --------------------------------------------------------------------------------------------------
def test_fit_trains_and_returns_a_per_step_history():
    x, y, w = regression()
    model = nn.Linear(3, 1)
    h = fit(model, (x, y), lambda xb, yb: ((model(xb) - yb) ** 2).mean(), steps=300, batch_size=32, lr=0.05,
            progress=False)
    assert isinstance(h, History) and len(h) == 300
    assert h.step == list(range(300)) and h.keys() == ["step", "loss"]
    assert h.mean(last=20) < 0.01 * h.mean(last=None) and h.mean(last=20) < 1e-3
    assert torch.allclose(model.weight.detach(), w.T, atol=0.02)
    d = h.as_dict()
    assert list(d) == ["step", "loss"] and d["loss"] == h["loss"] and History.from_dict(d) == h
    with pytest.raises(KeyError, match="recon"):
        h["recon"]


def test_fit_logs_the_scalar_entries_of_a_dict_loss_with_loss_first():
    x, y, _ = regression()
    model = nn.Linear(3, 1)

    def loss(xb, yb):
        mse = ((model(xb) - yb) ** 2).mean()
        return {"mse": mse, "const": 2.5, "loss": 2 * mse}

    h = fit(model, (x, y), loss, steps=5, progress=False)
    assert h.keys() == ["step", "loss", "mse", "const"]
    assert h["const"] == [2.5] * 5 and h["loss"] == pytest.approx([2 * v for v in h["mse"]], rel=1e-6)


def test_epochs_are_permutations_cut_into_full_batches():
    rows = torch.arange(100, dtype=torch.float32)[:, None]
    seen = []
    model = nn.Linear(1, 1)

    def loss(xb):
        seen.append(xb[:, 0].long().tolist())
        return model(xb).mean() * 0

    h = fit(model, rows, loss, epochs=2, batch_size=32, progress=False)
    assert len(h) == 6 and all(len(b) == 32 for b in seen)          # 100 // 32 = 3 batches an epoch
    for epoch in (seen[:3], seen[3:]):
        flat = [i for b in epoch for i in b]
        assert len(set(flat)) == 96                                  # without replacement within an epoch
    assert seen[:3] != seen[3:]                                      # a new permutation each epoch
    seen.clear()
    assert len(fit(model, rows, loss, epochs=3, batch_size=None, progress=False)) == 3
    assert all(b == list(range(100)) for b in seen)                  # full batch, in order


def test_fit_draws_from_a_sampler_and_passes_the_step():
    model = nn.Linear(2, 1)
    steps_seen, batches = [], []

    def loss(xb, step):
        steps_seen.append(step)
        batches.append(xb)
        return (model(xb) ** 2).mean()

    fit(model, functools.partial(toy_2d, "two_moons"), loss, steps=4, batch_size=64, progress=False)
    assert steps_seen == [0, 1, 2, 3] and all(b.shape == (64, 2) for b in batches)
    first = [b.clone() for b in batches]
    batches.clear()
    fit(model, functools.partial(toy_2d, "two_moons"), loss, steps=4, batch_size=64, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(first, batches, strict=True))   # batches come from the seed


def test_same_seed_same_run_other_seed_other_run(x300):
    def run(seed):
        torch.manual_seed(0)
        model = VAE.mlp(64, (32,), 4)
        return model, fit(model, x300, steps=15, batch_size=64, seed=seed, progress=False)

    (m1, h1), (m2, h2), (m3, h3) = run(0), run(0), run(1)
    assert h1 == h2 and same_params(m1, m2)
    assert h1 != h3 and not same_params(m1, m3)


def test_fit_restores_the_mode_and_runs_on_the_configured_device():
    x, y, _ = regression(50)
    model = nn.Linear(3, 1).eval()
    modes = []

    def loss(xb, yb):
        modes.append(model.training)
        return ((model(xb) - yb) ** 2).mean()

    fit(model, (x, y), loss, steps=3, progress=False)
    assert modes == [True] * 3 and not model.training
    assert model.weight.device.type == "cpu"  # conftest sets COURSEPKG_DEVICE=cpu


def test_optimizer_class_factory_or_instance_and_schedule():
    x, y, _ = regression(64)

    def run(**kw):
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        if kw.get("optimizer") == "instance":
            kw["optimizer"] = torch.optim.SGD(model.parameters(), lr=0.01)
        return fit(model, (x, y), lambda a, b: ((model(a) - b) ** 2).mean(), steps=5, progress=False, **kw)

    sgd = run(optimizer=torch.optim.SGD, lr=0.01)
    assert run(optimizer="instance") == sgd
    assert run(optimizer=functools.partial(torch.optim.SGD, momentum=0.9), lr=0.01) != sgd
    made = []

    def make(params, lr):
        made.append(torch.optim.SGD(params, lr=lr))
        return made[-1]

    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    fit(model, (x, y), lambda a, b: ((model(a) - b) ** 2).mean(), steps=4, optimizer=make, lr=0.01, progress=False,
        schedule=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1))
    assert made[0].param_groups[0]["lr"] == pytest.approx(0.01 * 0.1**2)   # stepped once a step


def test_callback_can_stop_training(tmp_path):
    x, y, _ = regression(64)
    model = nn.Linear(3, 1)
    calls = []

    def callback(step, history):
        calls.append((step, len(history)))
        return step >= 10

    path = tmp_path / "ck.pt"
    h = fit(model, (x, y), lambda a, b: ((model(a) - b) ** 2).mean(), steps=100, log_every=5, callback=callback,
            checkpoint=path, progress=False)
    assert calls == [(5, 5), (10, 10)] and len(h) == 10
    assert load_checkpoint(path)["step"] == 10


def test_progress_bar_is_shown_or_not(capsys):
    x, y, _ = regression(64)
    model = nn.Linear(3, 1)
    loss = lambda a, b: ((model(a) - b) ** 2).mean()  # noqa: E731
    fit(model, (x, y), loss, steps=20, log_every=5, progress=True)
    err = capsys.readouterr().err
    assert "fit" in err and "20/20" in err and "loss=" in err
    fit(model, (x, y), loss, steps=20, progress=False)
    assert capsys.readouterr().err == ""


def test_history_plot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = History(list(range(300)), {"loss": [1.0 / (i + 1) for i in range(300)], "kl": [0.5] * 300})
    ax = h.plot(smooth=10)
    assert [line.get_label() for line in ax.get_lines()] == ["loss", "kl"]
    assert len(ax.get_lines()[0].get_xdata()) == 291 and ax.get_xlabel() == "step"
    plt.close("all")


# --------------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------------
def scramble_global_rngs():
    """What a fresh process would have: other random states than the ones at the checkpoint."""
    torch.manual_seed(12345)
    np.random.seed(12345)
    random.seed(12345)


@pytest.mark.parametrize("n_first", [7, 10])  # mid-epoch (4 batches an epoch) or not
def test_resume_from_a_checkpoint_equals_uninterrupted_training(tmp_path, x300, n_first):
    def new_model(init_seed):
        torch.manual_seed(init_seed)
        return VAE.mlp(64, (32,), 4)   # its loss draws eps from torch's global generator

    kw = dict(batch_size=64, lr=3e-3, seed=3, progress=False, clip_grad_norm=10.0,
              schedule=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5))
    straight = new_model(0)
    h_straight = fit(straight, x300, steps=2 * n_first, **kw)

    path = tmp_path / "vae.pt"
    first = new_model(0)
    h_first = fit(first, x300, steps=n_first, checkpoint=path, **kw)
    assert h_first.as_dict() == {k: v[:n_first] for k, v in h_straight.as_dict().items()}
    assert load_checkpoint(path)["step"] == n_first

    scramble_global_rngs()
    resumed = new_model(99)            # a fresh model (other weights) and, inside fit, a fresh optimizer
    h_resumed = fit(resumed, x300, steps=2 * n_first, checkpoint=path, **kw)
    assert h_resumed == h_straight
    assert same_params(resumed, straight)                                  # bit for bit
    assert load_checkpoint(path)["step"] == 2 * n_first


def test_a_finished_checkpoint_is_loaded_without_training(tmp_path, x300):
    path = tmp_path / "vae.pt"
    torch.manual_seed(0)
    done = VAE.mlp(64, (32,), 4)
    h = fit(done, x300, steps=6, batch_size=64, checkpoint=path, progress=False)
    torch.manual_seed(1)
    again = VAE.mlp(64, (32,), 4)

    def never(xb):
        raise AssertionError("trained again")

    assert fit(again, x300, never, steps=6, batch_size=64, checkpoint=path, progress=False) == h
    assert same_params(again, done)
    # resume=False starts over, and overwrites the file
    h2 = fit(again, x300, steps=3, batch_size=64, checkpoint=path, resume=False, progress=False)
    assert len(h2) == 3 and load_checkpoint(path)["step"] == 3


def test_a_checkpoint_of_another_run_is_refused(tmp_path, x300):
    path = tmp_path / "vae.pt"
    torch.manual_seed(0)
    fit(VAE.mlp(64, (32,), 4), x300, steps=3, batch_size=64, checkpoint=path, progress=False)
    with pytest.raises(ValueError, match="seed=0"):
        fit(VAE.mlp(64, (32,), 4), x300, steps=6, batch_size=64, seed=1, checkpoint=path, progress=False)
    with pytest.raises(ValueError, match="batch_size=64"):
        fit(VAE.mlp(64, (32,), 4), x300, steps=6, batch_size=32, checkpoint=path, progress=False)
    with pytest.raises(ValueError, match="300 rows"):
        fit(VAE.mlp(64, (32,), 4), x300[:200], steps=6, batch_size=64, checkpoint=path, progress=False)
    with pytest.raises(ValueError, match="does not fit this model"):
        fit(VAE.mlp(64, (16,), 4), x300, steps=6, batch_size=64, checkpoint=path, progress=False)
    bad = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match="not a checkpoint"):
        load_checkpoint(bad)


# --------------------------------------------------------------------------------------------------
# divergence
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_loss_stops_training_at_its_step(x300, bad):
    def new_model():
        torch.manual_seed(0)
        return VAE.mlp(64, (32,), 4)

    clean = new_model()
    h = fit(clean, x300, steps=5, batch_size=64, progress=False)
    model = new_model()

    def loss(xb, step):
        out = model.loss(xb)
        if step == 5:
            out["loss"] = out["loss"] * bad
        return out

    with pytest.raises(TrainingDiverged, match="at step 5") as info:
        fit(model, x300, loss, steps=20, batch_size=64, progress=False)
    assert isinstance(info.value, FloatingPointError)
    assert f"{h['loss'][-1]:.6g} at step 4" in str(info.value)          # the last finite loss
    assert same_params(model, clean)                                     # the bad step did not update


def test_a_loss_that_is_never_finite():
    model = nn.Linear(1, 1)
    with pytest.raises(TrainingDiverged, match="at step 0 .*no step had a finite loss"):
        fit(model, torch.ones(4, 1), lambda xb: model(xb).mean() * float("nan"), steps=3, progress=False)


# --------------------------------------------------------------------------------------------------
# bad arguments
# --------------------------------------------------------------------------------------------------
def test_fit_rejects_bad_arguments():
    x, y, _ = regression(64)
    model = nn.Linear(3, 1)
    loss = lambda a, b: ((model(a) - b) ** 2).mean()  # noqa: E731
    run = functools.partial(fit, model, (x, y), loss, progress=False)
    for kwargs, error, words in [
        ({}, ValueError, "exactly one of steps and epochs"),
        ({"steps": 5, "epochs": 1}, ValueError, "exactly one of steps and epochs"),
        ({"steps": {"quick": 5, "full": 50}}, TypeError, "budget"),
        ({"steps": 0}, ValueError, "steps must be a positive int"),
        ({"epochs": 1.5}, TypeError, "epochs must be a positive int"),
        ({"steps": 5, "batch_size": 0}, ValueError, "batch_size"),
        ({"steps": 5, "lr": -1.0}, ValueError, "lr"),
        ({"steps": 5, "seed": -1}, ValueError, "seed"),
        ({"steps": 5, "optimizer": torch.optim.SGD(model.parameters(), lr=0.1), "lr": 0.1}, ValueError, "lr"),
        ({"steps": 5, "optimizer": torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)}, ValueError,
         "any parameter of the model"),
        ({"steps": 5, "log_every": 0}, ValueError, "log_every"),
        ({"steps": 5, "clip_grad_norm": 0.0}, ValueError, "clip_grad_norm"),
    ]:
        with pytest.raises(error, match=words):
            run(**kwargs)
    with pytest.raises(TypeError, match="data must be"):
        fit(model, "data", loss, steps=2, progress=False)
    with pytest.raises(ValueError, match="share their first dimension"):
        fit(model, (x, y[:10]), loss, steps=2, progress=False)
    with pytest.raises(ValueError, match="needs a data set"):
        fit(model, functools.partial(toy_2d, "gmm"), lambda a: model(a).mean(), epochs=1, progress=False)
    with pytest.raises(TypeError, match="has no loss method"):
        fit(model, (x, y), steps=2, progress=False)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        fit(loss, (x, y), steps=2, progress=False)


def test_fit_rejects_bad_losses():
    x, y, _ = regression(64)
    model = nn.Linear(3, 1)
    with pytest.raises(ValueError, match=r"forget a \.mean\(\)"):
        fit(model, (x, y), lambda a, b: (model(a) - b) ** 2, steps=2, progress=False)
    with pytest.raises(TypeError, match="'loss' entry"):
        fit(model, (x, y), lambda a, b: {"mse": ((model(a) - b) ** 2).mean()}, steps=2, progress=False)
    with pytest.raises(ValueError, match="requires_grad"):
        fit(model, (x, y), lambda a, b: ((a - b) ** 2).mean(), steps=2, progress=False)

    def changing(a, b, step):
        mse = ((model(a) - b) ** 2).mean()
        return {"loss": mse} if step < 2 else {"loss": mse, "extra": mse}

    with pytest.raises(ValueError, match="changed its entries at step 2"):
        fit(model, (x, y), changing, steps=4, progress=False)


# --------------------------------------------------------------------------------------------------
# the autoregressive decoder
# --------------------------------------------------------------------------------------------------
def test_masked_linear_applies_its_mask_and_masked_weights_get_no_gradient():
    mask = torch.tensor([[1, 0, 1], [0, 1, 0]])
    layer = MaskedLinear(3, 2, mask)
    x = torch.randn(5, 3)
    assert torch.allclose(layer(x), x @ (layer.weight * mask).T + layer.bias)
    layer(x).sum().backward()
    assert torch.all(layer.weight.grad[mask == 0] == 0) and torch.all(layer.weight.grad[mask == 1] != 0)
    assert "mask" in layer.state_dict() and layer.double().mask.dtype == torch.float64
    with pytest.raises(ValueError, match=r"mask must have shape \(out_features, in_features\) = \(2, 3\)"):
        MaskedLinear(3, 2, mask.T)
    with pytest.raises(ValueError, match="zeros and ones"):
        MaskedLinear(3, 2, 2 * mask)


@pytest.mark.parametrize("hidden", [(), (24,), (32, 16)])
def test_the_logit_of_pixel_i_ignores_pixels_i_and_after(hidden):
    D, Dz = 7, 3
    torch.manual_seed(0)
    dec = AutoregressiveDecoder(Dz, D, hidden).double()
    z, x = torch.randn(4, Dz, dtype=torch.float64), torch.bernoulli(torch.full((4, D), 0.5, dtype=torch.float64))
    logits = dec(z, x)
    assert logits.shape == (4, D)
    # d logit_i / d x_j vanishes exactly for j >= i, and not for every j < i
    jac = torch.autograd.functional.jacobian(lambda v: dec(z[:1], v), x[:1])[0, :, 0]            # (D, D)
    assert torch.all(jac.triu() == 0)
    assert torch.all(jac.tril(-1)[1:].abs().sum(1) > 0)              # every logit but the first sees earlier pixels
    # changing pixels i, i+1, ... leaves the logits 0..i unchanged
    for i in range(D):
        changed = x.clone()
        changed[:, i:] = 1 - changed[:, i:]
        assert torch.equal(dec(z, changed)[:, :i + 1], logits[:, :i + 1])
    # the logits depend on z
    assert not torch.allclose(dec(z + 1.0, x), logits)


def test_autoregressive_probabilities_sum_to_one_and_samples_follow_them():
    D, Dz = 3, 2
    torch.manual_seed(1)
    dec = AutoregressiveDecoder(Dz, D, (8,)).double()
    with torch.no_grad():
        for p in dec.parameters():
            p.mul_(3.0)                                                   # a distribution far from uniform
    z = torch.randn(1, Dz, dtype=torch.float64)
    configs = torch.tensor([[(k >> (D - 1 - d)) & 1 for d in range(D)] for k in range(2**D)], dtype=torch.float64)
    with torch.no_grad():
        logits = dec(z.expand(2**D, Dz), configs)
    probs = (configs * logits - nn.functional.softplus(logits)).sum(1).exp()       # p(x | z) of every x
    assert abs(probs.sum().item() - 1) < 1e-12
    n = 40_000
    x, pix = dec.sample(z.expand(n, Dz), generator=torch.Generator().manual_seed(0))
    assert x.shape == pix.shape == (n, D) and set(x.unique().tolist()) <= {0.0, 1.0}
    assert torch.all((pix > 0) & (pix < 1))
    index = (x * 2 ** torch.arange(D - 1, -1, -1, dtype=torch.float64)).sum(1).long()
    freq = torch.bincount(index, minlength=2**D).double() / n
    assert torch.all((freq - probs).abs() < 4 * (probs * (1 - probs) / n).sqrt() + 1e-9), (freq, probs)
    again, _ = dec.sample(z.expand(n, Dz), generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, again)


def test_autoregressive_decoder_rejects_bad_inputs():
    dec = AutoregressiveDecoder(2, 5, (8,))
    with pytest.raises(ValueError, match=r"z must have shape \(N, 2\)"):
        dec(torch.randn(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"x must have shape \(N, 5\)"):
        dec(torch.randn(3, 2), torch.zeros(4, 5))
    with pytest.raises(ValueError, match="hidden"):
        AutoregressiveDecoder(2, 5, (0,))
