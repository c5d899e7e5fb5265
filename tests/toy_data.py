"""A tiny in-memory data module with the interface of the BraTS ones, for testing tasks and the
CLI apart from file reading: two classes that differ in mean intensity, in 16³ volumes (what a
fit costs here is Lightning's and the CLI's, not the network's)."""

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

# The smallest preset as a CLI network spec.
TINY_RESNEXT = {"class_path": "resnext3d.ResNeXt", "init_args": {"preset": "resnext14_tiny"}}


class ToyVolumes(L.LightningDataModule):
    """`nan_case`: the index of a training case with one NaN voxel (validation stays clean)."""

    def __init__(
        self,
        size: int = 16,
        cases: int = 8,
        batch_size: int = 2,
        shuffle: bool = True,
        nan_case: int | None = None,
    ) -> None:
        super().__init__()
        self.size, self.cases, self.batch_size, self.shuffle = size, cases, batch_size, shuffle
        self.nan_case = nan_case
        self.num_classes, self.in_channels, self.class_names = 2, 4, ["LGG", "HGG"]

    def _items(self) -> list[dict]:
        generator = torch.Generator().manual_seed(0)
        return [
            {
                "image": torch.randn(4, *(3 * [self.size]), generator=generator) + i % 2,
                "label": i % 2,
                "case_id": f"case{i:02d}",
            }
            for i in range(self.cases)
        ]

    def train_dataloader(self) -> DataLoader:
        items = self._items()
        if self.nan_case is not None:
            items[self.nan_case]["image"][1, 0, 0, 0] = float("nan")
        # Lightning shuffles training data under DDP unless given its own distributed sampler;
        # an unshuffled one gives two ranks of batch b the global batches of one rank of 2b.
        sampler = None
        if torch.distributed.is_initialized() and not self.shuffle:
            sampler = DistributedSampler(items, shuffle=False)
        shuffle = self.shuffle if sampler is None else None
        return DataLoader(
            items, batch_size=self.batch_size, shuffle=shuffle, sampler=sampler, drop_last=True
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._items(), batch_size=self.batch_size)

    test_dataloader = predict_dataloader = val_dataloader
