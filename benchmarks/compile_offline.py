"""Compile foxcompile's Triton kernels for a GPU that is not there (default sm90) and report
registers, spills and what the compiler emitted: a quick check of a kernel change or launch config
on a machine without a GPU (Triton compiles for any target; ptxas and cuobjdump ship with it).

    python benchmarks/compile_offline.py [--shape 1,4,4,4096,4096,64] [--arch 90]
        [--configs '{"dq": [128, 64, 8, 3]}'] [--doc] [--dump DIR]
    python benchmarks/compile_offline.py --decode --shape 1,12,12,1,65536,64   # decode engine

The installed Triton compiles, which need not be the GPU machine's version: the numbers are
indicative. Per kernel: REG and STACK (bytes of spill stack) from cuobjdump -res-usage, counts in
the PTX of wgmma and mma.sync instructions and of wgmma waits. --dump writes each kernel's TTGIR
PTX and cubin to DIR
(cuobjdump --dump-sass DIR/dq.cubin shows the machine code). For kernels with wgmma it also prints
wgmma_report: ptxas's C75xx warnings (a serialised wgmma pipeline) and the SASS barrier count. --doc compiles the packed-sequence
variants (document ids). --decode compiles the decode engine's kernels (decode.py: the split-K
kernel and the combine kernel, for a GPU of --sms multiprocessors) for the shape instead of the
prefill forward and backward. The script compiles the foxcompile next to it: to compare two versions
of the kernels, run a copy of it inside the other checkout (e.g. a `git archive` of an older
commit) and compare the dumps' `cuobjdump -sass`.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

KERNELS = ("_fwd_kernel", "_dkdv_kernel", "_dq_kernel", "_bwd_kernel", "_decode_kernel",
           "_decode_combine_kernel")


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
    tool = _nvidia_tool("cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    reg = re.search(r"REG:(\d+)", text)
    stack = re.search(r"STACK:(\d+)", text)
    return (int(reg.group(1)) if reg else None), (int(stack.group(1)) if stack else None)


def _nvidia_tool(name: str) -> str:
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def wgmma_report(kernel) -> str:
    """What ptxas makes of a kernel's wgmma pipeline and barriers: its C75xx performance
    warnings (C7514: wgmma serialised, each product waited for before the next issues), the
    HGMMA instructions of the SASS and how many of them are followed at once by a wait for
    completion (WARPGROUP.DEPBAR.LE gsb0, 0x0), and the CTA barriers (BAR.SYNC) in the SASS."""
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "k.ptx")
        with open(ptx, "w") as f:
            f.write(kernel.asm["ptx"])
        arch = re.search(r"\.target\s+(\w+)", kernel.asm["ptx"]).group(1)
        info = subprocess.run([_nvidia_tool("ptxas"), f"-arch={arch}", "-v", ptx, "-o",
                               os.path.join(tmp, "k.cubin")], capture_output=True, text=True)
        warnings = sorted(set(re.findall(r"\((C75\d\d)\)", info.stdout + info.stderr)))
    lines = [text for _, text in _sass(kernel.asm["cubin"])]
    hgmma = [i for i, l in enumerate(lines) if "HGMMA" in l]
    waited = sum(1 for i in hgmma if i + 1 < len(lines)
                 and "WARPGROUP.DEPBAR.LE gsb0, 0x0" in lines[i + 1])
    bars = sum("BAR.SYNC" in l for l in lines)
    return (f"ptxas {','.join(warnings) or 'no C75xx warnings'}; HGMMA {len(hgmma)}, "
            f"{waited} waited at once; BAR.SYNC {bars}")


def _sass(cubin):
    """(address, instruction) of each SASS instruction of a cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([_nvidia_tool("cuobjdump"), "-sass", f.name], capture_output=True,
                              text=True).stdout
    return [(int(m.group(1), 16), m.group(2).strip())
            for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]+);", text)]


SYNC_OPS = ("WARPGROUP", "BAR", "SYNCS", "BRA")


def loop_report(kernel) -> str:
    """The hot loops of a kernel as ptxas scheduled them: each loop (a backward branch) that
    holds both HGMMA and MUFU, as its sequence of synchronisation points (WARPGROUP.ARRIVE /
    DEPBAR, BAR, SYNCS, branches, and each HGMMA that closes a group) with the counts of the
    other instructions between them. It shows where the waits for the tensor cores sit
    against the softmax's MUFU instructions, which ptxas may move across them."""
    sass = _sass(kernel.asm["cubin"])
    out = []
    for address, text in sass:
        target = re.search(r"BRA\s.*?0x([0-9a-f]+)", text)
        if not target or int(target.group(1), 16) >= address:
            continue
        body = [(a, t) for a, t in sass if int(target.group(1), 16) <= a <= address]
        ops = [re.split(r"[\s.]", re.sub(r"^@!?U?P\w+\s+", "", t))[0] for _, t in body]
        if "HGMMA" not in ops or "MUFU" not in ops or len(body) > 1500:
            continue
        out.append(f"loop {body[0][0]:#x}-{address:#x}, {len(body)} instructions")
        between: dict = {}
        for (a, t), op in zip(body, ops):
            if op in SYNC_OPS or (op == "HGMMA" and "gsb0" in t):
                if between:
                    out.append("    " + " ".join(f"{k} {n}" for k, n in between.items()))
                    between = {}
                out.append(f"  {a:#06x} {t[:72]}")
            else:
                between[op] = between.get(op, 0) + 1
        if between:
            out.append("    " + " ".join(f"{k} {n}" for k, n in between.items()))
    return "\n".join(out)


def dump(kernel, folder: str, stem: str):
    """A compiled kernel's TTGIR, PTX and cubin as folder/stem.{ttgir,ptx,cubin}."""
    os.makedirs(folder, exist_ok=True)
    for ext in ("ttgir", "ptx"):
        with open(os.path.join(folder, f"{stem}.{ext}"), "w") as f:
            f.write(kernel.asm[ext])
    with open(os.path.join(folder, f"{stem}.cubin"), "wb") as f:
        f.write(kernel.asm["cubin"])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="1,4,4,4096,4096,64",
                        help="B,Hq,Hk,M,N,D (bthd, bf16; default: %(default)s)")
    parser.add_argument("--configs", default=None,
                        help="launch configurations, as FOXCOMPILE_KERNEL_CONFIG takes them "
                             "(default: the table's)")
    parser.add_argument("--arch", type=int, default=90,
                        help="compute capability to compile for, 90 = sm90 (default: 90)")
    parser.add_argument("--dump", default=None, help="folder for each kernel's TTGIR and PTX")
    parser.add_argument("--doc", action="store_true", help="with document ids (HAS_DOC)")
    parser.add_argument("--decode", action="store_true",
                        help="compile the decode engine's kernels (decode.py) for the shape")
    parser.add_argument("--sms", type=int, default=132,
                        help="multiprocessors the decode engine splits for (default: 132, H100)")
    args = parser.parse_args()

    os.environ["TRITON_INTERPRET"] = "0"
    if args.configs:
        os.environ["FOXCOMPILE_KERNEL_CONFIG"] = args.configs
    _fake_driver(args.arch)
    from foxcompile.kernels import plan as plan_mod
    from foxcompile.contract import Prune
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

    for name in KERNELS + ("_row_dot_kernel", "_max_norm_kernel", "_qkv_norms_kernel",
                           "_score_bound_kernel", "_dq_finish_kernel"):
        if hasattr(kern, name):
            setattr(kern, name, Warmup(getattr(kern, name), name))
    ta._mode = lambda q: False
    ta._capability = lambda device: (args.arch // 10, args.arch % 10)

    batch, q_heads, kv_heads, n_queries, n_keys, head_dim = map(int, args.shape.split(","))

    def bthd(heads, seq):
        return torch.zeros(batch, seq, heads, head_dim, dtype=torch.bfloat16).transpose(1, 2)

    q, k, v = bthd(q_heads, n_queries), bthd(kv_heads, n_keys), bthd(kv_heads, n_keys)
    lam = torch.zeros(batch, q_heads, n_keys)
    scale = head_dim ** -0.5
    plan = plan_mod.make_plan(q, k, lam, scale, 0.0, Prune.OFF)
    lse = torch.zeros(batch, q_heads, n_queries)
    doc = (torch.arange(n_keys) // 512).expand(batch, n_keys) if args.doc else None
    if args.decode:
        from foxcompile.kernels import decode
        decode._multiprocessors = lambda device: args.sms
        decode.forward(q, k, v, lam, plan, scale, torch.empty_like(q), doc=doc)
    else:
        ta.forward(q, k, v, lam, plan, scale, torch.empty_like(q), doc=doc)
        grads = [torch.empty_like(t) for t in (q, k, v)]
        ta.backward(torch.zeros_like(q), q, k, v, lam, q, lse, plan, scale, *grads, doc=doc)
        ta.max_row_norms(q)
        ta.fused_score_bounds(q, k, v, scale, check_v=True)
        ta.finish_dq(torch.zeros(q.shape), torch.zeros(*q.shape[:3], 16), scale,
                     torch.empty_like(q), torch.zeros(batch, q_heads, n_keys))
    print(f"{'kernel':<13} {'config':<22} {'REG':>4} {'STACK':>6} {'wgmma':>6} {'mma':>4} "
          f"{'waits':>6}")
    for name, kw, kernel in compiled:
        config = tuple(kw.get(key) for key in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages"))
        if name == "_decode_kernel":
            config = (kw["ROWS"],) + config[1:]
        elif name == "_decode_combine_kernel":
            config = (kw["SPLITS"], None, kw.get("num_warps"), None)
        reg, stack = _usage(kernel.asm["cubin"])
        ptx = kernel.asm["ptx"]
        short = name.strip("_").replace("_kernel", "").replace("decode_combine", "dec_combine")
        print(f"{short:<13} {str(config):<22} {reg:>4} {stack:>6} "
              f"{ptx.count('wgmma.mma_async'):>6} {ptx.count('mma.sync'):>4} "
              f"{ptx.count('wgmma.wait_group'):>6}", flush=True)
        if "wgmma" in ptx:
            print(f"{'':<13} {wgmma_report(kernel)}", flush=True)
        if args.dump:
            dump(kernel, args.dump, short)


if __name__ == "__main__":
    main()
