"""Data-parallel training under torchrun (gloo on CPU). Every rank runs the chain up to its last
training stage; only rank 0 reads caches first, writes files and measures.

    compress run recipe.yaml --nproc 2          # re-launches itself with torchrun on this machine
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 2 --master_addr HEAD --master_port 29500 \
        -m compress run recipe.yaml --output /shared/exported   # node 0 of 2 (docs/distributed.md)
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["init_from_env", "threads_per_process", "shutdown", "rank", "world_size", "is_writer", "agree", "sync_module",
           "all_reduce_", "shard", "sum_grads_"]


def init_from_env() -> bool:
    """Join the process group torchrun describes in the environment; False when running alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group("gloo")
        # Each process gets its share of this machine's cores: oversubscribed threads make CPU DDP slower, not faster.
        torch.set_num_threads(threads_per_process())
    return True


def threads_per_process() -> int:
    """This machine's cores (those this process may run on) divided by the processes torchrun started on it
    (``LOCAL_WORLD_SIZE``), not by the world size: two nodes of 8 cores with 2 processes each give 4 threads each."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1)))


def shutdown(wait: bool = True) -> None:
    if dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_writer() -> bool:
    """Only rank 0 writes files (caches, models, reports)."""
    return rank() == 0


def agree(value: Any) -> Any:
    """Rank 0's value on every rank (so that every rank takes the same branch, e.g. a cache hit)."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_module(model: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (after best-epoch selection)."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for t in model.state_dict().values():
            dist.broadcast(t, src=0)


def all_reduce_(tensor: torch.Tensor, mean: bool = True) -> torch.Tensor:
    if world_size() > 1:
        dist.all_reduce(tensor)
        if mean:
            tensor /= world_size()
    return tensor


def shard(n: int) -> slice:
    """This rank's contiguous share of ``n`` rows, ``[r * n // W, (r + 1) * n // W)``: the shares cover every row once,
    differ by at most one row (and may be empty when ``n < W``), and in one process are all ``n`` rows."""
    r, w = rank(), world_size()
    return slice(r * n // w, (r + 1) * n // w)


def sum_grads_(params) -> None:
    """Sum the gradients of ``params`` over the ranks in one all-reduce (a missing gradient counts as zeros)."""
    if world_size() == 1:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad.copy_(g.view_as(p))
