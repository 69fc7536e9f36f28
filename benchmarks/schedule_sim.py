"""How a persistent backward's work assignment spreads over heads: simulates P programs taking the
key-block work items of a dense causal backward (one item = one 128-key block of one (b, head),
its cost the 64-query tiles it walks plus a fixed overhead), either statically (program p takes
items p, p + P, ...) or dynamically (each program takes the next item when it is free, as the
hardware does with a non-persistent grid or an atomic counter would). Prints the makespan against
a perfect split and how many heads are in flight at once (their Q, dO and dq buffers compete for
L2). No GPU needed.

    python benchmarks/schedule_sim.py [--programs 132] [--overhead 3]
"""
import argparse
import heapq


def item_tiles(seq: int, block_n: int = 128, tile_m: int = 64):
    """Query tiles walked by each key block of one head (dense, causal, M = N)."""
    return [(seq - j * block_n) // tile_m for j in range(seq // block_n)]


def simulate(batch: int, heads: int, seq: int, programs: int, dynamic: bool, overhead: float):
    tiles = item_tiles(seq)
    n_blocks = len(tiles)
    n_items = n_blocks * batch * heads

    def cost(item):
        return tiles[item % n_blocks] + overhead

    spans = []     # (start, end, item)
    if dynamic:
        free = [(0.0, p) for p in range(programs)]
        for item in range(n_items):
            start, p = heapq.heappop(free)
            spans.append((start, start + cost(item), item))
            heapq.heappush(free, (start + cost(item), p))
    else:
        for p in range(programs):
            start = 0.0
            for item in range(p, n_items, programs):
                spans.append((start, start + cost(item), item))
                start += cost(item)
    makespan = max(end for _, end, _ in spans)
    ideal = sum(cost(i) for i in range(n_items)) / programs
    in_flight = []
    for k in range(1, 50):
        t = makespan * k / 50
        in_flight.append(len({item // n_blocks for start, end, item in spans if start <= t < end}))
    return makespan / ideal, sum(in_flight) / len(in_flight), max(in_flight)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=132)
    parser.add_argument("--overhead", type=float, default=3.0, help="per-item cost, in tiles")
    args = parser.parse_args()
    print(f"{'shape':<18} {'assignment':<10} {'makespan/ideal':>14} {'heads in flight':>16} {'max':>4}")
    for batch, heads, seq in ((8, 24, 4096), (2, 24, 16384)):
        for dynamic in (False, True):
            ratio, mean, most = simulate(batch, heads, seq, args.programs, dynamic, args.overhead)
            print(f"{f'B{batch}-T{seq}-H{heads}':<18} {'dynamic' if dynamic else 'static':<10} "
                  f"{ratio:14.3f} {mean:16.1f} {most:4d}")


if __name__ == "__main__":
    main()
