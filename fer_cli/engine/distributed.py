"""Training across processes and machines with PyTorch's own engine (torchrun + DistributedDataParallel).

``fer train`` run under ``torchrun`` finds RANK / WORLD_SIZE / LOCAL_RANK in its environment and
joins the process group: NCCL when it trains on CUDA (one GPU per process, chosen by LOCAL_RANK),
gloo on the CPU. Run without torchrun it is a group of one and nothing here does anything.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, history and logs."""
        return self.rank == 0


def join(device: torch.device) -> tuple[Group, torch.device]:
    """Join the process group torchrun set up, if any; returns it and this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Group(), device
    group = Group(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", group.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return group, device


def leave(group: Group) -> None:
    if group.active and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def mean_over_ranks(group: Group, values: list[float], device: torch.device) -> list[float]:
    """The mean of each value over the ranks (every rank sees the same number of samples)."""
    if not group.active:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return (tensor / group.world).tolist()


def gather_arrays(group: Group, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each array concatenated over the ranks, in rank order, on every rank."""
    if not group.active:
        return arrays
    gathered: list = [None] * group.world
    dist.all_gather_object(gathered, arrays)
    return tuple(np.concatenate([part[i] for part in gathered]) for i in range(len(arrays)))


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the weights, to check that every rank holds the same model."""
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def fingerprints(group: Group, model: torch.nn.Module) -> list[str]:
    """Every rank's weights fingerprint, in rank order."""
    mine = weights_fingerprint(model)
    if not group.active:
        return [mine]
    gathered: list = [None] * group.world
    dist.all_gather_object(gathered, mine)
    return gathered
