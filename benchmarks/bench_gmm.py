"""coursepkg.gmm.fit against scikit-learn's GaussianMixture: same data, same initial parameters,
same number of EM iterations, full covariances, float64.

    .venv/bin/python benchmarks/bench_gmm.py [--iters 20] [--device cpu|cuda] [--shapes small|all]

Prints, per shape ``[N, D] -> K``, the time of each, the ratio sklearn / coursepkg (>1: ours is
faster) and the difference of the final mean log-likelihoods. scikit-learn is given the initial
parameters through ``weights_init``, ``means_init`` and ``precisions_init`` (with
``init_params="random_from_data"``, its cheapest initialisation, which it runs even then); ``tol=0``
makes both run exactly ``--iters`` iterations. On ``--device cuda`` our time includes the copy of
the data to the GPU and is measured after a warm-up run.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from sklearn.mixture import GaussianMixture

from coursepkg import gmm as G

SHAPES = [(10_000, 8, 4), (100_000, 32, 16), (1_000_000, 2, 8)]


def make_data(n: int, d: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    means = 4 * torch.randn(k, d, generator=g, dtype=torch.float64)
    A = torch.randn(k, d, d, generator=g, dtype=torch.float64) / d**0.5
    cov = A @ A.mT + 0.5 * torch.eye(d, dtype=torch.float64)
    true = G.GMM(torch.full((k,), 1.0 / k, dtype=torch.float64), means, cov)
    return true.sample(n, generator=g).x


def run_sklearn(x: np.ndarray, init: G.GMM, iters: int):
    gm = GaussianMixture(init.n_components, covariance_type="full", reg_covar=1e-6, tol=0.0, max_iter=iters,
                         init_params="random_from_data", weights_init=init.weights.numpy(),
                         means_init=init.means.numpy(), precisions_init=np.linalg.inv(init.covariances.numpy()),
                         random_state=0)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tol=0 never "converges"
        gm.fit(x)
    return time.perf_counter() - t0, gm.score(x)


def run_ours(x: torch.Tensor, init: G.GMM, iters: int, device: str):
    def once():
        t0 = time.perf_counter()
        xd = x.to(device)
        res = G.fit(xd, init.n_components, init=init.to(device), max_iter=iters, tol=0.0)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0, res

    if device.startswith("cuda"):
        once()  # warm-up: CUDA context, kernels
    t, res = once()
    return t, res.history[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shapes", choices=["small", "all"], default="all")
    args = parser.parse_args()
    shapes = SHAPES[:1] if args.shapes == "small" else SHAPES
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), device {args.device}; "
          f"{args.iters} EM iterations, full covariances, float64")
    print(f"{'shape':<22} {'sklearn':>9} {'coursepkg':>10} {'ratio':>7} {'|delta loglik| (nats)':>22}")
    for n, d, k in shapes:
        x = make_data(n, d, k)
        init = G.init_kmeans_pp(x, k, seed=0)
        t_sk, ll_sk = run_sklearn(x.numpy(), init, args.iters)
        t_us, ll_us = run_ours(x, init, args.iters, args.device)
        print(f"[{n:_}, {d}] -> {k:<5} {t_sk:>8.2f}s {t_us:>9.2f}s {t_sk / t_us:>6.2f}x {abs(ll_sk - ll_us):>22.2e}")


if __name__ == "__main__":
    main()
