"""Run by tests/test_distributed.py under `torchrun --nproc-per-node 2`: can a DDP graph split cut
an attention site in two?

The model computes its forget gate after the scores, so a parameter (the gate's Linear) sits
between q @ k^T and the softmax; DDP's buckets are made so small (first bucket 1 byte, then
bucket_cap_mb 1e-6) that Dynamo's DDPOptimizer starts a new piece after every parameter. Each rank
writes <out>/rank<R>.json with, for foxcompile as shipped ("whole") and with its DDP hook removed
("pieces"): how many pieces fox_acp compiled, the attention calls pruning_stats recorded on this
rank (each layer's site once per forward when nothing is lost), what explain() finds in the
DDP-wrapped and in the bare model, and how far the DDP gradients are from eager training on the
global batch.
"""

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import foxcompile
import foxcompile.backend

LAYERS, HIDDEN, HEADS, T, GLOBAL_BATCH = 2, 64, 2, 32, 4


class ScoresFirstAttention(nn.Module):
    """Forgetting attention written with the scores first and the forget gate after them."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(HIDDEN, 3 * HIDDEN)
        self.fgate = nn.Linear(HIDDEN, HEADS)
        self.out = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) * (D // HEADS) ** -0.5
        lam = torch.cumsum(F.logsigmoid(self.fgate(x)).transpose(1, 2), dim=-1)
        scores = scores + lam[..., :, None] - lam[..., None, :]
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        return x + self.out((scores.softmax(-1) @ v).transpose(1, 2).flatten(2))


def build():
    torch.manual_seed(0)
    return nn.Sequential(*[ScoresFirstAttention() for _ in range(LAYERS)])


def run(x_global, rank, world) -> dict:
    pieces = []
    compile_graph = foxcompile.backend._compile

    def counting(gm, *args, **kwargs):
        pieces.append(len(gm.graph.nodes))
        return compile_graph(gm, *args, **kwargs)

    torch._dynamo.reset()
    model = build()
    reference = copy.deepcopy(model)
    ddp = DistributedDataParallel(model, bucket_cap_mb=1e-6)
    x = x_global.chunk(world)[rank]
    with torch.no_grad():
        explain_ddp = foxcompile.explain(ddp, x)
        explain_model = foxcompile.explain(reference, x)
    foxcompile.backend._compile = counting
    try:
        compiled = torch.compile(ddp, backend="fox_acp", options={"fox.compiler": "aot_eager"})
        with foxcompile.pruning_stats() as stats:
            out = compiled(x)
        out.square().mean().backward()
    finally:
        foxcompile.backend._compile = compile_graph
    reference(x_global).square().mean().backward()  # eager, one process, the global batch
    grad_diff = max((p.grad - r.grad).abs().max().item()
                    for p, r in zip(model.parameters(), reference.parameters()))
    return {"pieces": len(pieces),
            "calls": sum(row["calls"] for row in stats.per_head()),
            "explain_ddp_sites": len(explain_ddp.sites),
            "explain_ddp_declined": [d.reason for d in explain_ddp.declined],
            "explain_model_sites": len(explain_model.sites),
            "output_diff": (out - reference(x)).abs().max().item(),
            "grad_diff": grad_diff}


def main():
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dist._DEFAULT_FIRST_BUCKET_BYTES = 1  # read by DDP and DDPOptimizer: split at every parameter
    x_global = torch.randn(GLOBAL_BATCH, T, HIDDEN, generator=torch.Generator().manual_seed(1))
    result = {"whole": run(x_global, rank, world)}
    foxcompile.ddp.uninstall()  # what happens without foxcompile's hook
    result["pieces"] = run(x_global, rank, world)
    (out / f"rank{rank}.json").write_text(json.dumps(result, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
