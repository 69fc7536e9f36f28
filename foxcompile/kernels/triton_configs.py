"""Launch configurations of the Triton kernels: block shapes, warps and pipeline stages per
head dim, tabled for Hopper (sm90) with a conservative default elsewhere.

Pure Python (no Triton import), so the package's import stays cheap.

Every kernel walks the pruning grid of plan.tile_sizes (GRID_M queries x GRID_N keys) in steps
that divide it exactly, so forward and backward skip exactly the same (i, j) pairs:

    fwd   (BLOCK_M, BLOCK_N, num_warps, num_stages)  BLOCK_M queries per program (divides GRID_M),
                                                     key steps of BLOCK_N (divides GRID_N)
    dq    (BLOCK_M, BLOCK_N, num_warps, num_stages)  same walk as fwd
    dkdv  (BLOCK_N, BLOCK_M, num_warps, num_stages)  BLOCK_N keys per program (divides GRID_N),
                                                     query steps of BLOCK_M (divides GRID_M)

Keys of the tables are the head dim padded to a power of two (16 .. 256). See docs/kernels.md for
how the sm90 table was chosen. FOXCOMPILE_KERNEL_CONFIG (a JSON object with any of the keys
"fwd", "dq", "dkdv", each a list of four ints, and an optional fifth: a register cap, 0 for none)
overrides the table, for tuning sweeps.

SM90_MAX_REGISTERS caps a kernel's registers per thread (ptxas maxnreg) where the compiler would
otherwise take just enough to halve the blocks an SM holds (dq at D = 64; docs/kernels.md,
"Register cap").

The decode engine (decode.py) has a table of its own, DECODE_SM90 / DECODE_DEFAULT:
(BLOCK_N, num_warps, num_stages) per padded head dim, the key step of its split-K programs (each
holds all M x G query rows of one kv head; 8 warps above DECODE_FEW_ROWS rows). FOXCOMPILE_KERNEL_CONFIG's key "decode" overrides it
as [BLOCK_N, num_warps, num_stages, splits] (splits 0: the engine's choice; an optional fifth
number is a register cap, as for the others).
"""
import json
import os

# Hopper (H100 / H200), chosen by the sweep in benchmarks/run_gpu_kernels.sh (docs/kernels.md).
SM90 = {
    16: dict(fwd=(128, 64, 4, 3), dq=(128, 64, 4, 3), dkdv=(64, 64, 4, 3)),
    32: dict(fwd=(128, 64, 4, 3), dq=(128, 64, 8, 3), dkdv=(64, 64, 4, 3)),
    64: dict(fwd=(128, 64, 8, 3), dq=(128, 64, 8, 3), dkdv=(64, 64, 4, 4)),
    128: dict(fwd=(64, 64, 4, 3), dq=(128, 64, 8, 4), dkdv=(128, 64, 8, 3)),
    256: dict(fwd=(64, 32, 4, 2), dq=(64, 32, 4, 2), dkdv=(64, 32, 8, 1)),
}

SM90_MAX_REGISTERS = {(64, "dq"): 128}

# Kernels that read their streamed tiles through TMA tensor descriptors on sm90, per head dim:
# all three at D = 128, where they were measured faster; none at D = 64, where they were not,
# and none at 16, 32 and 256, not measured yet (docs/kernels.md, "Why these choices").
SM90_TMA = {128: ("fwd", "dq", "dkdv")}
TMA_KERNELS = ("fwd", "dq", "dkdv")

# Anything else (Ampere, Ada, unknown): modest tiles that fit 100 KB of shared memory.
DEFAULT = {
    16: dict(fwd=(128, 64, 4, 2), dq=(128, 64, 4, 2), dkdv=(128, 64, 4, 2)),
    32: dict(fwd=(128, 64, 4, 2), dq=(128, 64, 4, 2), dkdv=(128, 64, 4, 2)),
    64: dict(fwd=(128, 64, 4, 2), dq=(128, 64, 4, 2), dkdv=(128, 64, 8, 2)),
    128: dict(fwd=(128, 32, 8, 2), dq=(128, 32, 8, 1), dkdv=(64, 32, 8, 1)),
    256: dict(fwd=(64, 32, 4, 1), dq=(64, 32, 4, 1), dkdv=(32, 32, 4, 1)),
}

# Under TRITON_INTERPRET=1 warps and stages mean nothing; small steps keep numpy's work down.
INTERPRET = dict(fwd=(None, 32, 1, 1), dq=(None, 32, 1, 1), dkdv=(None, 32, 1, 1))

# The decode engine's key steps (decode.py): (BLOCK_N, num_warps, num_stages), with 8 warps when
# a program holds more than DECODE_FEW_ROWS query rows. Chosen from offline sm90 compiles with
# Triton 3.6 (benchmarks/compile_offline.py --decode: registers without spills; 128-key steps
# took 168-251 registers at D = 64, 4 warps spilled at D = 128), not timed yet
# (benchmarks/bench_decode_kernel.py --configs times alternatives).
DECODE_SM90 = {16: (64, 4, 3), 32: (64, 4, 3), 64: (64, 4, 3), 128: (64, 8, 3), 256: (32, 8, 3)}
DECODE_DEFAULT = {16: (64, 4, 2), 32: (64, 4, 2), 64: (64, 4, 2), 128: (64, 8, 2), 256: (32, 8, 2)}
DECODE_FEW_ROWS = 32
DECODE_INTERPRET = (32, 1, 1)

_override_cache: dict = {}


def _override():
    text = os.environ.get("FOXCOMPILE_KERNEL_CONFIG")
    if not text:
        return {}
    if text not in _override_cache:
        parsed = json.loads(text)
        _override_cache[text] = {key: tuple(int(x) for x in value) for key, value in parsed.items()}
    return _override_cache[text]


def tma_kernels(d_pad: int, capability, interpret: bool) -> frozenset:
    """The kernels ('fwd', 'dq', 'dkdv') that load through TMA descriptors by default: SM90_TMA
    on Hopper, all of them under the interpreter (which runs the same code, so CI tests it),
    none before sm90 (no TMA) and none elsewhere until measured."""
    if interpret:
        return frozenset(TMA_KERNELS)
    if capability is not None and capability[0] == 9:
        return frozenset(SM90_TMA.get(d_pad, ()))
    return frozenset()


def max_registers(kernel: str, d_pad: int, capability, interpret: bool) -> dict:
    """Launch options capping the kernel's registers: {"maxnreg": n} or {} (no cap)."""
    if interpret:
        return {}
    over = _override().get(kernel)
    if over is not None and len(over) > 4:
        cap = over[4]
    elif capability is not None and capability[0] == 9:
        cap = SM90_MAX_REGISTERS.get((d_pad, kernel), 0)
    else:
        cap = 0
    return {"maxnreg": cap} if cap else {}


def _fit(block: int, grid: int) -> int:
    """The largest power of two <= block that divides the grid's block."""
    block = min(block, grid)
    while grid % block:
        block //= 2
    return block


def shared_memory_estimate(kernel: str, outer: int, step: int, stages: int, d_pad: int,
                           elem_bytes: int) -> int:
    """Bytes of shared memory the software pipeline needs: the resident tiles (q for fwd; q and
    dO for dq; k and v for dkdv) plus `stages` copies of the streamed pair of tiles."""
    resident = (1 if kernel in ("fwd", "decode") else 2) * outer * d_pad
    return elem_bytes * (resident + stages * 2 * step * d_pad)


def shared_memory_budget(capability) -> int:
    if capability is None:
        return 1 << 30
    if capability[0] == 9:          # 227 KB per block on Hopper
        return 220 * 1024
    if capability == (8, 0):        # A100: 163 KB
        return 156 * 1024
    return 96 * 1024                # sm86 / sm89 / others: about 100 KB


def fit_shared_memory(kernel, outer, step, stages, d_pad, elem_bytes, budget):
    """Fewer stages, then smaller steps, until the pipeline fits the budget."""
    while shared_memory_estimate(kernel, outer, step, stages, d_pad, elem_bytes) > budget:
        if stages > 2:
            stages -= 1
        elif step > 16:
            step //= 2
        elif stages > 1:
            stages -= 1
        else:
            break
    return step, stages


def launch_config(kernel: str, d_pad: int, grid_m: int, grid_n: int, capability, interpret: bool,
                  elem_bytes: int = 2):
    """(outer block, step block, num_warps, num_stages) for 'fwd', 'dq' or 'dkdv', fitted to the
    pruning grid (outer and step blocks divide it) and to the shared memory of the device (the
    table is for 2-byte inputs; float32 inputs get fewer stages or smaller steps).
    capability: (major, minor) or None."""
    if interpret:
        outer, step, warps, stages = INTERPRET[kernel]
    else:
        table = SM90 if capability is not None and capability[0] == 9 else DEFAULT
        outer, step, warps, stages = table[d_pad][kernel]
    over = _override().get(kernel)
    if over is not None:
        outer, step, warps, stages = over[:4]
    outer_grid, step_grid = (grid_n, grid_m) if kernel == "dkdv" else (grid_m, grid_n)
    outer = _fit(outer or outer_grid, outer_grid)
    step = _fit(step, step_grid)
    if not interpret:
        step, stages = fit_shared_memory(kernel, outer, step, stages, d_pad, elem_bytes,
                                         shared_memory_budget(capability))
    return outer, step, warps, stages


def decode_config(d_pad: int, rows: int, grid_n: int, capability, interpret: bool,
                  elem_bytes: int = 2):
    """((ROWS, BLOCK_N, num_warps, num_stages), splits) of the decode engine: ROWS = rows (its
    query rows, already padded by the caller), key steps of BLOCK_N (dividing the pruning grid's
    GRID_N, fitted to shared memory like the forward's), and the number of key splits per kv head
    that FOXCOMPILE_KERNEL_CONFIG asks for (0: the engine chooses)."""
    if interpret:
        step, warps, stages = DECODE_INTERPRET
    else:
        table = DECODE_SM90 if capability is not None and capability[0] == 9 else DECODE_DEFAULT
        step, warps, stages = table[d_pad]
        if rows > DECODE_FEW_ROWS:
            warps = max(warps, 8)
    splits = 0
    over = _override().get("decode")
    if over is not None:
        step, warps, stages = over[:3]
        splits = over[3] if len(over) > 3 else 0
    step = _fit(step, grid_n)
    if not interpret:
        step, stages = fit_shared_memory("decode", rows, step, stages, d_pad, elem_bytes,
                                         shared_memory_budget(capability))
    return (rows, step, warps, stages), splits


def smaller(kernel: str, config):
    """A config that needs less shared memory (after an out-of-resources compile), or None."""
    outer, step, warps, stages = config
    if stages > 1:
        return outer, step, warps, stages - 1
    if step > 16:
        return outer, step // 2, warps, stages
    return None
