"""BratsClassificationData on a tiny phantom: batches, properties, split file and errors."""

import json
import logging

import pytest
import torch
from lightning import Trainer

from resnext3d.data import BratsClassificationData, DataError, generate_phantom
from resnext3d.data.datamodule import PHANTOM_DIR

CASES = 8  # the session's tiny_phantom (tests/conftest.py)


def data_module(tiny_phantom, **overrides):
    settings = {"roi_size": (32, 32, 32), "batch_size": 2, "num_workers": 0, **overrides}
    return BratsClassificationData(data_dir=str(tiny_phantom), **settings)


def test_properties_are_known_before_setup(tiny_phantom):
    data = data_module(tiny_phantom)
    assert data.class_names == ["LGG", "HGG"]
    assert data.num_classes == 2
    assert data.in_channels == 4


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_batches_have_the_promised_shapes_and_labels(tiny_phantom, tmp_path, cache):
    data = data_module(tiny_phantom, cache=cache, cache_dir=str(tmp_path / "cache"))
    data.setup("fit")
    train_batches = list(data.train_dataloader())
    val_batches = list(data.val_dataloader())

    for batch in train_batches + val_batches:
        assert batch["image"].shape == (2, 4, 32, 32, 32)
        assert batch["image"].dtype == torch.float32
        assert torch.isfinite(batch["image"]).all()
        assert batch["label"].shape == (2,)
        assert batch["label"].dtype == torch.long
        # Even phantom indices are HGG, class 1.
        expected = [1 - int(case_id[-1]) % 2 for case_id in batch["case_id"]]
        assert batch["label"].tolist() == expected
    train_ids = [case_id for batch in train_batches for case_id in batch["case_id"]]
    val_ids = [case_id for batch in val_batches for case_id in batch["case_id"]]
    assert sorted(train_ids) == list(data.split.train)
    assert sorted(val_ids) == list(data.split.val)
    if cache == "disk":
        assert len(list((tmp_path / "cache").rglob("*.pt"))) == CASES


def test_validation_images_are_deterministic_and_training_ones_augmented(tiny_phantom):
    data = data_module(tiny_phantom, batch_size=1)
    data.setup("fit")
    val = data.val_dataloader().dataset
    assert torch.equal(val[0]["image"], val[0]["image"])
    # The training loader draws (index, seed) pairs: an item's augmentation is its seed's.
    train = data.train_dataloader().dataset
    augmented = train[(0, 1)]["image"]
    assert torch.equal(augmented, train[(0, 1)]["image"])
    assert not all(torch.equal(augmented, train[(0, seed)]["image"]) for seed in (2, 3, 4))


def test_fold_and_predict_split(tiny_phantom):
    data = data_module(tiny_phantom, fold=1, num_folds=4, predict_split="val")
    assert len(data.split.val) == CASES // 4
    data.setup("predict")
    predicted = [case_id for batch in data.predict_dataloader() for case_id in batch["case_id"]]
    assert predicted == list(data.split.val)

    everything = data_module(tiny_phantom, cache="none")
    everything.setup("predict")
    assert len(everything.predict_dataloader().dataset) == CASES


def test_setup_saves_the_split_in_the_run_folder(tiny_phantom, tmp_path):
    data = data_module(tiny_phantom, seed=3, cache="none")
    data.trainer = Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    data.setup("validate")
    saved = json.loads((tmp_path / "split.json").read_text())
    assert saved["seed"] == 3
    assert saved["val"] == list(data.split.val)
    assert saved["train"] == list(data.split.train)


def test_truncated_file_fails_setup_naming_it(tiny_phantom, tmp_path):
    broken = generate_phantom(tmp_path / "phantom", cases=4, shape=(32, 32, 24))
    path = broken / "BraTS2021_00001" / "BraTS2021_00001_t2.nii.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    data = data_module(broken, val_fraction=0.5)
    with pytest.raises(DataError, match=r"BraTS2021_00001_t2\.nii\.gz: truncated or damaged"):
        data.setup("fit")


def test_labels_that_miss_a_case_fail_naming_it(tiny_phantom, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("id,y\n" + "".join(f"BraTS2021_{i:05d},{i % 3}\n" for i in range(1, CASES)))
    data = data_module(tiny_phantom, labels=str(labels), id_column="id", label_column="y")
    with pytest.raises(DataError, match="case BraTS2021_00000 has no label"):
        _ = data.class_names
    data = data_module(
        tiny_phantom, labels=str(labels), id_column="id", label_column="y", drop_unlabelled=True
    )
    assert data.class_names == ["0", "1", "2"]


def test_without_data_dir_it_warns_and_generates_the_phantom(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING):
        data = BratsClassificationData(phantom_cases=4)
    assert "SYNTHETIC BraTS phantom" in caplog.text
    assert "--data.data_dir" in caplog.text
    assert not (tmp_path / PHANTOM_DIR).exists()  # nothing is written until it is needed
    assert data.num_classes == 2
    assert len(list((tmp_path / PHANTOM_DIR).glob("BraTS2021_*"))) == 4
