"""Compile foxcompile's kernels for a GPU that is not there (default sm90) and report registers,
spills and what the compiler emitted: a quick check of a kernel variant or launch config on a
machine without a GPU (Triton compiles for any target; ptxas and cuobjdump ship with it).

    python benchmarks/compile_offline.py [--shape 1,4,4,4096,4096,64] [--variants=base/split,...]
        [--configs '{"fused": [128, 32, 8, 3]}'] [--arch 90]

A variant is FOXCOMPILE_FWD/FOXCOMPILE_BWD ("-" skips that pass), e.g. tma+ws/fused+tma.
The installed Triton compiles, which need not be the GPU machine's version: the numbers are
indicative. Per kernel: REG and STACK (bytes of spill stack) from cuobjdump -res-usage, and counts
in the PTX of wgmma / mma.sync, float atomics (red), TMA loads and bulk reductions, and whether
Triton warp-specialised a loop.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _fake_driver(arch):
    """An active Triton driver that targets `arch` and never touches a device."""
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase
    from triton.runtime.driver import driver

    class Offline(DriverBase):
        @classmethod
        def is_active(cls):
            return False

        def map_python_to_cpp_type(self, ty):
            return ty

        def get_current_target(self):
            return GPUTarget("cuda", arch, 32)

        def get_active_torch_device(self):
            return torch.device("cpu")

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_device_interface(self):
            return torch.cuda

        def get_benchmarker(self):
            return None

        def get_empty_cache_for_benchmark(self):
            return None

        def clear_cache(self, cache):
            pass

    driver.set_active(Offline())


def _usage(cubin):
    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    reg = re.search(r"REG:(\d+)", text)
    stack = re.search(r"STACK:(\d+)", text)
    return (int(reg.group(1)) if reg else None), (int(stack.group(1)) if stack else None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="1,4,4,4096,4096,64", help="B,Hq,Hk,M,N,D (bthd, bf16)")
    parser.add_argument("--variants",
                        default="base/split,base/fused,tma+ws/split+tma,tma/fused+tma")
    parser.add_argument("--configs", default=None, help="FOXCOMPILE_KERNEL_CONFIG for all variants")
    parser.add_argument("--arch", type=int, default=90)
    args = parser.parse_args()

    os.environ["TRITON_INTERPRET"] = "0"
    if args.configs:
        os.environ["FOXCOMPILE_KERNEL_CONFIG"] = args.configs
    _fake_driver(args.arch)
    from foxcompile.kernels import plan as plan_mod
    from foxcompile.kernels import triton_attention as ta

    kern = ta._kernels(False)
    compiled = []

    class Warmup:
        """kernel[grid](...) compiles (warmup) instead of launching."""

        def __init__(self, fn, name):
            self.fn, self.name = fn, name

        def __getitem__(self, grid):
            def go(*a, **kw):
                compiled.append((self.name, kw, self.fn.run(*a, grid=grid, warmup=True, **kw)))
            return go

    for name in ("_fwd_kernel", "_dkdv_kernel", "_dq_kernel", "_row_dot_kernel"):
        setattr(kern, name, Warmup(getattr(kern, name), name))
    ta._mode = lambda q: False
    ta._capability = lambda device: (args.arch // 10, args.arch % 10)

    batch, q_heads, kv_heads, n_queries, n_keys, head_dim = map(int, args.shape.split(","))

    def bthd(heads, seq):
        return torch.zeros(batch, seq, heads, head_dim, dtype=torch.bfloat16).transpose(1, 2)

    q, k, v = bthd(q_heads, n_queries), bthd(kv_heads, n_keys), bthd(kv_heads, n_keys)
    lam = torch.zeros(batch, q_heads, n_keys)
    scale = head_dim ** -0.5
    plan = plan_mod.make_plan(q, k, lam, scale, 0.0, plan_mod.PRUNE_OFF)
    lse = torch.zeros(batch, q_heads, n_queries)
    print(f"{'variant':<22} {'kernel':<13} {'config (outer, step, warps, stages)':<36} "
          f"{'REG':>4} {'STACK':>6} {'wgmma':>6} {'mma':>4} {'red':>4} {'tma ld':>6} "
          f"{'bulk red':>8} {'ws':>3}")
    for variant in args.variants.split(","):
        fwd, bwd = variant.split("/")
        os.environ["FOXCOMPILE_FWD"], os.environ["FOXCOMPILE_BWD"] = fwd, bwd
        compiled.clear()
        try:
            if fwd != "-":
                ta.forward(q, k, v, lam, plan, scale, torch.empty_like(q))
            if bwd != "-":
                grads = [torch.empty_like(t) for t in (q, k, v)]
                ta.backward(torch.zeros_like(q), q, k, v, lam, q, lse, plan, scale, *grads)
        except Exception as exc:  # a compile failure is a result too
            print(f"{variant:<22} FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
        for name, kw, kernel in compiled:
            if name == "_row_dot_kernel":
                continue
            outer, step = (("BLOCK_N", "BLOCK_M") if name == "_dkdv_kernel"
                           else ("BLOCK_M", "BLOCK_N"))
            config = (kw[outer], kw[step], kw["num_warps"], kw["num_stages"])
            reg, stack = _usage(kernel.asm["cubin"])
            ptx = kernel.asm["ptx"]
            reds = len(re.findall(r"\bred[.]", ptx))
            print(f"{variant:<22} {name.strip('_').replace('_kernel', ''):<13} {str(config):<36} "
                  f"{reg:>4} {stack:>6} {ptx.count('wgmma.mma_async'):>6} "
                  f"{ptx.count('mma.sync'):>4} {reds:>4} "
                  f"{ptx.count('cp.async.bulk.tensor'):>6} "
                  f"{ptx.count('cp.reduce.async.bulk'):>8} "
                  f"{kernel.asm['ttgir'].count('ttg.warp_specialize'):>3}", flush=True)


if __name__ == "__main__":
    main()
