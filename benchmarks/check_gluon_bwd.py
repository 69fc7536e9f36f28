"""The Gluon backward against the tl backward and the float64 definition on a list of cases, on an
sm90 GPU: one process per case (a kernel that faults poisons its CUDA context), four at a time.
Prints, per case and gradient, the relative error of each engine against float64 and the Gluon
one against tl; writes the rows to --json.

    python benchmarks/check_gluon_bwd.py [--cases t64,g2,...] [--json out.json] [--case-timeout S]
    python benchmarks/check_gluon_bwd.py --one NAME        # one case in this process
"""
import argparse
import concurrent.futures
import json
import math
import os
import subprocess
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from foxcompile.contract import Prune  # noqa: E402
from foxcompile.kernels import gluon_attention, naive, plan as plan_mod, triton_attention  # noqa: E402

# name: (B, Hq, Hk, M, N, D, dtype, prune, mean document length or 0)
CASES = {
    "t64": (1, 1, 1, 64, 64, 64, "bf16", "off", 0),
    "t1": (1, 2, 2, 1, 1, 64, "bf16", "off", 0),
    "t17": (2, 4, 2, 17, 17, 64, "bf16", "off", 0),
    "t300": (1, 2, 1, 300, 300, 64, "fp16", "off", 0),
    "big": (1, 2, 2, 1000, 1000, 64, "bf16", "off", 0),
    "m1": (1, 2, 2, 1, 900, 64, "bf16", "off", 0),
    "m64n256": (1, 1, 1, 64, 256, 64, "bf16", "off", 0),
    "m100n1000": (2, 2, 1, 100, 1000, 64, "bf16", "off", 0),
    "pruned": (2, 4, 2, 2048, 2048, 64, "bf16", "proven", 0),
    "guarded": (1, 4, 1, 1500, 3000, 64, "fp16", "guarded", 0),
    "docs": (2, 4, 2, 2048, 2048, 64, "bf16", "guarded", 300),
    "d128": (1, 4, 1, 128, 128, 128, "bf16", "off", 0),
    "d128big": (1, 3, 3, 640, 640, 128, "bf16", "off", 0),
    "d128pruned": (1, 4, 1, 300, 3000, 128, "fp16", "proven", 0),
}


def make_case(batch, q_heads, kv_heads, n_queries, n_keys, head_dim, dtype, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    q = torch.randn(batch, q_heads, n_queries, head_dim, generator=g)
    k = torch.randn(batch, kv_heads, n_keys, head_dim, generator=g)
    v = torch.randn(batch, kv_heads, n_keys, head_dim, generator=g)
    grad = torch.randn(batch, q_heads, n_queries, head_dim, generator=g)
    times = torch.exp(torch.linspace(math.log(2.0), math.log(64.0), q_heads))
    bias = -torch.log(torch.expm1(1.0 / times))
    log_f = F.logsigmoid(bias[None, :, None] + 0.3 * torch.randn(batch, q_heads, n_keys,
                                                                 generator=g))
    lam = torch.cumsum(log_f.double(), -1).float()
    doc = None
    if length:
        cuts = torch.rand(batch, n_keys, generator=g) < 1.0 / length
        doc = torch.cumsum(cuts.long(), -1).cuda()
    cast = [t.to(dt).cuda() for t in (q, k, v, grad)]
    return (*cast, lam.cuda(), doc)


def run_one(name):
    batch, q_heads, kv_heads, n_queries, n_keys, head_dim, dtype, prune, length = CASES[name]
    q, k, v, grad, lam, doc = make_case(batch, q_heads, kv_heads, n_queries, n_keys, head_dim,
                                        dtype, length)
    scale = head_dim ** -0.5
    plan = plan_mod.make_plan(q, k, lam, scale, math.exp(-10.0), Prune[prune.upper()], doc=doc,
                              norm=triton_attention.max_norm)
    reason = gluon_attention.unsupported_reason(q, k, v) or \
        gluon_attention.backward_fallback_reason(q, plan)
    if reason:
        return {"case": name, "error": f"unsupported: {reason}"}
    out = torch.empty_like(q)
    lse = triton_attention.forward(q, k, v, lam, plan, scale, out, doc=doc)
    grads = {}
    for engine in (triton_attention, gluon_attention):
        dq, dk, dv = (torch.full_like(t, float("nan")) for t in (q, k, v))
        dlam = engine.backward(grad, q, k, v, lam, out, lse, plan, scale, dq, dk, dv, doc=doc)
        torch.cuda.synchronize()
        grads[engine.__name__.split(".")[-1]] = (dq, dk, dv, dlam)
    row = {"case": name, "shape": CASES[name],
           "skipped_tiles": int((plan.start > 0).sum().item())}
    if prune == "off":   # the float64 definition, unpruned
        q64, k64, v64, lam64 = (t.detach().double().requires_grad_(True) for t in (q, k, v, lam))
        naive.forgetting_attention(q64, k64, v64, lam64, scale, doc).backward(grad.double())
        grads["fp64"] = (q64.grad, k64.grad, v64.grad, lam64.grad)
    for i, key in enumerate(("dq", "dk", "dv", "dlam")):
        gl_t = grads["gluon_attention"][i].double()
        tl_t = grads["triton_attention"][i].double()
        row[f"{key}_nan"] = int(gl_t.isnan().sum().item())
        row[f"{key}_vs_tl"] = ((gl_t - tl_t).norm() / tl_t.norm().clamp_min(1e-30)).item()
        if "fp64" in grads:
            ref = grads["fp64"][i]
            for eng, t in (("gluon", gl_t), ("tl", tl_t)):
                row[f"{key}_{eng}_vs_fp64"] = ((t - ref).norm() / ref.norm().clamp_min(1e-30)).item()
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--one", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--case-timeout", type=float, default=300.0,
                        help="seconds a case may take (a hung kernel is reported, not waited for)")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one)))
        return

    def spawn(name):
        try:
            proc = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True,
                                  text=True, timeout=args.case_timeout)
        except subprocess.TimeoutExpired:
            return {"case": name, "error": f"no result in {args.case_timeout:.0f} s (hung?)"}
        lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
        if proc.returncode or not lines:
            return {"case": name, "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
        return json.loads(lines[-1])

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        rows = list(pool.map(spawn, args.cases.split(",")))
    for row in rows:
        if "error" in row:
            print(f"{row['case']:<11} ERROR {row['error']}")
            continue
        parts = []
        for key in ("dq", "dk", "dv", "dlam"):
            text = f"{key} vs tl {row[f'{key}_vs_tl']:.1e}"
            if f"{key}_gluon_vs_fp64" in row:
                text += f" fp64 {row[f'{key}_gluon_vs_fp64']:.1e}/{row[f'{key}_tl_vs_fp64']:.1e}"
            if row[f"{key}_nan"]:
                text += f" NaN {row[f'{key}_nan']}"
            parts.append(text)
        print(f"{row['case']:<11} " + " | ".join(parts))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
