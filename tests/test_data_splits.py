"""Stratified hold-out and k-fold splits: deterministic per seed, and saved with the run."""

import json
from collections import Counter

import pytest

from resnext3d.data import DataError, holdout_split, kfold_split, load_split, save_split

# 30 HGG, 12 LGG and 10 "other" cases, ids not in class order.
LABELS = {
    f"case_{index:03d}": ("HGG", "LGG", "HGG", "other", "HGG")[index % 5] for index in range(50)
} | {"case_050": "LGG", "case_051": "LGG"}


def class_counts(case_ids):
    return Counter(LABELS[case_id] for case_id in case_ids)


def test_holdout_is_deterministic_per_seed():
    split = holdout_split(LABELS, val_fraction=0.2, seed=0)
    assert split == holdout_split(dict(reversed(LABELS.items())), val_fraction=0.2, seed=0)
    assert split.val != holdout_split(LABELS, val_fraction=0.2, seed=1).val


def test_holdout_is_stratified_and_covers_every_case():
    split = holdout_split(LABELS, val_fraction=0.2, seed=3)
    assert set(split.train).isdisjoint(split.val)
    assert sorted(split.train + split.val) == sorted(LABELS)
    for name, total in class_counts(LABELS).items():
        assert abs(class_counts(split.val)[name] - 0.2 * total) <= 1, name


def test_kfold_folds_are_disjoint_covering_and_stratified():
    folds = [kfold_split(LABELS, fold, num_folds=5, seed=0) for fold in range(5)]
    val_ids = [case_id for split in folds for case_id in split.val]
    assert sorted(val_ids) == sorted(LABELS)  # each case validates exactly once
    for split in folds:
        assert set(split.train).isdisjoint(split.val)
        assert len(split.train) + len(split.val) == len(LABELS)
    for name, total in class_counts(LABELS).items():
        per_fold = [class_counts(split.val)[name] for split in folds]
        assert max(per_fold) - min(per_fold) <= 1, name
        assert sum(per_fold) == total
    sizes = [len(split.val) for split in folds]
    assert max(sizes) - min(sizes) <= 1
    assert kfold_split(dict(reversed(LABELS.items())), 2, 5, seed=0) == folds[2]
    assert kfold_split(LABELS, 2, 5, seed=1).val != folds[2].val


def test_kfold_takes_a_class_smaller_than_the_number_of_folds():
    labels = {f"hgg_{index}": "HGG" for index in range(12)} | {"lgg_0": "LGG", "lgg_1": "LGG"}
    folds = [kfold_split(labels, fold, num_folds=5, seed=0) for fold in range(5)]
    assert sorted(case_id for split in folds for case_id in split.val) == sorted(labels)
    assert [sum(case_id.startswith("lgg") for case_id in split.val) for split in folds].count(
        1
    ) == 2
    sizes = [len(split.val) for split in folds]
    assert max(sizes) - min(sizes) <= 1


def test_split_round_trips_through_json(tmp_path):
    split = kfold_split(LABELS, fold=1, num_folds=4, seed=7)
    path = save_split(split, tmp_path / "run")
    assert path == tmp_path / "run" / "split.json"
    saved = json.loads(path.read_text())
    assert saved["seed"] == 7
    assert saved["fold"] == 1
    assert saved["train"] == list(split.train)
    assert saved["val"] == list(split.val)
    assert load_split(path) == split
    assert load_split(tmp_path / "run") == split


def test_invalid_splits_are_refused():
    with pytest.raises(ValueError, match="val_fraction"):
        holdout_split(LABELS, val_fraction=1.0, seed=0)
    with pytest.raises(ValueError, match="fold"):
        kfold_split(LABELS, fold=5, num_folds=5, seed=0)
    with pytest.raises(DataError, match="leaves no validation case"):
        holdout_split({"a": "HGG", "b": "LGG"}, val_fraction=0.2, seed=0)
