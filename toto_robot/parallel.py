"""Applying parallelism and compilation from outside the model files (torchtitan's `parallelize` step)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

STRATEGIES = ("none", "ddp", "fsdp")


def autocast(device: torch.device | str, enabled: bool = True):
    """bf16 autocast on CUDA; on CPU a disabled context (float32 is faster and exact there)."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def init_distributed() -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU); (rank, world, device)."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def parallelize(model: nn.Module, strategy: str = "none", compile: bool = False,
                compile_backend: str = "inductor") -> nn.Module:
    """Wrap a Transformer for data parallel training: DDP, or FSDP2 (`fully_shard` per block, then the
    root); optionally torch.compile each block. Returns the module to train."""
    if strategy not in STRATEGIES:
        raise ValueError(f"parallel strategy: expected one of {STRATEGIES}, got {strategy!r}")
    if strategy != "none" and not dist.is_initialized():
        raise ValueError(f"parallel strategy {strategy!r} needs torch.distributed (launch with torchrun)")
    if compile:
        for block in model.layers:
            block.compile(backend=compile_backend)  # in place: parameter names (and checkpoints) unchanged
    if strategy == "ddp":
        device_ids = [torch.cuda.current_device()] if torch.cuda.is_available() else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.layers:
            fully_shard(block)
        fully_shard(model)
    return model
