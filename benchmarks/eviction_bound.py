"""How much of a KV cache a FoX model could drop for good, with ACP's guarantee kept for every
future query: a CPU calculation on SYN70's gates (docs/generation.md, "Evicting keys").

With a proven decay (lam never rises), key j can be evicted at step t when, for every later
query i >= t up to the longest context N_max,

    lam_i - lam_j <= lam_t - lam_j < delta_max = log(eps) - 2 U_max - log(N_max),

U_max bounding |scale| ||q_i|| ||k_j|| for all future queries and keys. For a model that
RMS-normalises q and k (FoX Pro), ||q|| and ||k|| are at most sqrt(D) times the largest
|norm weight|, so U_max is known in advance; for other models it is not, and no eviction is
provable. Per head, the keys older than the window W (the steps for lam to fall by -delta_max)
are the evictable ones.

    python benchmarks/eviction_bound.py [--head-dim 64] [--heads 12] [--weight 1.0]
        [--contexts 16384 65536 131072] [--json out.json]
"""
import argparse
import json
import math

import torch
import torch.nn.functional as F

EPSILON = math.exp(-10.0)


def syn70_log_f(heads, tokens, seed=0):
    """SYN70's log forget gates (B = 1): head h decays with t_h log-spaced over [2, 512]
    tokens, logit b_h + 0.3 N(0, 1), b_h = -log(expm1(1 / t_h)). (T, H) float64."""
    g = torch.Generator().manual_seed(seed)
    t = torch.exp(torch.linspace(math.log(2.0), math.log(512.0), heads, dtype=torch.float64))
    bias = -torch.log(torch.expm1(1.0 / t))
    return F.logsigmoid(bias + 0.3 * torch.randn(tokens, heads, generator=g, dtype=torch.float64)), t


def windows(log_f, delta):
    """Per head, the largest number of steps over which lam falls by less than -delta: keys
    older than this many steps are evictable at every step (H,)."""
    lam = torch.cumsum(log_f, dim=0)                        # (T, H)
    heads = lam.shape[1]
    out = []
    for h in range(heads):
        col = lam[:, h]
        # for each t, the first j with lam_t - lam_j >= delta (keys from there on are kept)
        first_kept = torch.searchsorted(-col.contiguous(), -(col + (-delta)), right=False)
        out.append(int((torch.arange(len(col)) - first_kept + 1).max()))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--weight", type=float, default=1.0,
                        help="largest |RMSNorm weight| of q and of k")
    parser.add_argument("--contexts", nargs="+", type=int, default=[16384, 65536, 131072])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    d = args.head_dim
    u_max = d ** -0.5 * (args.weight * math.sqrt(d)) ** 2       # |scale| max||q|| max||k||
    log_f, taus = syn70_log_f(args.heads, max(args.contexts))
    rows = []
    print(f"U_max = {u_max:.2f} (D = {d}, |weight| <= {args.weight}), eps = e^-10")
    print(f"{'N_max':>7} {'delta':>7} " + " ".join(f"{'t=' + format(t, '.0f'):>7}" for t in taus)
          + f" {'kept':>6}")
    for n_max in args.contexts:
        delta = math.log(EPSILON) - 2.0 * u_max - math.log(n_max)
        w = windows(log_f[:n_max], delta)
        kept = sum(min(x, n_max) for x in w) / (len(w) * n_max)
        rows.append({"n_max": n_max, "delta": delta, "u_max": u_max, "taus": taus.tolist(),
                     "windows": w, "kept_fraction": kept})
        print(f"{n_max:>7} {delta:>7.1f} " + " ".join(f"{x:>7}" for x in w) + f" {kept:>6.1%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
