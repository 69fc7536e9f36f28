"""How the persistent Gluon kernels' work items spread over their programs: a CPU model of the
schedule (no GPU needed). Two questions, one per mode:

    python benchmarks/schedule_sim.py assignment [--programs 132] [--overhead 3]
    python benchmarks/schedule_sim.py order [--programs 132] [--shapes B8-T4096-H24-D64,...]
        [--json F]

assignment: P programs take the key-block work items of a dense causal backward (one item = one
  128-key block of one (b, head), its cost the 64-query tiles it walks plus a fixed overhead),
  statically (program p takes items p, p + P, ...) or dynamically (each program takes the next
  item when it is free, as the hardware does with a non-persistent grid, and the kernels' atomic
  counter does). Prints the makespan against a perfect split and how many heads are in flight
  at once (their Q, dO and dq buffers compete for L2).
order: the dynamic schedule of both kernels' items on SYN70's plan with pruning
  (docs/benchmarks.md), each item costing `item + tile x tiles` SM cycles (COSTS: the
  item_timeline.py fits), for each item order of ORDERS: the makespan against a perfect split,
  that is the share of the time lost to programs that wait at the end for the last ones.
"""
import argparse
import heapq
import json
import os
import sys

BLOCK = 128           # the forward's query block, the backward's key block, the grid's tiles
BWD_TILE_M = 64       # the backward's query rows per tile
# SM cycles, (head dim, direction) -> (per item, per tile): item_timeline.py's fits with pruning
# on an H100 (2026-12-07 11:44 and 13:04 UTC; the D = 64 backward's item cost rounded down for
# the 16-byte dk/dv stores that came after)
COSTS = {(64, "forward"): (2300, 2440), (64, "backward"): (6000, 3500),
         (128, "forward"): (6000, 2900), (128, "backward"): (10700, 4950)}
# the item orders `order` compares: (b, head) after (b, head), each head's heavy blocks first
# (the kernels' with FOXCOMPILE_HEAD_ORDER=index, the default), and the same with the (b, head)s
# in plan.heads_by_work's order, most tiles first (FOXCOMPILE_HEAD_ORDER=work)
ORDERS = ("by head", "heavy heads first")


def greedy(costs, programs: int):
    """Spans (start, end, item) of the dynamic schedule: program p takes item p, then
    whichever program is free first takes the next item (ties to the lower program)."""
    free = [(0.0, p) for p in range(programs)]
    heapq.heapify(free)
    spans = []
    for item, cost in enumerate(costs):
        start, p = heapq.heappop(free)
        spans.append((start, start + cost, item))
        heapq.heappush(free, (start + cost, p))
    return spans


def static(costs, programs: int):
    """Spans (start, end, item) of the static assignment: program p takes items p, p + P, ..."""
    spans = []
    for p in range(programs):
        start = 0.0
        for item in range(p, len(costs), programs):
            spans.append((start, start + costs[item], item))
            start += costs[item]
    return spans


def over_ideal(spans, costs, programs: int) -> float:
    """The makespan over a perfect split of the same work."""
    return max(end for _, end, _ in spans) / (sum(costs) / programs)


def dense_item_tiles(seq: int, block_n: int = BLOCK, tile_m: int = BWD_TILE_M):
    """Query tiles walked by each key block of one head (dense, causal, M = N)."""
    return [(seq - j * block_n) // tile_m for j in range(seq // block_n)]


def assignment(programs: int, overhead: float):
    print(f"{'shape':<18} {'assignment':<10} {'makespan/ideal':>14} {'heads in flight':>16} "
          f"{'max':>4}")
    for batch, heads, seq in ((8, 24, 4096), (2, 24, 16384)):
        tiles = dense_item_tiles(seq)
        costs = [tiles[item % len(tiles)] + overhead for item in range(len(tiles) * batch * heads)]
        for name, schedule in (("static", static), ("dynamic", greedy)):
            spans = schedule(costs, programs)
            makespan = max(end for _, end, _ in spans)
            in_flight = [len({item // len(tiles) for start, end, item in spans
                              if start <= makespan * k / 50 < end}) for k in range(1, 50)]
            print(f"{f'B{batch}-T{seq}-H{heads}':<18} {name:<10} "
                  f"{over_ideal(spans, costs, programs):14.3f} "
                  f"{sum(in_flight) / len(in_flight):16.1f} {max(in_flight):4d}")


def item_tiles(start, n_queries: int, n_keys: int) -> dict:
    """Tiles of every work item, (B, H, blocks) per direction, each head's blocks in the
    kernels' order (heavy first): the forward's query blocks last to first, the backward's key
    blocks first to last. start: the plan's (B, H, query blocks) first key blocks."""
    import torch

    from foxcompile.kernels import plan as plan_mod
    offset = n_keys - n_queries
    row0 = torch.arange(start.shape[-1]) * BLOCK
    hi = torch.clamp(offset + row0 + BLOCK, max=n_keys)
    forward = (hi - start.long() * BLOCK + BLOCK - 1) // BLOCK
    end = plan_mod.end_blocks(start, n_keys, BLOCK).long()            # (B, H, key blocks)
    key0 = torch.arange(end.shape[-1]) * BLOCK
    lo = (torch.clamp(key0 - offset, min=0) // BWD_TILE_M) * BWD_TILE_M
    stop = torch.clamp(end * BLOCK, max=n_queries)
    backward = torch.clamp((stop - lo + BWD_TILE_M - 1) // BWD_TILE_M, min=0)
    return {"forward": forward.flip(-1), "backward": backward}


def ordered(tiles, name: str, start):
    """The items' tiles, flattened in the order `name` (ORDERS) takes them; start: the plan's
    start blocks, from which the kernels order their heads (plan.heads_by_work)."""
    from foxcompile.kernels import plan as plan_mod
    heads = tiles.flatten(0, 1)                                          # (B * H, blocks)
    if name == "heavy heads first":
        heads = heads[plan_mod.heads_by_work(start).long()]
    return heads.flatten()


def order(programs: int, shapes: str, json_path: str | None):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from bench_attention import EPSILON, parse_shape, syn70
    from foxcompile.contract import Prune
    from foxcompile.kernels import plan as plan_mod
    rows = []
    for shape in shapes.split(","):
        batch, seq, heads, head_dim = parse_shape(shape)
        q, k, _, _, lam = syn70(batch, seq, heads, head_dim, device="cpu")
        plan = plan_mod.make_plan(q.transpose(1, 2).float(), k.transpose(1, 2).float(), lam,
                                  head_dim ** -0.5, EPSILON, Prune.PROVEN)
        for direction, tiles in item_tiles(plan.start, seq, seq).items():
            per_item, per_tile = COSTS[(head_dim, direction)]
            row = {"shape": shape, "direction": direction, "items": tiles.numel(),
                   "tiles": int(tiles.sum()), "max_item_tiles": int(tiles.max())}
            for name in ORDERS:
                costs = (per_item + per_tile * ordered(tiles, name, plan.start).double()).tolist()
                row[name] = over_ideal(greedy(costs, programs), costs, programs)
            rows.append(row)
    print(f"{programs} programs, SYN70 with pruning: makespan / (the work / programs)")
    print(f"{'shape':<20} {'direction':<9} {'items':>6} {'tiles':>7} {'most/item':>9} "
          + " ".join(f"{name:>17}" for name in ORDERS))
    for row in rows:
        print(f"{row['shape']:<20} {row['direction']:<9} {row['items']:6d} {row['tiles']:7d} "
              f"{row['max_item_tiles']:9d} " + " ".join(f"{row[name]:17.3f}" for name in ORDERS))
    if json_path:
        with open(json_path, "w") as f:
            cost_table = {f"D{d} {k}": v for (d, k), v in COSTS.items()}
            json.dump({"programs": programs, "costs": cost_table, "rows": rows}, f, indent=1)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("assignment", "order"))
    parser.add_argument("--programs", type=int, default=132)
    parser.add_argument("--overhead", type=float, default=3.0,
                        help="assignment: the per-item cost, in tiles")
    parser.add_argument("--shapes", default="B8-T4096-H24-D64,B2-T16384-H24-D64,B1-T16384-H16-D128",
                        help="order: SYN70 shapes")
    parser.add_argument("--json", help="order: write the rows here")
    args = parser.parse_args()
    if args.mode == "assignment":
        assignment(args.programs, args.overhead)
    else:
        order(args.programs, args.shapes, args.json)


if __name__ == "__main__":
    main()
