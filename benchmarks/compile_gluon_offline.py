"""Compile the Gluon (sm90) forward and backward offline, with no GPU, and report registers, spills and the
count of wgmma / TMA / mbarrier instructions in its PTX, and what ptxas made of the wgmma pipeline
(compile_offline.wgmma_report: C7514 means every product is waited for before the next issues)
and the CTA barriers of the SASS: a quick check of a Gluon change on a CPU machine. Needs a Triton with Gluon's Hopper pieces (the GPU's is 3.6):

    /path/to/triton-3.6-venv/bin/python benchmarks/compile_gluon_offline.py [--head-dim 64]
        [--doc] [--dump DIR] [--loops] [--timeline]

--loops prints each hot loop's synchronisation points in the SASS with the instructions between
them (compile_offline.loop_report): where ptxas put the waits for the tensor cores against the
softmax's MUFU instructions.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from compile_offline import _fake_driver, _usage, dump, loop_report, wgmma_report  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--shape", default="1,4,2,1000,4096", help="B,Hq,Hk,M,N")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"))
    parser.add_argument("--doc", action="store_true")
    parser.add_argument("--dump", default=None)
    parser.add_argument("--loops", action="store_true",
                        help="print the hot loops' synchronisation points (loop_report)")
    parser.add_argument("--timeline", action="store_true",
                        help="the kernels' TIMELINE build (benchmarks/item_timeline.py)")
    args = parser.parse_args()
    os.environ["TRITON_INTERPRET"] = "0"
    _fake_driver(90)
    from foxcompile.kernels import gluon_attention as ga
    from foxcompile.kernels import plan as plan_mod
    from foxcompile.contract import Prune
    import triton

    ga._multiprocessors = lambda device: 132      # an H100's SMs: the persistent grid
    kern = ga._kernels()
    if kern is None:
        raise SystemExit(f"no Gluon: {ga._import_errors}")
    compiled = []

    class Warmup:
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            def go(*a, **kw):
                compiled.append(self.fn.run(*a, grid=grid, warmup=True, **kw))
            return go

    kern._gluon_fwd_kernel = Warmup(kern._gluon_fwd_kernel)
    bwd = ga._bwd_kernels()
    if bwd is None:
        raise SystemExit(f"no Gluon backward: {ga._import_errors}")
    bwd._gluon_bwd_kernel = Warmup(bwd._gluon_bwd_kernel)
    batch, q_heads, kv_heads, n_queries, n_keys = map(int, args.shape.split(","))
    dtype = getattr(torch, args.dtype)
    d = args.head_dim

    def bthd(heads, seq):
        return torch.zeros(batch, seq, heads, d, dtype=dtype).transpose(1, 2)

    q, k, v = bthd(q_heads, n_queries), bthd(kv_heads, n_keys), bthd(kv_heads, n_keys)
    lam = torch.zeros(batch, q_heads, n_keys)
    plan = plan_mod.make_plan(q, k, lam, d ** -0.5, 0.0, Prune.OFF)
    doc = (torch.arange(n_keys) // 512).expand(batch, n_keys) if args.doc else None
    out = torch.zeros_like(q)
    lse = torch.zeros(batch, q_heads, n_queries)
    fwd_stamps = bwd_stamps = None
    if args.timeline:
        fwd_stamps = torch.zeros(-(-n_queries // 128) * batch * q_heads, 2, 8, dtype=torch.int64)
        bwd_stamps = torch.zeros(-(-n_keys // 128) * batch * kv_heads, 8, dtype=torch.int64)
    ga.forward(q, k, v, lam, plan, d ** -0.5, out, doc=doc, stamps=fwd_stamps)
    ga.backward(torch.zeros_like(q), q, k, v, lam, out, lse, plan, d ** -0.5,
                torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), doc=doc,
                stamps=bwd_stamps)
    for kernel, name in zip(compiled, ("fwd", "bwd")):
        reg, stack = _usage(kernel.asm["cubin"])
        ptx = kernel.asm["ptx"]
        print(f"triton {triton.__version__} {name} D={d} {args.dtype} doc={args.doc}: REG {reg} "
              f"STACK {stack} wgmma {ptx.count('wgmma.mma_async')} "
              f"waits {ptx.count('wgmma.wait_group')} tma {ptx.count('cp.async.bulk.tensor')} "
              f"setmaxnreg {ptx.count('setmaxnreg')} smem {kernel.metadata.shared}")
        print(f"    {wgmma_report(kernel)}")
        if args.loops:
            print(loop_report(kernel))
        if args.dump:
            dump(kernel, args.dump, f"gluon_{name}_{d}")


if __name__ == "__main__":
    main()
