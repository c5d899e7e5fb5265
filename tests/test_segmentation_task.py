"""The segmentation task through the CLI on a tiny phantom: metrics, figures and NIfTI masks that
lie on their input's grid."""

import csv
from pathlib import Path

import lightning as L
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.networks.nets import BasicUNet

import resnext3d
from resnext3d.cli import main
from resnext3d.data import BratsSegmentationData, generate_phantom
from resnext3d.data.errors import DataError
from resnext3d.evaluation.evaluate import evaluate_main
from resnext3d.tasks import VolumeSegmenter
from resnext3d.training.visualize import orthogonal_slices, tumour_centre

CONFIG = Path(__file__).parents[1] / "experiments" / "brats_seg.yaml"
SMALL = [
    "--data.init_args.roi_size", "[32, 32, 32]",
    "--data.init_args.batch_size", "2",
    "--data.init_args.num_workers", "0",
    "--model.init_args.sliding_window_size", "[32, 32, 32]",
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "2",
    "--trainer.check_val_every_n_epoch", "1",
]  # fmt: skip


@pytest.mark.slow  # a fit or a full-size network: seconds each, run by make test-slow
def test_fit_logs_region_metrics_and_saves_a_figure(tiny_phantom, in_tmp_dir):
    main(["fit", "--config", str(CONFIG), "--data.init_args.data_dir", str(tiny_phantom), *SMALL,
          "--monitor", "val/lesion_dice_mean"])  # fmt: skip
    (run,) = (in_tmp_dir / "runs" / "brats_seg").iterdir()
    with (run / "metrics.csv").open() as handle:
        columns = set(next(csv.reader(handle)))
    for region in ("tc", "wt", "et", "mean"):
        assert {f"val/dice_{region}", f"val/hd95_{region}"} <= columns
        assert {f"val/lesion_dice_{region}", f"val/lesion_hd95_{region}"} <= columns
    assert (run / "figures" / "val_epoch000.png").stat().st_size > 10_000
    # The challenge's ranking metric chosen as the checkpoints' monitor.
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    (state,) = [s for k, s in last["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert state["monitor"] == "val/lesion_dice_mean"
    assert state["best_model_score"] is not None


def test_predict_writes_masks_on_the_input_grid_in_release_values(tiny_phantom, in_tmp_dir):
    main(
        ["predict", "--config", str(CONFIG), "--data.init_args.data_dir", str(tiny_phantom), *SMALL]
    )
    (run,) = (in_tmp_dir / "runs" / "brats_seg").iterdir()
    masks = sorted((run / "predictions").glob("*_seg.nii.gz"))
    assert [m.name for m in masks] == [f"BraTS2021_{i:05d}_seg.nii.gz" for i in range(8)]
    for mask_path in masks:
        case_id = mask_path.name.removesuffix("_seg.nii.gz")
        reference = nib.load(tiny_phantom / case_id / f"{case_id}_flair.nii.gz")
        mask = nib.load(mask_path)
        assert mask.shape == reference.shape
        np.testing.assert_allclose(mask.affine, reference.affine, atol=1e-4)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2, 4}


def test_deep_supervision_trains_on_every_head():
    encoder = resnext3d.create_model("resnext14_tiny", in_channels=4, features_only=True)
    network = resnext3d.ResNeXtUNet(
        encoder, decoder_channels=(64, 32, 16, 16, 8), deep_supervision=True
    )
    task = VolumeSegmenter(network)
    batch = {
        "image": torch.randn(2, 4, 32, 32, 32),
        "label": (torch.rand(2, 3, 32, 32, 32) > 0.7).float(),
    }
    loss = task.training_step(batch, 0)
    loss.backward()
    assert all(head.weight.grad is not None for head in task.network.supervision_heads)


def test_a_monai_network_that_does_not_say_its_dimensions_trains_and_predicts(
    tiny_phantom, tmp_path
):
    """MONAI's BasicUNet has no ``spatial_dims`` (nor ``out_channels``): the memory format comes
    from the input, the regions from the class names."""
    network = BasicUNet(spatial_dims=3, in_channels=4, out_channels=3, features=(4, 4, 8, 8, 16, 4))
    assert not hasattr(network, "spatial_dims")
    task = VolumeSegmenter(
        network,
        class_names=["TC", "WT", "ET"],
        sliding_window_size=(32, 32, 32),
        channels_last=True,
    )
    data = BratsSegmentationData(
        data_dir=str(tiny_phantom), roi_size=(32, 32, 32), batch_size=1, num_workers=0
    )
    trainer = L.Trainer(
        fast_dev_run=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(task, data)
    assert task.memory_format == torch.channels_last_3d
    assert network.conv_0.conv_0.conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    trainer.predict(task, data)
    (written,) = (tmp_path / "predictions").iterdir()
    assert written.name == "BraTS2021_00000_seg.nii.gz"
    image = nib.load(tiny_phantom / "BraTS2021_00000" / "BraTS2021_00000_flair.nii.gz")
    assert nib.load(written).shape == image.shape


def test_figure_slices_pass_through_the_tumour():
    masks = torch.zeros(3, 20, 30, 40)
    masks[1, 4:9, 10:15, 30:35] = 1
    centre = tumour_centre(masks)
    assert centre == (6, 12, 32)
    axial, coronal, sagittal = orthogonal_slices(masks[1], centre)
    assert axial.shape == (30, 20) and coronal.shape == (40, 20) and sagittal.shape == (40, 30)
    assert axial.sum() == coronal.sum() == sagittal.sum() == 25


@pytest.mark.slow  # a fit, a prediction and an evaluation
def test_validation_scores_what_predict_writes_as_evaluate_scores_it(tmp_path, in_tmp_dir):
    """On a grid unlike the network's (flipped, anisotropic voxels), validation's per-case scores
    are those of `resnext3d evaluate` on the label maps that predict writes."""
    data = generate_phantom(tmp_path / "data", cases=6, shape=(40, 36, 24), spacing=(1.2, 1.0, 1.5))
    # An untrained network near 0.5 everywhere: a threshold a little lower gives masks of many
    # components, from which the lesion-wise scores have something to tell apart.
    options = [*SMALL, "--data.init_args.data_dir", str(data), "--data.init_args.val_fraction",
               "0.5", "--model.init_args.threshold", "0.49"]  # fmt: skip
    main(["fit", "--config", str(CONFIG), *options])
    (run,) = (in_tmp_dir / "runs" / "brats_seg").iterdir()
    main(["validate", "--run", str(run), *options])
    main(["predict", "--run", str(run), *options, "--data.init_args.predict_split", "val"])
    validation, prediction = (
        next((in_tmp_dir / "runs" / "brats_seg").glob(f"*/{name}"))
        for name in ("scores/val_cases.csv", "predictions")
    )
    scores = in_tmp_dir / "evaluated.csv"
    assert evaluate_main([str(prediction), str(data), "--allow-missing", "--out", str(scores)]) == 0

    def rows(path):
        with path.open() as handle:
            return {row.pop("case_id"): row for row in csv.DictReader(handle)}

    validated, evaluated = rows(validation), rows(scores)
    assert len(validated) == 3
    assert any(0 < float(row["dice_wt"]) < 1 for row in validated.values())  # not trivial
    for case_id, row in validated.items():
        assert evaluated[case_id]["prediction"] == f"{case_id}_seg.nii.gz"
        for column, value in row.items():
            assert float(evaluated[case_id][column]) == pytest.approx(float(value)), column
    with (validation.parents[1] / "metrics.csv").open() as handle:
        (logged,) = list(csv.DictReader(handle))
    mean = np.mean([float(row["lesion_dice_wt"]) for row in validated.values()])
    assert float(logged["val/lesion_dice_wt"]) == pytest.approx(mean, rel=1e-5)


def test_a_label_file_unreadable_at_validation_is_named(tmp_path):
    """Scoring on the files' grid reads each case's label file again: one damaged since the data
    check is a DataError naming it, not a traceback from nibabel."""
    broken = tmp_path / "case_seg.nii.gz"
    broken.write_bytes(b"\x1f\x8b not a complete gzip stream")
    encoder = resnext3d.create_model("resnext14_tiny", in_channels=4, features_only=True)
    task = VolumeSegmenter(resnext3d.ResNeXtUNet(encoder))
    meta = {"original_affine": torch.eye(4, dtype=torch.float64), "spatial_shape": (8, 8, 8)}
    image = MetaTensor(torch.zeros(4, 8, 8, 8), affine=torch.eye(4), meta=meta)
    with pytest.raises(DataError, match="case_seg.nii.gz: cannot read"):
        task._score_on_file_grid(
            "val", "case", torch.rand(3, 8, 8, 8), image, "brats2021", str(broken)
        )
