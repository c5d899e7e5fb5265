"""Post-processing and test-time mirroring of the segmentation task, and metrics with and
without post-processing."""

import csv
from pathlib import Path

import torch

from resnext3d import ResNeXtUNet, create_model
from resnext3d.cli import main
from resnext3d.tasks import RegionPostprocessing, VolumeSegmenter

REGIONS = ["TC", "WT", "ET"]
CONFIG = Path(__file__).parents[1] / "experiments" / "brats_seg.yaml"


def test_small_components_and_small_enhancing_predictions_are_removed():
    masks = torch.zeros(1, 3, 12, 12, 12)
    masks[0, :, 1:5, 1:5, 1:5] = 1  # 64 voxels in every region
    masks[0, :, 9, 9, 9] = 1  # a speck, away from it
    spacing = [2.0, 2.0, 2.0]  # 8 mm³ per voxel: the block is 512 mm³, the speck 8 mm³
    cleaned = RegionPostprocessing(min_component_mm3=100)(masks, REGIONS, spacing)
    assert cleaned[0, :, 9, 9, 9].sum() == 0
    assert cleaned.sum() == 3 * 64
    dropped = RegionPostprocessing(enhancing_min_mm3=600)(cleaned, REGIONS, spacing)
    assert dropped[0, 2].sum() == 0  # 512 mm³ of ET < 600: removed
    assert torch.equal(dropped[0, :2], cleaned[0, :2])  # TC and WT as they were
    kept = RegionPostprocessing(enhancing_min_mm3=500)(cleaned, REGIONS, spacing)
    assert torch.equal(kept, cleaned)


def test_mirroring_averages_the_logits_of_every_flip():
    encoder = create_model("resnext14_tiny", in_channels=4, features_only=True)
    network = ResNeXtUNet(encoder, decoder_channels=(64, 32, 16, 16, 8)).eval()
    plain = VolumeSegmenter(network, sliding_window_size=(32, 32, 32))
    mirrored = VolumeSegmenter(network, sliding_window_size=(32, 32, 32), mirror_axes=(0, 2))
    image = torch.randn(1, 4, 32, 32, 32)

    def mirrored_logits(dims: list[int]) -> torch.Tensor:
        return plain.sliding_window_logits(image.flip(dims)).flip(dims)

    with torch.no_grad():
        flips = [plain.sliding_window_logits(image), *map(mirrored_logits, ([2], [4], [2, 4]))]
        torch.testing.assert_close(mirrored.sliding_window_logits(image), sum(flips) / 4)


def test_validation_logs_each_metric_raw_and_post_processed(tiny_phantom, in_tmp_dir):
    main(
        ["validate", "--config", str(CONFIG),
         "--data.init_args.data_dir", str(tiny_phantom), "--data.init_args.num_workers", "0",
         "--model.init_args.postprocessing", "resnext3d.tasks.RegionPostprocessing",
         "--model.init_args.postprocessing.init_args.enhancing_min_mm3", "500"]
    )  # fmt: skip
    (run,) = (in_tmp_dir / "runs" / "brats_seg").iterdir()
    with (run / "metrics.csv").open() as handle:
        columns = set(next(csv.reader(handle)))
    for region in ("tc", "wt", "et", "mean"):
        assert {f"val/dice_{region}", f"val/dice_{region}_pp", f"val/hd95_{region}_pp"} <= columns
