"""benchmarks/item_timeline.py's analysis: shares of the work items' steps, the gaps between
items, and the per-tile / per-item fit, from a timeline whose answer is known."""
import os
import sys

import pytest
import torch

BENCHMARKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks")
sys.path.insert(0, BENCHMARKS)
import item_timeline  # noqa: E402

PER_TILE, SETUP, STORE, GAP = 300, 40, 70, 25


def timeline(tiles_of_items, programs):
    """Backward-style rows: items dealt round-robin to programs, each item taking GAP cycles to
    be taken, 10 for its K and V, SETUP, one tile, the other tiles, STORE."""
    clock = [1000 * p for p in range(programs)]
    rows = []
    for i, tiles in enumerate(tiles_of_items):
        p = i % programs
        s0 = clock[p] + GAP
        stamps = [s0, s0 + 10, s0 + 10 + SETUP, s0 + 10 + SETUP + PER_TILE]
        stamps.append(stamps[-1] + PER_TILE * (tiles - 1))
        stamps.append(stamps[-1] + STORE)
        clock[p] = stamps[-1]
        rows.append(stamps + [tiles, p])
    return torch.tensor(rows, dtype=torch.int64)


def test_shares_gaps_and_fit():
    tiles = [1, 4, 2, 7, 3, 5, 6, 2]
    rows = timeline(tiles, programs=2)
    r = item_timeline.analyse(rows, rows[:, 7], item_timeline.PHASES["backward"])
    per_item = r["cycles_per_item"]
    n = len(tiles)
    # every item but each program's first is preceded by a take of GAP cycles
    assert per_item["take"] == pytest.approx(GAP * (n - 2) / n)
    assert per_item["kv"] == 10 and per_item["setup"] == SETUP and per_item["store"] == STORE
    assert per_item["first"] == PER_TILE
    assert per_item["loop"] == pytest.approx(PER_TILE * (sum(tiles) - n) / n)
    assert sum(r["share"].values()) == pytest.approx(1.0)
    assert r["fit_cycles_per_tile"] == pytest.approx(PER_TILE)
    assert r["fit_cycles_per_item"] == pytest.approx(10 + SETUP + STORE)
    assert r["loop_cycles_per_tile"] == pytest.approx(PER_TILE)
    assert r["streams"] == 2 and r["tiles"] == sum(tiles)
    # program 0 took items of 1, 2, 3 and 6 tiles, program 1 of 4, 7, 5 and 2: its span is the
    # longest, and program 0 waits for the difference at the end
    spans = [4 * (10 + SETUP + STORE) + PER_TILE * work + 3 * GAP for work in (12, 18)]
    assert r["max_span_cycles"] == spans[1]
    assert r["span_cycles"] == pytest.approx(sum(spans) / 2)
    assert r["idle_at_end"] == pytest.approx(1 - sum(spans) / 2 / spans[1])
