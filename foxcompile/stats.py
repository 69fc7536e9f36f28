"""pruning_stats(): what the forget gate let each attention call skip, per call site and head.

While a PruningStats is active, every foxcompile attention forward adds its tile and FLOP counts
(device tensors, no host synchronisation) to the entry of its call site. Reading them back
(per_head(), skipped_fraction(), str()) synchronises. Outside the context nothing is recorded.
Counts are of the forward pass; the backward skips the same tiles. Under CUDA-graph replay
(mode="reduce-overhead") the op's Python body does not run, so replays are not recorded.
"""
import contextlib
from dataclasses import dataclass

import torch

_active: list["PruningStats"] = []


def recording() -> bool:
    return bool(_active)


@dataclass
class _SiteTotals:
    flops_per_pair: float  # forward multiply-adds x 2 per computed (i, j) pair
    skipped_tiles: torch.Tensor   # (H,) float64, summed over batch and calls
    causal_tiles: torch.Tensor    # (H,)
    computed_pairs: torch.Tensor  # (H,)
    causal_pairs: torch.Tensor    # (H,)
    calls: int = 0


class PruningStats(contextlib.AbstractContextManager):
    """Totals per call site, in the order sites were first seen."""

    def __init__(self):
        self._sites: dict[str, _SiteTotals] = {}

    def __enter__(self):
        _active.append(self)
        return self

    def __exit__(self, *exc):
        _active.remove(self)
        return False

    def _add(self, site: str, counts, flops_per_pair: float) -> None:
        per_head = [c.sum(dim=0) for c in counts]  # (B, H) -> (H,)
        totals = self._sites.get(site)
        if totals is None or totals.skipped_tiles.shape != per_head[0].shape:
            zeros = [torch.zeros_like(c) for c in per_head]
            self._sites[site] = totals = _SiteTotals(flops_per_pair, *zeros)
        for total, add in zip((totals.skipped_tiles, totals.causal_tiles, totals.computed_pairs,
                               totals.causal_pairs), per_head):
            total.add_(add)
        totals.calls += 1

    def per_head(self) -> list[dict]:
        """One dict per call site: site, calls, heads, skipped_tile_fraction (per head),
        executed_flops and dense_flops (forward, summed over heads and calls)."""
        rows = []
        for site, t in self._sites.items():
            rows.append({
                "site": site,
                "calls": t.calls,
                "heads": int(t.skipped_tiles.numel()),
                "skipped_tile_fraction": (t.skipped_tiles / t.causal_tiles.clamp(min=1)).tolist(),
                "executed_flops": float(t.computed_pairs.sum()) * t.flops_per_pair,
                "dense_flops": float(t.causal_pairs.sum()) * t.flops_per_pair,
            })
        return rows

    def skipped_fraction(self) -> float:
        """Fraction of the dense causal attention FLOPs skipped, over all sites (0 if none ran)."""
        rows = self.per_head()
        dense = sum(r["dense_flops"] for r in rows)
        return 1.0 - sum(r["executed_flops"] for r in rows) / dense if dense else 0.0

    def __str__(self) -> str:
        lines = [f"pruning: {100 * self.skipped_fraction():.1f}% of attention FLOPs skipped"]
        for r in self.per_head():
            heads = " ".join(f"{100 * f:.0f}" for f in r["skipped_tile_fraction"])
            lines.append(f"  {r['site']}: {r['calls']} call(s), "
                         f"{100 * (1 - r['executed_flops'] / max(r['dense_flops'], 1)):.1f}% "
                         f"of FLOPs skipped; tiles skipped per head (%): {heads}")
        return "\n".join(lines)


def record(site: str, counts, flops_per_pair: float) -> None:
    """Called by the op with plan.TileCounts (each (B, H) float64 on the device) and the forward
    FLOPs of one (i, j) pair (2 D for q.k plus 2 Dv for p.v)."""
    for recorder in _active:
        recorder._add(site or "forgetting_attention", counts, flops_per_pair)


def pruning_stats() -> PruningStats:
    """Context manager: `with foxcompile.pruning_stats() as stats: model(x); print(stats)`."""
    return PruningStats()
