"""DDP set-up from torchrun's environment (gloo on CPU, nccl on CUDA); a single process needs none of it."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from medseg.errors import UsageError


@dataclass
class DistContext:
    """Rank, world size and device of this process; `is_main` is the only rank that logs and writes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def wrap(self, net: torch.nn.Module) -> torch.nn.Module:
        if not self.active:
            return net
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if self.device.startswith("cuda") else None
        return DistributedDataParallel(net, device_ids=ids)

    def agree_stop(self, local: bool) -> bool:
        """True on every rank if any rank wants to stop (time budget, SIGTERM)."""
        if not self.active:
            return local
        import torch.distributed as dist

        flag = torch.tensor([1.0 if local else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def close(self) -> None:
        if self.active:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def init_distributed(device: str) -> DistContext:
    """Read torchrun's RANK/WORLD_SIZE/LOCAL_RANK and join the process group; `device` is "cpu", "cuda" or "auto"."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but no CUDA device is available", hint="Use --device cpu.")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1:
        import torch.distributed as dist

        backend = "nccl" if device.startswith("cuda") else "gloo"
        if device == "cuda":
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
        dist.init_process_group(backend=backend)
    elif device == "cuda":
        device = "cuda:0"
    return DistContext(rank=rank, world=world, local_rank=local, device=device)
