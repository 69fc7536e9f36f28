"""benchmarks/bwd_protocol_sim.py: the model of how the persistent Gluon backward's loader, math
warps and reducer wait on each other. It must find the deadlock that DQ_NEXT's first version
had on an H100 (two work items with no tile after one with tiles, three K/V buffers), and find
none in the protocols the kernel has now, with the kernel's own buffer counts, on random runs
of work items (a pruned item has no tile)."""
import os
import random
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
import bwd_protocol_sim as sim  # noqa: E402

from foxcompile.kernels import gluon_attention  # noqa: E402


def test_finds_the_first_dq_next_deadlock():
    reason = sim.run([3, 0, 0, 2], kv_buffers=3, stages=3, protocol="dq_next_v1")
    assert reason is not None and "reducer waits for dq_ready" in reason
    assert "loader waits for publish item 3" in reason


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dq_next", [False, True])
def test_kernel_protocols_finish(head_dim, dq_next):
    if dq_next and head_dim != 64:
        pytest.skip("DQ_NEXT is a D = 64 option")
    kv_buffers = (gluon_attention.BWD_KV_BUFFERS_DQ_NEXT if dq_next
                  else gluon_attention.BWD_KV_BUFFERS[head_dim])
    stages = gluon_attention.BWD_STAGES[head_dim]
    protocol = "dq_next" if dq_next else "plain"
    rng = random.Random(head_dim + dq_next)
    for _ in range(400):
        items = sim.random_items(rng, rng.randint(1, 12))
        assert sim.run(items, kv_buffers, stages, protocol) is None, items
    # the case of the GPU test test_gpu_gluon_items_without_tiles: per (b, kv head), 8 key
    # blocks with no tile, then 3 with tiles
    assert sim.run(([0] * 8 + [2, 3, 3]) * 4, kv_buffers, stages, protocol) is None
