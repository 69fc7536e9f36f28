"""Data-parallel training for train.py and bench_train.py: DDP or FSDP2 under torchrun.

    torchrun --nproc-per-node 2 examples/train.py --parallel ddp ...    # DistributedDataParallel
    torchrun --nproc-per-node 2 examples/train.py --parallel fsdp ...   # FSDP2, fully_shard per block

Every rank builds the same model (same seed), draws the same global batch and trains on its own
slice of it, so a run on N ranks sees the same data as a run on one device with the same global
batch. NCCL on CUDA, gloo on CPU. Without torchrun, --parallel ddp/fsdp runs as a group of one
process. Checkpoints go through torch.distributed.checkpoint (DCP): one directory per saved step,
written by all ranks together, loadable at another world size.
"""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

import torch

PARALLEL = ("none", "ddp", "fsdp")
CHECKPOINT_DIR = "checkpoints"  # under --out: step_000100/, step_000200/, ... (DCP)


@dataclass
class Context:
    """Where this process stands: the parallel mode, its rank among world_size, its device."""

    parallel: str = "none"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.parallel != "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_world_size() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup(parallel: str, device_type: str) -> Context:
    """Join the process group torchrun describes (or a group of one without torchrun) for
    --parallel ddp/fsdp; nothing for --parallel none, which refuses to run under a torchrun of
    several processes (each would train alone and write the same files)."""
    if parallel not in PARALLEL:
        raise ValueError(f"parallel must be one of {PARALLEL}, got {parallel!r}")
    if parallel == "none":
        if launched_world_size() > 1:
            raise SystemExit(f"started by torchrun with {launched_world_size()} processes: pass "
                             "--parallel ddp or --parallel fsdp")
        return Context(device=torch.device(device_type))
    import torch.distributed as dist

    if not dist.is_available():
        raise SystemExit("--parallel needs torch.distributed, which this build of torch lacks")
    if "RANK" not in os.environ:  # not started by torchrun: a group of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device_type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, **kwargs)
    return Context(parallel, rank, world, local_rank, device)


def teardown(ctx: Context):
    if ctx.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def wrap(model: torch.nn.Module, ctx: Context, bucket_cap_mb: float = 25.0) -> torch.nn.Module:
    """The module to compile and call: the model itself (none), DistributedDataParallel(model)
    (ddp; compiled whole, Dynamo's DDPOptimizer splits its graphs at the gradient buckets of
    bucket_cap_mb) or the model after fully_shard on every block and then on the root (fsdp; the
    model object itself, its parameters now DTensor shards). Build the optimizer after this."""
    if ctx.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, bucket_cap_mb=bucket_cap_mb)
    if ctx.parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
    return model


def local_slice(batch: torch.Tensor, ctx: Context) -> torch.Tensor:
    """This rank's share of a global batch (its first dim split evenly, in rank order)."""
    if batch.shape[0] % ctx.world_size:
        raise ValueError(f"a batch of {batch.shape[0]} does not split over {ctx.world_size} ranks")
    size = batch.shape[0] // ctx.world_size
    return batch[ctx.rank * size:(ctx.rank + 1) * size]


def mean_over_ranks(value: torch.Tensor, ctx: Context) -> torch.Tensor:
    """The mean of a tensor over the ranks (the value itself without a group)."""
    if not ctx.distributed:
        return value
    import torch.distributed as dist

    value = value.detach().clone()
    dist.all_reduce(value)  # SUM: gloo has no AVG
    return value / ctx.world_size


def from_rank0(value, ctx: Context):
    """Rank 0's value of a picklable object, on every rank."""
    if not ctx.distributed:
        return value
    import torch.distributed as dist

    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier(ctx: Context):
    if ctx.distributed:
        import torch.distributed as dist

        dist.barrier()


# ---------------------------------------------------------------- checkpoints (DCP)


def checkpoint_path(out: Path, step: int) -> Path:
    return Path(out) / CHECKPOINT_DIR / f"step_{step:06d}"


def complete_checkpoints(out: Path) -> list[Path]:
    """The DCP checkpoints under out, oldest first; one without DCP's .metadata (written last)
    was cut short and does not count."""
    root = Path(out) / CHECKPOINT_DIR
    found = [p for p in root.glob("step_*") if (p / ".metadata").exists()] if root.exists() else []
    return sorted(found)


def _state(model, optimizer, scheduler, generator, step: int, config: dict) -> dict:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optimizer_state,
            "train": {"step": step, "scheduler": scheduler.state_dict(),
                      "generator": generator.get_state(), "config": config}}


def save_checkpoint(out: Path, model, optimizer, scheduler, generator, step: int, config: dict,
                    ctx: Context, keep: int = 2) -> Path:
    """Save with DCP (every rank writes its shards) into out/checkpoints/step_N; then keep only
    the newest `keep` complete checkpoints (0: all). model is the unwrapped module (for DDP, the
    module inside it; for FSDP, the sharded root)."""
    import torch.distributed.checkpoint as dcp

    path = checkpoint_path(out, step)
    dcp.save(_state(model, optimizer, scheduler, generator, step, config), checkpoint_id=path)
    barrier(ctx)
    if ctx.is_main and keep:
        for old in complete_checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(ctx)
    return path


def load_checkpoint(path: Path, model, optimizer, scheduler, generator) -> dict:
    """Load a DCP checkpoint into the model, optimizer, scheduler and batch generator (every rank
    reads what it holds, whatever the world size that saved it); returns its "train" entry."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = _state(model, optimizer, scheduler, generator, 0, {})
    dcp.load(state, checkpoint_id=Path(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"])
    scheduler.load_state_dict(state["train"]["scheduler"])
    generator.set_state(state["train"]["generator"])
    return state["train"]
