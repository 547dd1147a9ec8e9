"""The process group as the training helpers see it: who writes replicated state, and agreement.

Replicated (data-parallel) state is the same on every rank, so only rank 0
writes it; the others return at once and never wait in a collective, so code
that calls ``save`` on rank 0 only cannot hang. Decisions that depend on a
rank's clock or on a signal one rank received are agreed with one small
``all_reduce`` so that every rank acts at the same step.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def group_active() -> bool:
    """Whether ``torch.distributed`` is initialised in this process."""
    return dist.is_available() and dist.is_initialized()


def skips_replicated_write(distributed: bool | None) -> bool:
    """Whether this process leaves a replicated (unsharded) save to rank 0.

    Args:
        distributed: the manager's setting; only the automatic mode (None) shares the work,
            ``False`` means every process writes on its own.
    """
    return distributed is None and group_active() and dist.get_rank() != 0


def agree_any(flags: list[bool]) -> list[bool]:
    """Each flag OR-ed over every rank, in one ``all_reduce`` (the identity without a process group).

    Args:
        flags: this rank's flags (every rank passes the same number).

    Returns:
        For each position, whether any rank passed True.
    """
    if not group_active():
        return list(flags)
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":  # NCCL reduces device tensors only
        device = torch.device("cuda", torch.cuda.current_device())
    box = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=device)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return [bool(v) for v in box.tolist()]
