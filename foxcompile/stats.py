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

from .contract import split_site_label

_active: list["PruningStats"] = []


def recording() -> bool:
    return bool(_active)


@dataclass
class _SiteTotals:
    flops_per_pair: float  # forward multiply-adds x 2 per computed (i, j) pair
    grid: tuple            # (BLOCK_M, BLOCK_N, M, N) of the last call
    skipped_tiles: torch.Tensor    # (H,) float64, summed over batch and calls
    causal_tiles: torch.Tensor     # (H,)
    skippable_tiles: torch.Tensor  # (H,) the most the tile grid allows
    distant_tiles: torch.Tensor    # (H,) the most a real gate can skip (plan.TileCounts)
    computed_pairs: torch.Tensor   # (H,)
    causal_pairs: torch.Tensor     # (H,)
    calls: int = 0
    dense_decoding_calls: int = 0  # decoding-sized calls run dense (kernels.may_prune)


class PruningStats(contextlib.AbstractContextManager):
    """Totals per call site, in the order sites were first seen.

    Two measures, which differ: the skipped fraction of attention FLOPs counts (i, j) pairs over
    all heads and calls, and the per-head figures count tiles. A skipped tile lies in the
    distant past and is full (BLOCK_M x BLOCK_N pairs), while the causal tiles include the
    half-empty diagonal ones, so skipping a share of the tiles skips a larger share of the FLOPs.
    The tiles on the diagonal always run, so a short sequence (two tiles long, say) can skip
    little or nothing whatever the gate does; `str()` says how much the grid allows."""

    def __init__(self):
        self._sites: dict[str, _SiteTotals] = {}

    def __enter__(self):
        _active.append(self)
        return self

    def __exit__(self, *exc):
        _active.remove(self)
        return False

    def _add(self, site: str, counts, flops_per_pair: float, grid: tuple,
             dense_decoding: bool) -> None:
        per_head = [c.sum(dim=0) for c in counts]  # (B, H) -> (H,)
        totals = self._sites.get(site)
        if totals is None or totals.skipped_tiles.shape != per_head[0].shape:
            zeros = [torch.zeros_like(c) for c in per_head]
            self._sites[site] = totals = _SiteTotals(flops_per_pair, grid, *zeros)
        for total, add in zip((totals.skipped_tiles, totals.causal_tiles, totals.skippable_tiles,
                               totals.distant_tiles, totals.computed_pairs, totals.causal_pairs),
                              per_head):
            total.add_(add)
        totals.grid = grid
        totals.calls += 1
        totals.dense_decoding_calls += int(dense_decoding)

    def all_reduce(self, group=None) -> "PruningStats":
        """Sum the counts of every rank of a torch.distributed process group (default: the world)
        into each rank's stats, in place; call it on every rank, outside the recording context.
        Sites are matched by label, in the order rank 0 saw them first. Afterwards per_head(),
        skipped_fraction() and str() describe the work of all ranks, and `calls` counts the calls
        of all ranks. Returns self."""
        import torch.distributed as dist

        fields = ("skipped_tiles", "causal_tiles", "skippable_tiles", "distant_tiles",
                  "computed_pairs", "causal_pairs")
        local = {site: (t.flops_per_pair, tuple(t.grid), t.skipped_tiles.numel())
                 for site, t in self._sites.items()}
        gathered = [None] * dist.get_world_size(group)
        dist.all_gather_object(gathered, local, group=group)
        layout = {}
        for rank_sites in gathered:
            for site, info in rank_sites.items():
                if site in layout and layout[site][2] != info[2]:
                    raise ValueError(f"pruning_stats.all_reduce: site {site!r} has {layout[site][2]}"
                                     f" heads on one rank and {info[2]} on another")
                layout.setdefault(site, info)
        if not layout:
            return self
        if self._sites:
            device = next(iter(self._sites.values())).skipped_tiles.device
        elif dist.get_backend(group) == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        else:
            device = torch.device("cpu")
        parts = []
        for site, (_, _, heads) in layout.items():
            t = self._sites.get(site)
            if t is None:
                parts.append(torch.zeros(len(fields) * heads + 2, dtype=torch.float64, device=device))
                continue
            parts += [getattr(t, name).to(device, torch.float64) for name in fields]
            parts.append(torch.tensor([float(t.calls), float(t.dense_decoding_calls)],
                                      dtype=torch.float64, device=device))
        flat = torch.cat(parts)
        dist.all_reduce(flat, group=group)
        offset = 0
        for site, (flops_per_pair, grid, heads) in layout.items():
            values = flat[offset:offset + len(fields) * heads].view(len(fields), heads)
            calls, dense_decoding = (int(round(float(x))) for x in
                                     flat[offset + len(fields) * heads:][:2])
            offset += len(fields) * heads + 2
            self._sites[site] = _SiteTotals(flops_per_pair, grid, *values.clone().unbind(0),
                                            calls=calls, dense_decoding_calls=dense_decoding)
        self._sites = {site: self._sites[site] for site in layout}
        return self

    def per_head(self) -> list[dict]:
        """One dict per call site: site (its label), module and location (the two parts of the
        label), calls, heads, skipped_tile_fraction (per head), skippable_tile_fraction (the most
        the tile grid allows, the same for every head), practical_tile_fraction (the most a real
        gate can skip: a tile whose corner is one step from the diagonal goes only when a single
        gate value is below the threshold), executed_flops and dense_flops (forward, summed over heads and calls), grid
        (BLOCK_M, BLOCK_N, queries, keys) of the last call, and dense_decoding_calls (calls of a
        decoding size that ran dense, as foxcompile does unless FOXCOMPILE_DECODE_PRUNING=1)."""
        rows = []
        for site, t in self._sites.items():
            causal = t.causal_tiles.clamp(min=1)
            module, location = split_site_label(site)
            rows.append({
                "site": site,
                "module": module,
                "location": location,
                "calls": t.calls,
                "heads": int(t.skipped_tiles.numel()),
                "skipped_tile_fraction": (t.skipped_tiles / causal).tolist(),
                "skippable_tile_fraction": float((t.skippable_tiles / causal).max()),
                "practical_tile_fraction": float((t.distant_tiles / causal).max()),
                "executed_flops": float(t.computed_pairs.sum()) * t.flops_per_pair,
                "dense_flops": float(t.causal_pairs.sum()) * t.flops_per_pair,
                "grid": t.grid,
                "dense_decoding_calls": t.dense_decoding_calls,
            })
        return rows

    def skipped_fraction(self) -> float:
        """Fraction of the dense causal attention FLOPs skipped, over all sites (0 if none ran)."""
        rows = self.per_head()
        dense = sum(r["dense_flops"] for r in rows)
        return 1.0 - sum(r["executed_flops"] for r in rows) / dense if dense else 0.0

    def __str__(self) -> str:
        rows = self.per_head()
        if not rows:
            return ("pruning: no foxcompile attention ran while recording (nothing was rewritten, "
                    'or the model was not compiled with backend="fox_acp"; see foxcompile.explain)')
        lines = [f"pruning: {100 * self.skipped_fraction():.1f}% of attention FLOPs skipped "
                 "(forward; the backward skips the same tiles)"]
        for r in rows:
            heads = " ".join(f"{100 * f:.0f}" for f in r["skipped_tile_fraction"])
            block_m, block_n, n_queries, n_keys = r["grid"]
            lines.append(f"  {r['site']}: {r['calls']} call(s), "
                         f"{100 * (1 - r['executed_flops'] / max(r['dense_flops'], 1)):.1f}% "
                         f"of FLOPs skipped; tiles skipped per head (%): {heads}")
            lines.append(f"    tile grid {block_m}x{block_n} at {n_queries} queries x {n_keys} keys: "
                         f"at most {100 * r['skippable_tile_fraction']:.0f}% of the causal tiles "
                         "can be skipped (the diagonal tiles always run), in practice "
                         f"{100 * r['practical_tile_fraction']:.0f}% (a tile next to the diagonal "
                         "goes only when one gate value alone is below the threshold)")
            if r["dense_decoding_calls"]:
                lines.append(f"    {r['dense_decoding_calls']} of the calls were decoding-sized "
                             "and ran dense, as they do unless FOXCOMPILE_DECODE_PRUNING=1 (the "
                             "plan of such a call reads the whole cache: docs/generation.md)")
        return "\n".join(lines)


def record(site: str, counts, flops_per_pair: float, grid: tuple,
           dense_decoding: bool = False) -> None:
    """Called by the op with plan.TileCounts (each (B, H) float64 on the device), the forward
    FLOPs of one (i, j) pair (2 D for q.k plus 2 Dv for p.v), the grid (BLOCK_M, BLOCK_N,
    queries, keys) and whether the call ran dense for its decoding size alone."""
    for recorder in _active:
        recorder._add(site or "forgetting_attention", counts, flops_per_pair, grid,
                      dense_decoding)


def pruning_stats() -> PruningStats:
    """Context manager: `with foxcompile.pruning_stats() as stats: model(x); print(stats)`."""
    return PruningStats()
