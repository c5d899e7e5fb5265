"""Deterministic, stratified train/validation splits of labelled cases, saved with each run."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from resnext3d.data.errors import DataError

SPLIT_FILE = "split.json"


@dataclass(frozen=True)
class Split:
    """Which cases train and which validate, and how that was decided.

    Attributes:
        seed: the seed of the shuffle within each class.
        fold: the validation fold of a k-fold split, or None for a hold-out split.
        num_folds: the number of folds of a k-fold split, or None.
        val_fraction: the validation share of a hold-out split, or None.
        train: the training case ids, sorted.
        val: the validation case ids, sorted.
    """

    seed: int
    fold: int | None
    num_folds: int | None
    val_fraction: float | None
    train: tuple[str, ...]
    val: tuple[str, ...]


def holdout_split(labels: Mapping[str, str], val_fraction: float, seed: int) -> Split:
    """Hold out `val_fraction` of each class (rounded) for validation."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    # Not MONAI's partition_dataset_classes: it rounds halves up and shuffles with another
    # generator, so every run's validation cases would change, and k-fold cannot use it (below).
    val = [
        case_id
        for case_ids in _shuffled_by_class(labels, seed)
        for case_id in case_ids[: round(val_fraction * len(case_ids))]
    ]
    return _split(labels, val, seed=seed, fold=None, num_folds=None, val_fraction=val_fraction)


def kfold_split(labels: Mapping[str, str], fold: int, num_folds: int, seed: int) -> Split:
    """Validate on fold `fold` of `num_folds` folds, each with a near-equal share of every class."""
    if not 0 <= fold < num_folds:
        raise ValueError(f"fold must lie in [0, {num_folds}), got {fold}")
    # Deal the cases to the folds in turn, class after class: fold sizes, and each class's count
    # per fold, then differ by at most one. MONAI's partition_dataset_classes starts every class at
    # fold 0, so the first folds gather the remainders, and refuses a class smaller than num_folds.
    dealt = [case_id for case_ids in _shuffled_by_class(labels, seed) for case_id in case_ids]
    val = dealt[fold::num_folds]
    return _split(labels, val, seed=seed, fold=fold, num_folds=num_folds, val_fraction=None)


def save_split(split: Split, run_dir: str | Path) -> Path:
    """Write `split` to ``run_dir/split.json`` and return that path."""
    path = Path(run_dir) / SPLIT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(split), indent=2) + "\n")
    return path


def load_split(path: str | Path) -> Split:
    """Read a split written by `save_split`, given its file or its run folder."""
    path = Path(path)
    if path.is_dir():
        path = path / SPLIT_FILE
    fields = json.loads(path.read_text())
    return Split(**{**fields, "train": tuple(fields["train"]), "val": tuple(fields["val"])})


def _shuffled_by_class(labels: Mapping[str, str], seed: int) -> list[list[str]]:
    # Sorting first makes the shuffle independent of the order the labels were read in.
    by_class = defaultdict(list)
    for case_id in sorted(labels):
        by_class[labels[case_id]].append(case_id)
    rng = np.random.default_rng(seed)
    return [
        [by_class[name][i] for i in rng.permutation(len(by_class[name]))]
        for name in sorted(by_class)
    ]


def _split(labels: Mapping[str, str], val: list[str], **how) -> Split:
    val_ids = set(val)
    train = tuple(sorted(case_id for case_id in labels if case_id not in val_ids))
    if not train or not val_ids:
        raise DataError(
            f"splitting {len(labels)} cases ({how}) leaves no "
            f"{'training' if not train else 'validation'} case; use more cases or another split"
        )
    return Split(train=train, val=tuple(sorted(val_ids)), **how)
