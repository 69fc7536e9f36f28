"""A model of how the persistent Gluon backward's three partitions wait on each other
(foxcompile/kernels/_gluon_bwd_kernels.py), to check on a CPU that a change of hand-over order
cannot deadlock before it costs GPU time: one program walks a sequence of work items (each
with its number of query tiles, 0 where every head's tiles are pruned) and the model runs its
loader, math and reducer until all are done or none can go on (a deadlock).

    python benchmarks/bwd_protocol_sim.py [--items 3,0,0,2] [--kv-buffers 3] [--stages 3]
        [--protocol dq_next|dq_next_v1|plain] [--random 2000]

What each partition waits for (the kernel's mbarriers, counted as completions):
  loader   publish item jj once both readers took item jj - 2 (two queue slots), then the
           item's K/V into buffer jj % kv_buffers once that buffer's last user released it,
           then each tile into the ring once the tile `stages` before was freed; at the end,
           the sentinel item (publishing it needs a slot too)
  math     take item jj once published; wait its K/V; per tile: wait the tile, hand the
           tile's dQ to the reducer (wait until it has read the last one), free the ring slot;
           release the item's K/V buffer
  reducer  take item jj once published; per tile, wait for its dQ, read it (dq_free)
Protocols of the math: `plain` hands each tile's dQ over in the tile; `dq_next` leaves a tile's
dQ (and its K buffer) for the next tile, which may be the next item's, and hands it over at
once in an item with no tile, and at the end (main's DQ_NEXT); `dq_next_v1` is DQ_NEXT's first
version, which handed it over early only where the next item's K/V buffer was the one held,
and deadlocks after two items with no tile.
"""
import argparse
import random


def run(tiles, kv_buffers=3, stages=3, protocol="dq_next"):
    """Runs the model on one program's items (tiles: query tiles per item); returns None when
    every partition finished, else a description of where each one waits (a deadlock)."""
    n = len(tiles)
    s = {"published": 0, "taken_math": 0, "taken_reducer": 0, "loaded_tiles": 0,
         "freed_tiles": 0, "handovers": 0, "read": 0,
         "kv_loaded": [0] * kv_buffers, "kv_released": [0] * kv_buffers,
         "held_at_end": [0] * kv_buffers}

    def loader():
        it = 0
        for jj in range(n + 1):
            yield f"publish item {jj}", lambda: min(s["taken_math"], s["taken_reducer"]) >= jj - 1
            s["published"] += 1
            if jj == n:
                return
            b = jj % kv_buffers
            yield f"K/V buffer {b} for item {jj}", lambda: s["kv_released"][b] >= jj // kv_buffers
            s["kv_loaded"][b] += 1
            for _ in range(tiles[jj]):
                yield f"ring slot of tile {it}", lambda: s["freed_tiles"] >= it - stages + 1
                s["loaded_tiles"] += 1
                it += 1

    def math():
        it = 0
        pend_kv = None                   # the K buffer of the dQ left over (dq_next*)

        def hand_over():
            yield "dq_free", lambda: s["read"] >= s["handovers"]
            s["handovers"] += 1

        for jj in range(n + 1):
            yield f"item {jj} published", lambda: s["published"] >= jj + 1
            s["taken_math"] += 1
            if jj == n:
                break
            b = jj % kv_buffers
            if protocol == "dq_next_v1" and pend_kv == b:
                yield from hand_over()
                s["kv_released"][pend_kv] += 1
                pend_kv = None
            yield f"K/V of item {jj}", lambda: s["kv_loaded"][b] >= jj // kv_buffers + 1
            if protocol == "dq_next" and tiles[jj] == 0 and pend_kv is not None:
                yield from hand_over()
                s["kv_released"][pend_kv] += 1
                pend_kv = None
            for _ in range(tiles[jj]):
                yield f"tile {it}", lambda: s["loaded_tiles"] >= it + 1
                if protocol == "plain" or pend_kv is not None:
                    yield from hand_over()
                if pend_kv is not None and pend_kv != b:
                    s["kv_released"][pend_kv] += 1
                s["freed_tiles"] += 1
                it += 1
                if protocol != "plain":
                    pend_kv = b
            if pend_kv != b:
                s["kv_released"][b] += 1
        if pend_kv is not None:          # the program's last dQ; its buffer is never reloaded
            yield from hand_over()
            s["held_at_end"][pend_kv] = 1

    def reducer():
        for jj in range(n + 1):
            yield f"item {jj} published", lambda: s["published"] >= jj + 1
            s["taken_reducer"] += 1
            if jj == n:
                return
            for _ in range(tiles[jj]):
                yield "dq_ready", lambda: s["handovers"] >= s["read"] + 1
                s["read"] += 1

    parts = {"loader": loader(), "math": math(), "reducer": reducer()}
    waiting = {name: next(gen) for name, gen in parts.items()}
    while waiting:
        moved = False
        for name in list(waiting):
            what, ready = waiting[name]
            while ready():
                moved = True
                try:
                    what, ready = next(parts[name])
                except StopIteration:
                    del waiting[name]
                    break
                waiting[name] = (what, ready)
        if not moved:
            return ", ".join(f"{name} waits for {what}" for name, (what, _) in waiting.items())
    assert s["read"] == sum(tiles), "every tile's dQ reaches the reducer once"
    assert all(r + h == ld for r, h, ld in zip(s["kv_released"], s["held_at_end"],
                                              s["kv_loaded"])), "each load released once"
    return None


def random_items(rng, length):
    """Work items as pruning makes them: runs of items with no tile among items with some."""
    return [rng.choice((0, 0, 0, 1, 2, 5)) for _ in range(length)]


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", default="3,0,0,2", help="query tiles per work item")
    parser.add_argument("--kv-buffers", type=int, default=3)
    parser.add_argument("--stages", type=int, default=3)
    parser.add_argument("--protocol", default="dq_next", choices=("dq_next", "dq_next_v1", "plain"))
    parser.add_argument("--random", type=int, default=0,
                        help="also this many random item sequences (seeded)")
    args = parser.parse_args()
    tiles = [int(t) for t in args.items.split(",")]
    print(f"{args.protocol}, {args.kv_buffers} K/V buffers, {args.stages} stages, items {tiles}: "
          f"{run(tiles, args.kv_buffers, args.stages, args.protocol) or 'finishes'}")
    rng = random.Random(0)
    stuck = 0
    for _ in range(args.random):
        items = random_items(rng, rng.randint(1, 12))
        reason = run(items, args.kv_buffers, args.stages, args.protocol)
        if reason:
            stuck += 1
            if stuck <= 3:
                print(f"  deadlock on {items}: {reason}")
    if args.random:
        print(f"{stuck} of {args.random} random sequences deadlock")


if __name__ == "__main__":
    main()
