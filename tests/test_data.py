"""coursepkg.data: shapes, reproducibility, the distributions they claim, clear errors."""

import pytest
import torch

from coursepkg import data


@pytest.mark.parametrize("name", data.TOY_2D)
def test_toy_2d_shapes_and_reproducibility(name):
    x = data.toy_2d(name, 500, seed=3)
    assert x.shape == (500, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.equal(x, data.toy_2d(name, 500, seed=3))
    assert not torch.equal(x, data.toy_2d(name, 500, seed=4))
    assert x.abs().max() < 6


def test_checkerboard_lies_on_black_squares():
    x = data.toy_2d("checkerboard", 4000, seed=0, dtype=torch.float64)
    cells = torch.floor((x + 4) / 2).long()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()


def test_eight_gaussians_sit_on_a_ring():
    x = data.toy_2d("eight_gaussians", 4000, seed=0, noise=0.0)
    r = x.norm(dim=1)
    assert abs(r.mean().item() - 2.5) < 0.05


def test_mixture_1d_matches_its_parameters():
    w, m, s = (0.25, 0.75), (-3.0, 2.0), (0.5, 1.5)
    x, z = data.mixture_1d(200_000, w, m, s, seed=0)
    assert x.shape == z.shape == (200_000,)
    assert abs((z == 0).double().mean().item() - 0.25) < 0.005
    for k in range(2):
        xk = x[z == k]
        assert abs(xk.mean().item() - m[k]) < 0.02 and abs(xk.std().item() - s[k]) < 0.02
    # the marginal mean is the weighted mean of the component means
    assert abs(x.mean().item() - (0.25 * -3 + 0.75 * 2)) < 0.02


def test_digits_are_scaled_images():
    images, labels = data.digits()
    assert images.shape == (1797, 64) and labels.shape == (1797,)
    assert images.min() >= 0 and images.max() == 1
    assert set(labels.tolist()) == set(range(10))


@pytest.mark.parametrize("call, message", [
    (lambda: data.toy_2d("spiral", 10), "unknown toy data set 'spiral'"),
    (lambda: data.toy_2d("gmm", 0), "positive int"),
    (lambda: data.toy_2d("gmm", 10, noise=-1), "noise"),
    (lambda: data.toy_2d("gmm", 10, seed=1, generator=torch.Generator()), "either seed or generator"),
    (lambda: data.mixture_1d(10, (0.5, 0.6), (0, 1), (1, 1)), "sum to 1"),
    (lambda: data.mixture_1d(10, (0.5, 0.5), (0, 1, 2), (1, 1)), "one length"),
    (lambda: data.mixture_1d(10, (0.5, 0.5), (0, 1), (1, 0)), "stds must be positive"),
])
def test_bad_input_is_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
