"""coursepkg.probability against torch.distributions: time and agreement, in one run.

    .venv/bin/python benchmarks/bench_probability.py [--n 200000] [--d 64] [--repeat 20]

Prints, per operation, the median time of the peer and of coursepkg, the ratio peer/ours (>1: ours
is faster) and the largest absolute difference of the results.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import distributions as td

from coursepkg import probability as P


def median_time(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="batch size")
    parser.add_argument("--d", type=int, default=64, help="event dimension")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    n, d = args.n, args.d
    g = torch.Generator().manual_seed(0)
    x, mu, mu2 = (torch.randn(n, d, generator=g) for _ in range(3))
    lv, lv2 = (0.5 * torch.randn(n, d, generator=g) for _ in range(2))
    cov = torch.eye(d) + 0.1 * torch.ones(d, d)
    logits = torch.randn(n, d, generator=g)
    xb = (torch.rand(n, d, generator=g) < 0.5).float()

    def normal(m, v):
        return td.Independent(td.Normal(m, torch.exp(0.5 * v)), 1)

    cases = [
        ("gaussian_log_prob", lambda: normal(mu, lv).log_prob(x), lambda: P.gaussian_log_prob(x, mu, lv)),
        ("bernoulli_log_prob", lambda: td.Independent(td.Bernoulli(logits=logits), 1).log_prob(xb),
         lambda: P.bernoulli_log_prob(xb, logits)),
        ("mvn_log_prob", lambda: td.MultivariateNormal(torch.zeros(d), cov).log_prob(x),
         lambda: P.mvn_log_prob(x, torch.zeros(d), cov)),
        ("kl_diag_gaussians", lambda: td.kl_divergence(normal(mu, lv), normal(mu2, lv2)),
         lambda: P.kl_diag_gaussians(mu, lv, mu2, lv2)),
        ("kl_standard_normal", lambda: td.kl_divergence(normal(mu, lv), normal(torch.zeros_like(mu),
                                                                               torch.zeros_like(lv))),
         lambda: P.kl_standard_normal(mu, lv)),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {n} x {d}, float32, "
          f"median of {args.repeat}")
    print(f"{'operation':<20} {'torch.distributions':>20} {'coursepkg':>12} {'ratio':>7} {'max |diff|':>11}")
    for name, peer, ours in cases:
        t_peer, t_ours = median_time(peer, args.repeat), median_time(ours, args.repeat)
        diff = (peer() - ours()).abs().max().item()
        print(f"{name:<20} {t_peer * 1e3:>17.2f} ms {t_ours * 1e3:>9.2f} ms {t_peer / t_ours:>6.2f}x {diff:>11.2e}")


if __name__ == "__main__":
    main()
