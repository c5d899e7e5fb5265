"""A classifier needs every class in training and validation; a metric a split leaves undefined
is NaN with one warning, never a number that looks like a result."""

import math
import shutil
import warnings

import pytest
import torch
from lightning import Trainer
from toy_data import ToyVolumes

import resnext3d
from resnext3d.data import BratsClassificationData, DataError
from resnext3d.tasks import VolumeClassifier


def relabelled_phantom(tiny_phantom, tmp_path, grades: list[str]):
    """The tiny phantom's eight cases with the grades given, in case order."""
    root = tmp_path / "phantom"
    shutil.copytree(tiny_phantom, root)
    rows = (root / "name_mapping.csv").read_text().splitlines()
    header, cases = rows[0], rows[1:]
    grade_column = header.split(",").index("Grade")
    relabelled = []
    for row, grade in zip(cases, grades, strict=True):
        cells = row.split(",")
        cells[grade_column] = grade
        relabelled.append(",".join(cells))
    (root / "name_mapping.csv").write_text("\n".join([header, *relabelled]) + "\n")
    return root


def test_a_single_class_is_refused_before_training(tiny_phantom, tmp_path):
    root = relabelled_phantom(tiny_phantom, tmp_path, ["HGG"] * 8)
    data = BratsClassificationData(data_dir=str(root), num_workers=0)
    with pytest.raises(DataError, match="two classes or more"):
        data.num_classes  # noqa: B018 - what the CLI reads to build the model


def test_a_class_absent_from_validation_is_refused_before_training(tiny_phantom, tmp_path):
    root = relabelled_phantom(tiny_phantom, tmp_path, ["LGG"] + ["HGG"] * 7)
    data = BratsClassificationData(data_dir=str(root), num_workers=0, roi_size=(32, 32, 32))
    assert data.num_classes == 2
    with pytest.raises(DataError, match="class LGG has no case among the 1 validation cases"):
        data.setup("fit")


class OneClassValidation(ToyVolumes):
    def val_dataloader(self):
        loader = super().val_dataloader()
        items = [item for item in loader.dataset if item["label"] == 1]
        return torch.utils.data.DataLoader(items, batch_size=self.batch_size)


def test_macro_metrics_without_a_class_are_nan_with_one_warning(tmp_path):
    network = resnext3d.create_model("resnext14_tiny", in_channels=4, num_classes=2)
    model = VolumeClassifier(network, class_names=["LGG", "HGG"])
    trainer = Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (metrics,) = trainer.validate(model, datamodule=OneClassValidation())
    for name in ("val/auroc", "val/balanced_acc", "val/f1"):
        assert math.isnan(metrics[name]), name
    assert not math.isnan(metrics["val/acc"])  # defined whatever the classes
    undefined = [w for w in caught if "undefined and logged as NaN" in str(w.message)]
    assert len(undefined) == 1
    assert "no case of class LGG" in str(undefined[0].message)
