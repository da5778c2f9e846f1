"""Which examples each optimizer step sees: a pure function of (seed, epoch, position), so resuming is exact.

The example indices form an endless stream: the seeded permutation of epoch 0, then that of epoch 1, and so
on. A global micro-batch takes the next `batch_size * world_size` indices from the stream (running on into
the next epoch when one ends, so no example is dropped and tiny data sets still fill a batch), and rank r
keeps the r-th contiguous slice of it: the ranks see disjoint examples and together exactly the global batch.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from trainables.errors import ConfigError


@dataclass
class StreamPosition:
    """Where the next global micro-batch starts: the epoch and the offset into that epoch's permutation."""

    epoch: int = 0
    offset: int = 0


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> list[int]:
    """The order of the examples in `epoch`; depends on nothing but its arguments."""
    order = list(range(num_examples))
    # A private generator (not the global RNG): dropout/IB noise draws must not shift the data order.
    random.Random(f"ibft-data-order:{seed}:{epoch}").shuffle(order)
    return order


class BatchOrder:
    """Hands out each rank's slice of successive global micro-batches and remembers the stream position."""

    def __init__(self, num_examples: int, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if num_examples < 1:
            raise ValueError("cannot draw batches from an empty data set")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.position = StreamPosition()
        self._order_epoch = -1
        self._order: list[int] = []

    def next_indices(self) -> list[int]:
        """This rank's example indices for the next global micro-batch; advances the position."""
        global_batch = []
        needed = self.batch_size * self.world_size
        while len(global_batch) < needed:
            order = self._permutation(self.position.epoch)
            take = order[self.position.offset : self.position.offset + needed - len(global_batch)]
            global_batch.extend(take)
            self.position.offset += len(take)
            if self.position.offset >= self.num_examples:
                self.position = StreamPosition(self.position.epoch + 1, 0)
        start = self.rank * self.batch_size
        return global_batch[start : start + self.batch_size]

    def state_dict(self) -> dict:
        return {"epoch": self.position.epoch, "offset": self.position.offset, "num_examples": self.num_examples}

    def load_state_dict(self, state: dict) -> None:
        if state["num_examples"] != self.num_examples:
            raise ConfigError(
                f"the checkpoint was written for {state['num_examples']} training examples but the data now "
                f"has {self.num_examples}; resume with the same data settings"
            )
        self.position = StreamPosition(state["epoch"], state["offset"])

    def _permutation(self, epoch: int) -> list[int]:
        if epoch != self._order_epoch:
            self._order = epoch_permutation(self.num_examples, self.seed, epoch)
            self._order_epoch = epoch
        return self._order
