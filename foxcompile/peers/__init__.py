"""Calls into the peers' FoX kernels, run by foxcompile's op under torch.compile (fox_acp only).

Most FoX code calls a kernel instead of writing attention out: flash-linear-attention's
`parallel_forgetting_attn` (its ForgettingAttention layer and FoX model) and the FoX authors'
`forgetting_transformer.ops.forgetting_attention.forgetting_attention`. Under
`torch.compile(..., backend="fox_acp")` each such call becomes one foxcompile::attention call with
exactly mapped arguments (fla.py, fox_authors.py), so those models get ACP and foxcompile's kernels
without edits; a call the op cannot run yet (fla's sliding window) is declined with its reason and
runs the peer's kernel. Eager calls and every other backend are untouched.

    registry.py   substitute_in_graph registration, lazy (never imports a peer)
    trace.py      what the polyfills ask at trace time, and the op call they emit
    fla.py        fla's semantics, argument mapping and declines
    fox_authors.py  the FoX authors' kernel: the same
    rewrite.py    backend side: epsilon, decay proof, call-site names; PeerSite reports
"""
from .registry import PEERS, install, status
from .rewrite import PeerSite, decay_of, drain_declines, rewrite_calls

__all__ = ["PEERS", "install", "status", "PeerSite", "decay_of", "drain_declines",
           "rewrite_calls"]
