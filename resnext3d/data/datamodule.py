"""What the BraTS data modules share: finding the data (or the phantom), splitting it, caching the
deterministic transforms and serving the loaders. Subclasses say what an item holds and which
transforms a stage uses."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from monai.data import DataLoader, Dataset
from monai.transforms import Compose
from torch.utils.data import Sampler

from resnext3d.data.anatomical import ensure_anatomical_phantom
from resnext3d.data.cache import DiskCacheDataset, MemoryCache
from resnext3d.data.file_checks import LabelMapUse, check_files_or_raise
from resnext3d.data.layouts import MODALITIES, BratsCase, discover_cases
from resnext3d.data.phantom import Difficulty, ensure_phantom
from resnext3d.data.sampling import SeededItems, SeededSampler
from resnext3d.data.splits import Split, holdout_split, kfold_split, save_split
from resnext3d.data.transforms import data_errors_unwrapped
from resnext3d.seeds import run_seed

log = logging.getLogger(__name__)

# Relative to the working directory, i.e. the repository's git-ignored data/ when run from there;
# a hard phantom lies beside it, in data/phantom_brats_hard, and an anatomical one in
# data/phantom_brats_anatomical.
PHANTOM_DIR = Path("data/phantom_brats")
DEFAULT_CACHE_DIR = Path("data/cache")
# The phantom does not change with the split seed, so that every run reuses the one on disk.
PHANTOM_SEED = 0


class _DataErrorsNamed:
    """Mixed into the datasets that load a case when it is drawn: a DataError of the loading
    transform (a file damaged inside its stream, NaN voxels), which MONAI wraps in
    "RuntimeError: applying transform ...", leaves the item unwrapped, so that the run stops
    with the message naming the file; from a DataLoader worker too, whose exception PyTorch
    re-raises in the main process by its type."""

    def __getitem__(self, index):
        with data_errors_unwrapped():
            return super().__getitem__(index)


class _UncachedDataset(_DataErrorsNamed, Dataset):
    pass


class _DiskCache(_DataErrorsNamed, DiskCacheDataset):
    pass


class BratsDataModule(L.LightningDataModule):
    """Base of the BraTS data modules; see the subclasses for what their batches hold.

    Args:
        data_dir: a BraTS 2018-2021, BraTS 2023 or Decathlon Task01 folder. None trains on a
            synthetic phantom generated once in ./data/phantom_brats.
        roi_size: the size of the images a batch holds, in voxels.
        spacing: the voxel size images are resampled to, in mm.
        batch_size: items per batch.
        num_workers: data loading processes (and caching threads).
        val_fraction: the share of cases (of each class, where there are classes) held out for
            validation when `fold` is None.
        seed: the seed of the split.
        fold: validate on this fold of a stratified k-fold split; None for a hold-out split.
        num_folds: the number of folds when `fold` is set.
        cache: keep preprocessed cases in "memory", on "disk" under `cache_dir`, or "none".
        cache_dir: the folder of the disk cache; None for ./data/cache.
        check: how the files a stage reads are checked before it starts: "quick" reads headers
            and file sizes (seconds for thousands of files); "full" also reads every voxel, as
            ``resnext3d check-data`` does (NaN, all-zero images, damaged data, label values).
        phantom_cases: the number of phantom cases when `data_dir` is None.
        phantom_difficulty: "standard" (the grades differ clearly; a classifier reaches AUROC 1.00)
            or "hard" (subtly and overlapping) when `data_dir` is None; for the simple phantom.
        phantom_realism: "simple" (ellipsoid heads, `resnext3d.data.phantom`) or "anatomical"
            (real brain anatomy from the MNI template with gliomas grown along white matter,
            `resnext3d.data.anatomical`; needs the ``anatomy`` extra) when `data_dir` is None.
        predict_split: the cases to predict: the validation cases ("val") or all cases ("all").
    """

    def __init__(
        self,
        data_dir: str | None = None,
        roi_size: tuple[int, int, int] = (64, 64, 64),
        spacing: tuple[float, float, float] = (2.0, 2.0, 2.0),
        batch_size: int = 4,
        num_workers: int = 2,
        val_fraction: float = 0.2,
        seed: int = 0,
        fold: int | None = None,
        num_folds: int = 5,
        cache: Literal["memory", "disk", "none"] = "memory",
        cache_dir: str | None = None,
        check: Literal["quick", "full"] = "quick",
        phantom_cases: int = 100,
        phantom_difficulty: Difficulty = "standard",
        phantom_realism: Literal["simple", "anatomical"] = "simple",
        predict_split: Literal["val", "all"] = "all",
    ) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.roi_size = tuple(roi_size)
        self.spacing = tuple(spacing)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.seed = seed
        self.fold = fold
        self.num_folds = num_folds
        self.cache = cache
        self.cache_dir = cache_dir
        self.check = check
        self.phantom_cases = phantom_cases
        self.phantom_difficulty = phantom_difficulty
        if phantom_realism not in ("simple", "anatomical"):
            raise ValueError(
                f"phantom_realism must be simple or anatomical, got {phantom_realism!r}"
            )
        self.phantom_realism = phantom_realism
        self.predict_split = predict_split
        self._datasets: dict[str, Dataset] = {}
        if data_dir is None:
            log.warning(
                "\n%s\nNo data_dir given: training on a SYNTHETIC BraTS phantom "
                "(%s, %d cases in %s), not on real data.\nPoint it at real BraTS with "
                "`make train EXP=... DATA=/path/to/BraTS` or `--data.data_dir /path/to/BraTS`.\n%s",
                "=" * 80,
                "anatomical" if phantom_realism == "anatomical" else phantom_difficulty,
                phantom_cases,
                self._phantom_dir().resolve(),
                "=" * 80,
            )

    # What subclasses provide.

    def _cases(self) -> list[BratsCase]:
        """The usable cases (all by default)."""
        return self.all_cases

    def _strata(self) -> Mapping[str, str]:
        """A stratum per case id that the split keeps in proportion."""
        return {case.case_id: "all" for case in self._cases()}

    def _item(self, case: BratsCase) -> dict:
        raise NotImplementedError

    def _transforms(self, stage: Literal["train", "val", "predict"]) -> Compose:
        raise NotImplementedError

    def _label_map_use(self, stage: str) -> LabelMapUse:
        """Whether `stage` reads the cases' label maps, so that only the files it uses are
        checked (a damaged label map does not stop a classifier)."""
        return "unused"

    # Shared.

    @property
    def in_channels(self) -> int:
        """The number of image channels: one per modality."""
        return len(MODALITIES)

    @cached_property
    def all_cases(self) -> list[BratsCase]:
        # Cheap (file names only), so the CLI can read properties before training.
        return discover_cases(self._data_root())

    @cached_property
    def split(self) -> Split:
        """The training and validation case ids, stratified by `_strata`."""
        strata = self._strata()
        if self.fold is None:
            return holdout_split(strata, self.val_fraction, self.seed)
        return kfold_split(strata, self.fold, self.num_folds, self.seed)

    def prepare_data(self) -> None:
        # Lightning runs this on one process per node, before `setup` runs on every process.
        self._data_root()

    def setup(self, stage: str) -> None:
        """Check the files `stage` reads, then build the datasets it needs and save the split."""
        cases = self._cases()
        self._check_files(cases, stage)
        items = {case.case_id: self._item(case) for case in cases}
        if stage == "predict" and self.predict_split == "all":
            # No split: predicting may be given a single case folder.
            self._datasets["predict"] = self._dataset(
                [items[i] for i in sorted(items)], self._transforms("predict")
            )
            return
        split = self.split
        if stage == "fit":
            self._datasets["train"] = self._dataset(
                [items[i] for i in split.train], self._transforms("train")
            )
        if stage in ("fit", "validate", "test"):
            self._datasets["val"] = self._dataset(
                [items[i] for i in split.val], self._transforms("val")
            )
        if stage == "predict":
            self._datasets["predict"] = self._dataset(
                [items[i] for i in split.val], self._transforms("predict")
            )
        self._save_split(split)

    def _check_files(self, cases: list[BratsCase], stage: str) -> None:
        """Raise a DataError naming every file of `cases` that `stage` reads and cannot use;
        log the warnings (e.g. an all-zero modality)."""
        workers = max(2, self.num_workers)  # threads: reading is mostly decompression
        warnings = check_files_or_raise(
            cases, self._label_map_use(stage), self.check == "full", workers
        )
        for warning in warnings:
            log.warning("%s", warning)

    def train_dataloader(self) -> DataLoader:
        dataset = self._datasets["train"]
        world_size, rank = (
            (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        )
        sampler = SeededSampler(
            dataset,
            run_seed(),
            num_replicas=world_size,
            rank=rank,
            # Lightning asks for the loader once, and draws the first epoch's order before it
            # sets the epoch: the epoch a run starts or resumes in, as Lightning counts it.
            epoch=self.trainer.fit_loop.epoch_progress.current.processed if self.trainer else 0,
        )
        # A last batch of one item would break batch normalisation.
        drop_last = len(dataset) > self.batch_size
        return self._loader(SeededItems(dataset), sampler, drop_last=drop_last)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._datasets["val"])

    def test_dataloader(self) -> DataLoader:
        # BraTS has no labelled test set: testing runs on the validation cases.
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self._datasets["predict"])

    def _data_root(self) -> Path:
        if self.data_dir is not None:
            return Path(self.data_dir)
        if self.phantom_realism == "anatomical":
            return ensure_anatomical_phantom(self._phantom_dir(), self.phantom_cases, PHANTOM_SEED)
        return ensure_phantom(
            self._phantom_dir(),
            self.phantom_cases,
            PHANTOM_SEED,
            difficulty=self.phantom_difficulty,
        )

    def _phantom_dir(self) -> Path:
        """One folder per kind and difficulty, so that all can be on disk at once."""
        if self.phantom_realism == "anatomical":
            return PHANTOM_DIR.with_name(f"{PHANTOM_DIR.name}_anatomical")
        if self.phantom_difficulty == "standard":
            return PHANTOM_DIR
        return PHANTOM_DIR.with_name(f"{PHANTOM_DIR.name}_{self.phantom_difficulty}")

    def _dataset(self, items: Sequence[dict], transform: Compose) -> Dataset:
        if self.cache == "memory":
            # Every case is read now, so a damaged file fails here, named.
            return MemoryCache(items, transform, num_workers=max(1, self.num_workers))
        if self.cache == "disk":
            return _DiskCache(items, transform, self._disk_cache_dir())
        return _UncachedDataset(items, transform)

    def _disk_cache_dir(self) -> Path:
        # The cache key hashes the item's files and the preprocessing; one folder per data module
        # and setting keeps the cache browsable and lets a user delete one setting's entries.
        roi = "x".join(map(str, self.roi_size))
        spacing = "x".join(map(str, self.spacing))
        kind = type(self).__name__
        return Path(self.cache_dir or DEFAULT_CACHE_DIR) / f"{kind}_roi{roi}_spacing{spacing}"

    def _loader(
        self,
        dataset: Dataset,
        sampler: Sampler | None = None,
        drop_last: bool = False,
        batch_size: int | None = None,
    ) -> DataLoader:
        # Lightning's distributed sampler pads evaluation sets with repeated cases to divide them
        # evenly among the ranks, which would count those cases twice in the metrics.
        if sampler is None and self.trainer is not None and self.trainer.world_size > 1:
            sampler = UnrepeatedDistributedSampler(
                dataset, self.trainer.world_size, self.trainer.global_rank, shuffle=False
            )
        return DataLoader(
            dataset,
            batch_size=batch_size or self.batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def _save_split(self, split: Split) -> None:
        if self.trainer is None:
            return
        log_dir = self.trainer.log_dir  # a broadcast: every rank must ask
        if self.trainer.is_global_zero and log_dir is not None:
            save_split(split, log_dir)
