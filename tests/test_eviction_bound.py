"""benchmarks/eviction_bound.py: the per-head window of keys that ACP's bound keeps."""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
import eviction_bound  # noqa: E402


def test_window_of_a_constant_gate():
    """log f = -0.5 per step, delta = -10: key j is kept while 0.5 (t - j) <= 10, so the window
    is the query itself and the 20 keys before it."""
    log_f = torch.full((200, 1), -0.5, dtype=torch.float64)
    assert eviction_bound.windows(log_f, -10.0) == [21]
    assert eviction_bound.windows(log_f, -10.25) == [21]
    assert eviction_bound.windows(log_f, -10.5) == [22]


def test_windows_grow_with_the_decay_time_and_are_capped_by_the_context():
    log_f, taus = eviction_bound.syn70_log_f(4, 4096)
    w = eviction_bound.windows(log_f, -30.0)
    assert w == sorted(w) and w[0] < 200 and w[-1] <= 4096
