"""Data position for a plain ``DataLoader``: a sampler whose order and place in the epoch are its state.

A ``DataLoader`` has no ``state_dict()``: its place in an epoch lives in an
iterator, and with worker processes the sampler runs ahead of the loop by the
prefetched batches. ``ResumableSampler`` draws each epoch's order from
``(seed, epoch)`` alone and counts the samples the loop has actually been
handed (``sampler.batches(loader)`` does the counting), so saving it by name
and restoring it resumes mid-epoch on exactly the next batch:

    sampler = ResumableSampler(dataset, seed=0)
    loader = DataLoader(dataset, batch_size=32, sampler=sampler, num_workers=4)
    mgr.restore(model=net, optimizer=opt, sampler=sampler, missing_ok=True)
    while sampler.epoch < epochs:
        for batch in sampler.batches(loader):
            ...
            mgr.maybe_save(step, model=net, optimizer=opt, sampler=sampler)

torchdata's ``StatefulDataLoader`` needs none of this: pass it by name as it is.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from ..errors import CheckpointError

#: Where the docs show how to resume a plain DataLoader (named in errors).
RECIPE = "docs/training-loops.md, 'Data position' (torchckpt.training.ResumableSampler)"


class ResumableSampler(Sampler[int]):
    """Shuffles each epoch from ``(seed, epoch)`` and resumes mid-epoch where the loop stopped.

    Attributes:
        size: the number of samples in the data set.
        shuffle: shuffle each epoch (False: in order).
        seed: the seed every epoch's order derives from.
        num_replicas: data-parallel ranks sharing the data set (like ``DistributedSampler``).
        rank: this rank's share.
        epoch: the current epoch (advanced when ``batches`` finishes one).
        position: samples of this rank's share of the epoch the loop has been handed.
    """

    def __init__(
        self, data_source: Sized | int, *, shuffle: bool = True, seed: int = 0, num_replicas: int = 1, rank: int = 0
    ) -> None:
        """Create a sampler at epoch 0, position 0.

        Args:
            data_source: the data set (or its length).
            shuffle: shuffle each epoch.
            seed: the seed of every epoch's order.
            num_replicas: ranks sharing the data set; each gets every ``num_replicas``-th sample
                of the epoch's order (padded by repetition to an equal share, like ``DistributedSampler``).
            rank: this rank, in ``range(num_replicas)``.

        Raises:
            ValueError: a bad rank or replica count.
        """
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}")
        self.size = data_source if isinstance(data_source, int) else len(data_source)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.position = 0
        self._tracking = False
        self._untracked = False

    def _share(self) -> list[int]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(self.size))
        if self.num_replicas > 1 and order:
            total = -(-self.size // self.num_replicas) * self.num_replicas
            order = (order * (total // len(order) + 1))[:total]
            order = order[self.rank : total : self.num_replicas]
        return order

    def share_size(self) -> int:
        """The number of samples of this rank's share of one epoch."""
        return -(-self.size // self.num_replicas) if self.num_replicas > 1 else self.size

    def __len__(self) -> int:
        return self.share_size() - self.position

    def __iter__(self) -> Iterator[int]:
        if not self._tracking:
            self._untracked = True
        return iter(self._share()[self.position :])

    def batches(self, loader: Any) -> Iterator[Any]:
        """Iterate ``loader`` for the rest of the current epoch, counting what the loop is handed.

        Each batch counts as consumed when it is handed to the loop, so a save after the
        step that used it resumes at the next one. When the epoch is done, ``epoch`` goes up
        by one and ``position`` back to 0. Starting the loader's iterator draws its worker seed
        from the global RNG: that draw is undone (``torch.random.fork_rng``), so a resumed run's
        dropout and other global randomness follow the same stream as an uninterrupted one.

        Args:
            loader: a ``DataLoader`` built with ``sampler=`` this sampler and a ``batch_size``.

        Yields:
            The loader's batches.

        Raises:
            ValueError: the loader does not use this sampler, or has no ``batch_size``.
        """
        if getattr(loader, "sampler", None) is not self:
            raise ValueError("sampler.batches(loader) needs the DataLoader built with sampler=this sampler")
        batch_size = getattr(loader, "batch_size", None)
        if not isinstance(batch_size, int):
            raise ValueError("sampler.batches(loader) needs a DataLoader with an int batch_size")
        self._tracking, self._untracked = True, False
        try:  # the sampler is iterated lazily (at the first batch, or by prefetching workers) inside this
            with torch.random.fork_rng(devices=[]):  # starting an iterator draws a seed from the global RNG:
                iterator = iter(loader)  # keep the loop's random stream independent of where an epoch resumed
            for batch in iterator:
                self.position = min(self.position + batch_size, self.share_size())
                yield batch
        finally:
            self._tracking = False
        self.epoch += 1
        self.position = 0

    def state_dict(self) -> dict[str, Any]:
        """The epoch, the place in it, and what the order derives from.

        Raises:
            CheckpointError: the loader was iterated directly, so the place in the epoch is unknown.
        """
        if self._untracked:
            raise CheckpointError(
                "this ResumableSampler's loader was iterated directly, so its place in the epoch is unknown; "
                "iterate with `for batch in sampler.batches(loader)` (see " + RECIPE + ")"
            )
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "size": self.size,
            "num_replicas": self.num_replicas,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at the saved epoch and position (the saved seed and shuffle are taken over).

        Args:
            state: what ``state_dict`` returned.

        Raises:
            ValueError: the data set's size or the number of replicas changed (the position would be meaningless).
        """
        if int(state["size"]) != self.size or int(state["num_replicas"]) != self.num_replicas:
            raise ValueError(
                f"saved sampler state is for {state['size']} samples over {state['num_replicas']} rank(s), this "
                f"sampler has {self.size} over {self.num_replicas}; resume with the same data set and world size"
            )
        self.seed = int(state["seed"])
        self.shuffle = bool(state["shuffle"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._untracked = False


def refuse_plain_loader(name: str, obj: Any, action: str) -> None:
    """Raise the error that names the recipe when ``obj`` is a ``DataLoader`` without ``state_dict()``.

    Args:
        name: the object's name.
        obj: the object passed.
        action: ``"save"`` or ``"restore into"``.

    Raises:
        TypeError: ``obj`` is a plain ``DataLoader``.
    """
    if isinstance(obj, DataLoader) and not hasattr(obj, "state_dict"):
        raise TypeError(
            f"cannot {action} {name}=DataLoader: a plain DataLoader has no state; save its "
            "ResumableSampler (sampler=ResumableSampler(dataset, seed=...), iterate with sampler.batches(loader)) "
            f"or use torchdata's StatefulDataLoader; see {RECIPE}"
        )
