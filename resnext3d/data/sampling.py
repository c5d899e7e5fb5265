"""Training order and augmentation that depend only on (run seed, epoch, item).

`SeededSampler` yields, for each item of an epoch, its index and a seed of its own;
`SeededItems` sets the dataset's random transforms to that seed before it transforms the item.
An item is then augmented the same way whichever worker process draws it, however many workers
there are, and whether the epoch runs in a fresh process after a resume or in one that has
trained since the start: see :mod:`resnext3d.seeds`.
"""

from __future__ import annotations

from collections.abc import Iterator

from monai.transforms import Randomizable
from torch.utils.data import Dataset, DistributedSampler

from resnext3d.seeds import derive_seed


class SeededSampler(DistributedSampler):
    """A shuffling sampler whose order and per-item seeds derive from (`seed`, epoch, index).

    It is a ``DistributedSampler`` (one rank's share of the epoch), so that Lightning keeps it
    under DDP instead of wrapping it and calls its ``set_epoch`` every epoch.
    """

    def __init__(
        self,
        dataset: Dataset,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
        epoch: int = 0,
    ) -> None:
        super().__init__(dataset, num_replicas, rank, shuffle=True, seed=seed, drop_last=drop_last)
        # The epoch a resumed run starts in; Lightning sets the later ones with set_epoch.
        self.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in super().__iter__():
            yield index, derive_seed(self.seed, self.epoch, index)


class SeededItems(Dataset):
    """`dataset` indexed by the (index, seed) pairs of a :class:`SeededSampler`: each item's
    random transforms are seeded with its own seed before they run."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        transform = getattr(self.dataset, "transform", None)
        if isinstance(transform, Randomizable):
            transform.set_random_state(seed)
        return self.dataset[index]
