"""The segmentation loss treats each region as its own binary problem: BraTS regions overlap."""

from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from jsonargparse import ArgumentParser
from monai.losses import DiceLoss

from resnext3d import ResNeXtUNet, create_model
from resnext3d.tasks import VolumeSegmenter

CONFIG = Path(__file__).parents[1] / "experiments" / "brats_seg.yaml"


def configured_loss() -> torch.nn.Module:
    spec = yaml.safe_load(CONFIG.read_text())["model"]["init_args"]["criterion"]
    parser = ArgumentParser()
    parser.add_argument("--criterion", type=torch.nn.Module)
    return parser.instantiate(parser.parse_object({"criterion": spec})).criterion


def test_the_experiments_loss_is_dice_plus_per_channel_binary_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, 8, generator=generator)
    targets = (torch.rand(2, 3, 8, 8, 8, generator=generator) > 0.6).float()
    targets[:, 1] = torch.maximum(targets[:, 1], targets[:, 0])  # WT holds TC: regions overlap
    expected = DiceLoss(sigmoid=True, batch=True)(logits, targets)
    expected = expected + F.binary_cross_entropy_with_logits(logits, targets)
    encoder = create_model("resnext14_tiny", in_channels=4, features_only=True)
    network = ResNeXtUNet(encoder, decoder_channels=(64, 32, 16, 16, 8))
    # The config's, and the default.
    for loss in (configured_loss(), VolumeSegmenter(network).criterion):
        torch.testing.assert_close(loss(logits, targets), expected)


def test_shifting_every_regions_logit_changes_the_loss():
    # A softmax across the regions (MONAI's DiceCELoss with several channels) cannot see a shift
    # of all of them; a per-region sigmoid must.
    loss = configured_loss()
    logits = torch.zeros(1, 3, 4, 4, 4)
    targets = torch.zeros(1, 3, 4, 4, 4)
    targets[:, :, :2] = 1
    dice_only = DiceLoss(sigmoid=True, batch=True)
    change = loss(logits + 5, targets) - loss(logits, targets)
    dice_change = dice_only(logits + 5, targets) - dice_only(logits, targets)
    assert abs(change - dice_change) > 1.0
