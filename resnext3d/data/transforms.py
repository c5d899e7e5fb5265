"""MONAI dictionary transforms that turn a case's files into a classifier's input.

An item is ``{"image": path or paths, "label": class index, "case_id": str}``. The deterministic
transforms (load, reorient, resample, crop, normalise, resize) are cached by the datasets; the
random ones (augmentation) run after the cache, on every draw.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureTyped,
    LoadImage,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Resized,
    Spacingd,
)
from monai.utils import ensure_tuple

from resnext3d.data.errors import DataError

IMAGE_KEY = "image"
LABEL_KEY = "label"
CASE_ID_KEY = "case_id"


class LoadModalitiesd(MapTransform):
    """Load a case's image file(s) as one channel-first image, channels in ``MODALITIES`` order.

    The four BraTS files become four channels; the Decathlon's 4-D file (channels last) already
    has them. Unlike ``LoadImaged``, a file whose data cannot be read, such as a truncated
    ``.nii.gz`` that header validation lets through, raises a DataError naming that file.
    """

    def __init__(self, keys: KeysCollection = IMAGE_KEY) -> None:
        super().__init__(keys)
        self._load = LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        item = dict(data)
        for key in self.key_iterator(item):
            # torch.cat keeps the first file's metadata (affine); validation checked they agree.
            item[key] = torch.cat([self._load_file(path) for path in ensure_tuple(item[key])])
        return item

    def _load_file(self, path: str | Path) -> torch.Tensor:
        try:
            return self._load(path)
        # nibabel and gzip report a damaged file as EOFError, zlib.error, OSError, ValueError, ...
        except Exception as error:
            raise DataError(f"{path}: cannot read the image data ({error})") from error


def deterministic_transforms(
    roi_size: Sequence[int], spacing: Sequence[float] = (2.0, 2.0, 2.0)
) -> Compose:
    """Load, reorient to RAS, resample to `spacing` (mm), crop to the head, normalise each
    modality over the head, and resize to `roi_size`; the label becomes a long tensor."""
    return Compose(
        [
            LoadModalitiesd(IMAGE_KEY),
            # Explicit labels: nibabel's RAS+ axes (MONAI warns that their default will change).
            Orientationd(IMAGE_KEY, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            Spacingd(IMAGE_KEY, pixdim=spacing, mode="bilinear", dtype=np.float32),
            # Skull-stripped BraTS images are exactly 0 outside the head.
            CropForegroundd(IMAGE_KEY, source_key=IMAGE_KEY),
            NormalizeIntensityd(IMAGE_KEY, nonzero=True, channel_wise=True),
            # Classification sees the whole head, so it is resized rather than cropped.
            Resized(IMAGE_KEY, spatial_size=roi_size, mode="area"),
            # Plain tensors: a classifier needs no spatial metadata, and they cache and collate
            # faster than MetaTensors.
            EnsureTyped(IMAGE_KEY, dtype=torch.float32, track_meta=False),
            EnsureTyped(LABEL_KEY, dtype=torch.long, track_meta=False),
        ]
    )


def random_transforms() -> Compose:
    """Training augmentation: flips on every axis, a small rotation and scaling, and intensity
    scale, shift and noise drawn per modality."""
    return Compose(
        [
            *(RandFlipd(IMAGE_KEY, prob=0.5, spatial_axis=axis) for axis in range(3)),
            RandAffined(
                IMAGE_KEY,
                prob=0.5,
                rotate_range=(np.pi / 12,) * 3,
                scale_range=(0.1,) * 3,
                mode="bilinear",
                padding_mode="zeros",
            ),
            RandScaleIntensityd(IMAGE_KEY, factors=0.1, prob=0.5, channel_wise=True),
            RandShiftIntensityd(IMAGE_KEY, offsets=0.1, prob=0.5, channel_wise=True),
            RandGaussianNoised(IMAGE_KEY, prob=0.2, std=0.05),
            EnsureTyped(IMAGE_KEY, dtype=torch.float32, track_meta=False),
        ]
    )


def training_transforms(
    roi_size: Sequence[int], spacing: Sequence[float] = (2.0, 2.0, 2.0)
) -> Compose:
    """The deterministic then the random transforms, flattened into one Compose: MONAI's cached
    datasets cache up to the first random transform, and a nested Compose counts as random."""
    return Compose([deterministic_transforms(roi_size, spacing), random_transforms()]).flatten()


@contextmanager
def data_errors_unwrapped():
    """Re-raise the DataError that MONAI wraps in "RuntimeError: applying transform ...", so that
    the error a user sees names the file."""
    try:
        yield
    except RuntimeError as error:
        cause = error.__cause__
        while cause is not None and not isinstance(cause, DataError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from cause.__cause__
