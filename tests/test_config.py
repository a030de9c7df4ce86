"""Unit tests of coursepkg.config: device, profile, budget, seeding and the notebook setup() line.

The root conftest.py sets COURSEPKG_PROFILE=quick and COURSEPKG_DEVICE=cpu for the whole session;
the tests below set or remove those variables with monkeypatch, which restores them afterwards.
"""

from __future__ import annotations

import random

import matplotlib
import numpy as np
import pytest
import torch

from coursepkg import config

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="these tests describe a machine without CUDA")


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv(config.PROFILE_ENV, raising=False)
    monkeypatch.delenv(config.DEVICE_ENV, raising=False)
    return monkeypatch


@pytest.fixture
def keep_rcparams():
    with matplotlib.rc_context():  # setup() changes plot defaults: restore them after the test
        yield


# --------------------------------------------------------------------------------------------------
# device
# --------------------------------------------------------------------------------------------------
@no_cuda
def test_device_is_cpu_without_cuda(clean_env):
    dev = config.device()
    assert isinstance(dev, torch.device)
    assert dev.type == "cpu"


@pytest.mark.parametrize("value", ["cpu", " cpu ", "cpu:0"])
def test_device_env_var_cpu(clean_env, value):
    clean_env.setenv(config.DEVICE_ENV, value)
    assert config.device().type == "cpu"


@pytest.mark.parametrize("value", ["", "   "])
def test_device_empty_env_var_means_default(clean_env, value):
    clean_env.setenv(config.DEVICE_ENV, value)
    assert config.device().type == ("cuda" if torch.cuda.is_available() else "cpu")


@no_cuda
@pytest.mark.parametrize("value", ["cuda", "cuda:1"])
def test_device_cuda_without_gpu_is_a_clear_error(clean_env, value):
    clean_env.setenv(config.DEVICE_ENV, value)
    with pytest.raises(ValueError, match=rf"COURSEPKG_DEVICE='{value}' asks for CUDA, but no CUDA GPU is available"):
        config.device()


@pytest.mark.parametrize("value", ["gpu", "tpu0", "cuda:x"])
def test_device_unknown_value_is_a_clear_error(clean_env, value):
    clean_env.setenv(config.DEVICE_ENV, value)
    with pytest.raises(ValueError, match=rf"COURSEPKG_DEVICE='{value}' is not a device torch knows"):
        config.device()


# --------------------------------------------------------------------------------------------------
# profile and budget
# --------------------------------------------------------------------------------------------------
@no_cuda
def test_profile_default_is_quick_on_cpu(clean_env):
    assert config.profile() == "quick"


@no_cuda
@pytest.mark.parametrize("value", ["", "  "])
def test_profile_empty_env_var_means_default(clean_env, value):
    clean_env.setenv(config.PROFILE_ENV, value)
    assert config.profile() == "quick"


@pytest.mark.parametrize("value, expected", [("full", "full"), ("quick", "quick"), ("FULL", "full"),
                                             ("Full", "full"), (" full\n", "full"), ("QUICK", "quick")])
def test_profile_from_env_var_case_insensitive(clean_env, value, expected):
    clean_env.setenv(config.PROFILE_ENV, value)
    assert config.profile() == expected


@no_cuda
def test_profile_env_var_overrides_the_device_default(clean_env):
    # on a CPU the default is quick; the variable turns on the full budgets anyway
    assert config.profile() == "quick"
    clean_env.setenv(config.PROFILE_ENV, "full")
    assert config.profile() == "full"


@pytest.mark.parametrize("value", ["fast", "slow", "ful", "quick full"])
def test_profile_unknown_value_names_the_allowed_ones(clean_env, value):
    clean_env.setenv(config.PROFILE_ENV, value)
    with pytest.raises(ValueError, match=r"is not a known profile; use one of quick, full") as info:
        config.profile()
    assert repr(value) in str(info.value) and config.PROFILE_ENV in str(info.value)


def test_budget_picks_by_profile(clean_env):
    quick, full = object(), object()
    clean_env.setenv(config.PROFILE_ENV, "quick")
    assert config.budget(quick, full) is quick
    assert config.budget(quick=2_000, full=200_000) == 2_000
    clean_env.setenv(config.PROFILE_ENV, "full")
    assert config.budget(quick, full) is full
    assert config.budget(quick=2_000, full=200_000) == 200_000


def test_budget_propagates_a_bad_profile(clean_env):
    clean_env.setenv(config.PROFILE_ENV, "huge")
    with pytest.raises(ValueError, match="quick, full"):
        config.budget(1, 2)


# --------------------------------------------------------------------------------------------------
# seeding
# --------------------------------------------------------------------------------------------------
def _draw():
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**32 - 1, np.int64(7)])
def test_seed_everything_makes_all_generators_reproducible(seed):
    g1 = config.seed_everything(seed)
    first, from_g1 = _draw(), torch.rand(4, generator=g1)
    _draw()  # move the global state on
    g2 = config.seed_everything(seed)
    assert _draw() == first
    assert isinstance(g2, torch.Generator) and g2.device.type == "cpu"
    torch.testing.assert_close(torch.rand(4, generator=g2), from_g1, rtol=0, atol=0)
    # the returned generator is seeded with the seed itself
    torch.testing.assert_close(torch.rand(4, generator=config.seed_everything(seed)),
                               torch.rand(4, generator=torch.Generator().manual_seed(int(seed))), rtol=0, atol=0)


def test_seed_everything_matches_each_library_own_seeding():
    config.seed_everything(42)
    got = _draw()
    random.seed(42)
    np.random.seed(42)
    torch.manual_seed(42)
    assert got == _draw()


def test_different_seeds_give_different_draws():
    config.seed_everything(1)
    a = _draw()
    config.seed_everything(2)
    b = _draw()
    assert a[0] != b[0] and a[1] != b[1] and a[2] != b[2]


@pytest.mark.parametrize("seed", [1.0, 1.5, "3", None, True, False, [1]])
def test_seed_everything_rejects_non_int(seed):
    with pytest.raises(TypeError, match="seed must be an int"):
        config.seed_everything(seed)


@pytest.mark.parametrize("seed", [-1, -100, 2**32, 2**40])
def test_seed_everything_rejects_out_of_range(seed):
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*32\)"):
        config.seed_everything(seed)


# --------------------------------------------------------------------------------------------------
# setup
# --------------------------------------------------------------------------------------------------
@no_cuda
def test_setup_prints_exactly_one_line(clean_env, capsys, keep_rcparams):
    result = config.setup()
    out, err = capsys.readouterr()
    assert out == "coursepkg: device=cpu, profile=quick\n"
    assert out.count("\n") == 1 and err == ""
    assert out.rstrip("\n") == config.describe()
    # documented: setup() returns nothing, so that a notebook cell shows only the line
    assert result is None


@no_cuda
def test_setup_line_follows_the_environment(clean_env, capsys, keep_rcparams):
    clean_env.setenv(config.PROFILE_ENV, "FULL")
    clean_env.setenv(config.DEVICE_ENV, "cpu")
    config.setup()
    assert capsys.readouterr().out == "coursepkg: device=cpu, profile=full\n"


def test_setup_seeds_like_seed_everything(capsys, keep_rcparams):
    config.setup(seed=7, verbose=False)
    a = _draw()
    config.seed_everything(7)
    assert _draw() == a
    config.setup(verbose=False)  # the default seed is 0
    b = _draw()
    config.seed_everything(0)
    assert _draw() == b
    assert capsys.readouterr().out == ""


def test_setup_seed_none_leaves_the_generators_alone(capsys, keep_rcparams):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    config.setup(seed=None, verbose=False)
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)


def test_setup_sets_plot_defaults(capsys, keep_rcparams):
    matplotlib.rcParams["figure.dpi"] = 42
    config.setup(verbose=False)
    assert matplotlib.rcParams["figure.dpi"] == 100
    assert matplotlib.rcParams["axes.grid"] is True


def test_setup_raises_on_a_bad_profile_before_printing(clean_env, capsys, keep_rcparams):
    clean_env.setenv(config.PROFILE_ENV, "nope")
    with pytest.raises(ValueError, match="quick, full"):
        config.setup()
    assert capsys.readouterr().out == ""
