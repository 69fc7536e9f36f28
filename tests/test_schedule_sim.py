"""benchmarks/schedule_sim.py: the model of how the persistent kernels' work items spread over
their programs. Its schedules must account for every item once, its makespans must be what
hand-worked cases give, and its item tiles must add up to the plan's own tile count."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
import schedule_sim as sim  # noqa: E402

from foxcompile.kernels import plan as plan_mod  # noqa: E402


def test_greedy_takes_the_next_item_on_the_first_free_program():
    # program 0 takes 5, program 1 takes 1, then 1 again (free at 1), then 1 (free at 2), ...
    spans = sim.greedy([5, 1, 1, 1, 1], 2)
    assert [(start, end) for start, end, _ in spans] == [(0, 5), (0, 1), (1, 2), (2, 3), (3, 4)]
    assert sim.over_ideal(spans, [5, 1, 1, 1, 1], 2) == pytest.approx(5 / 4.5)
    # the heavy item last: the light ones spread first, then one program runs it alone
    spans = sim.greedy([1, 1, 1, 1, 5], 2)
    assert max(end for _, end, _ in spans) == 7


def test_static_assignment_takes_every_programs_share():
    costs = [3, 1, 2, 2, 1, 4]
    spans = sim.static(costs, 3)
    assert sorted(item for _, _, item in spans) == list(range(6))
    # program 0: items 0, 3 (3 + 2); program 1: items 1, 4 (1 + 1); program 2: items 2, 5 (2 + 4)
    assert max(end for _, end, _ in spans) == 6


@pytest.mark.parametrize("n_queries,n_keys", [(384, 384), (200, 520), (1, 300)])
def test_item_tiles_add_up_to_the_plans_tiles(n_queries, n_keys):
    """Forward items (query blocks) and backward items (key blocks, 64-row tiles) cover the
    tiles the plan leaves: the forward's sum is the causal 128 x 128 tiles minus those skipped,
    the backward's counts each of those tiles once per 64-row half that has a row in it that
    sees a key of the tile's block."""
    torch.manual_seed(0)
    m_blocks = -(-n_queries // 128)
    offset = n_keys - n_queries
    diagonal = (offset + torch.clamp(torch.arange(m_blocks) * 128 + 127, max=n_queries - 1)) // 128
    start = torch.minimum(torch.randint(0, 4, (2, 3, m_blocks)).cummax(-1).values,
                          diagonal).to(torch.int32)
    tiles = sim.item_tiles(start, n_queries, n_keys)
    counts = plan_mod.tile_counts(start, n_queries, n_keys, 128, 128)
    assert torch.equal(tiles["forward"].sum((-1)).double(),
                       counts.causal_tiles - counts.skipped_tiles)
    halves = 0
    for b in range(2):
        for h in range(3):
            for m in range(m_blocks):
                for n in range(int(start[b, h, m]), int(diagonal[m]) + 1):
                    for half in range(m * 128, min((m + 1) * 128, n_queries), 64):
                        last_row = min(half + 63, n_queries - 1)
                        halves += offset + last_row >= n * 128
    assert int(tiles["backward"].sum()) == halves


def test_heavy_heads_first_shortens_the_tail_on_syn70():
    rows = sim.order(16, "B1-T2048-H8-D64", None)
    assert {row["direction"] for row in rows} == {"forward", "backward"}
    for row in rows:
        assert row["heavy heads first"] <= row["by head"]
        assert row["heavy heads first"] >= 1.0
