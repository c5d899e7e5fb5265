"""MONAI dictionary transforms that turn a case's files into a network's input.

A classification item is ``{"image": path or paths, "label": class index, "case_id": str}``; a
segmentation item has the label map's path as ``"label"``. The deterministic transforms (load,
reorient, resample, crop, normalise, and resize for classification) are cached by the datasets;
the random ones (crops, augmentation) run after the cache, on every draw.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureTyped,
    LoadImage,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Resized,
    Spacingd,
    SpatialPadd,
    SpatialResample,
)
from monai.utils import ensure_tuple

from resnext3d.data.errors import DataError
from resnext3d.data.regions import ConvertToBratsRegionsd
from resnext3d.data.releases import Release

IMAGE_KEY = "image"
LABEL_KEY = "label"
CASE_ID_KEY = "case_id"
RELEASE_KEY = "release"
# nibabel's RAS+ axes, explicitly: MONAI warns that Orientation's default labels will change.
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


class LoadModalitiesd(MapTransform):
    """Load a case's image file(s) as one channel-first image, channels in ``MODALITIES`` order.

    The four BraTS files become four channels; the Decathlon's 4-D file (channels last) already
    has them. Unlike ``LoadImaged``, a file whose data cannot be read, such as a ``.nii.gz``
    damaged inside its stream, or that holds NaN or infinite voxels, and a case whose images are
    all zero, raise a DataError naming the file or the case: the quick check before training
    reads headers only, and these would otherwise fail later without a name, or not at all.
    """

    def __init__(self, keys: KeysCollection = IMAGE_KEY) -> None:
        super().__init__(keys)
        self._load = LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        item = dict(data)
        for key in self.key_iterator(item):
            paths = ensure_tuple(item[key])
            # torch.cat keeps the first file's metadata (affine); validation checked they agree.
            item[key] = torch.cat([self._load_file(path) for path in paths])
            if key != LABEL_KEY and not item[key].any():
                raise DataError(f"{Path(paths[0]).parent}: every modality is all zero")
        return item

    def _load_file(self, path: str | Path) -> torch.Tensor:
        try:
            image = self._load(path)
        # nibabel and gzip report a damaged file as EOFError, zlib.error, OSError, ValueError, ...
        except Exception as error:
            raise DataError(f"{path}: cannot read the image data ({error})") from error
        if not torch.isfinite(image).all():
            raise DataError(f"{path}: NaN or infinite voxels (resnext3d check-data counts them)")
        return image


def deterministic_transforms(
    roi_size: Sequence[int], spacing: Sequence[float] = (2.0, 2.0, 2.0)
) -> Compose:
    """Load, reorient to RAS, resample to `spacing` (mm), crop to the head, normalise each
    modality over the head, and resize to `roi_size`; the label becomes a long tensor."""
    return Compose(
        [
            LoadModalitiesd(IMAGE_KEY),
            Orientationd(IMAGE_KEY, axcodes="RAS", labels=RAS_LABELS),
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


def random_transforms(spatial_keys: Sequence[str] = (IMAGE_KEY,)) -> Compose:
    """Training augmentation: flips on every axis and a small rotation and scaling of
    `spatial_keys`, and intensity scale, shift and noise drawn per modality."""
    return Compose(
        [
            *(RandFlipd(spatial_keys, prob=0.5, spatial_axis=axis) for axis in range(3)),
            RandAffined(
                spatial_keys,
                prob=0.5,
                rotate_range=(np.pi / 12,) * 3,
                scale_range=(0.1,) * 3,
                mode=["bilinear" if key == IMAGE_KEY else "nearest" for key in spatial_keys],
                padding_mode="zeros",
            ),
            RandScaleIntensityd(IMAGE_KEY, factors=0.1, prob=0.5, channel_wise=True),
            RandShiftIntensityd(IMAGE_KEY, offsets=0.1, prob=0.5, channel_wise=True),
            RandGaussianNoised(IMAGE_KEY, prob=0.2, std=0.05),
            EnsureTyped(spatial_keys, dtype=torch.float32, track_meta=False),
        ]
    )


def training_transforms(
    roi_size: Sequence[int], spacing: Sequence[float] = (2.0, 2.0, 2.0)
) -> Compose:
    """The deterministic then the random transforms, flattened into one Compose: MONAI's cached
    datasets cache up to the first random transform, and a nested Compose counts as random."""
    return Compose([deterministic_transforms(roi_size, spacing), random_transforms()]).flatten()


def segmentation_transforms(
    stage: str,
    release: Release,
    roi_size: Sequence[int],
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    samples_per_case: int = 2,
) -> Compose:
    """Load, reorient to RAS, resample, convert the label map to TC/WT/ET masks, crop to the head
    and normalise; for "train", then draw `samples_per_case` crops of `roi_size` centred on tumour
    or background equally often, and augment. "predict" loads no label and keeps the image's
    metadata, so that predictions can be resampled onto its files' grid (`to_file_grid`)."""
    keys = [IMAGE_KEY] if stage == "predict" else [IMAGE_KEY, LABEL_KEY]
    interpolation = ["bilinear", "nearest"][: len(keys)]
    deterministic = [
        LoadModalitiesd(keys),
        Orientationd(keys, axcodes="RAS", labels=RAS_LABELS),
        Spacingd(keys, pixdim=spacing, mode=interpolation, dtype=np.float32),
        *([] if stage == "predict" else [ConvertToBratsRegionsd(LABEL_KEY, release)]),
        CropForegroundd(keys, source_key=IMAGE_KEY, start_coord_key=None, end_coord_key=None),
        NormalizeIntensityd(IMAGE_KEY, nonzero=True, channel_wise=True),
    ]
    if stage != "train":
        return Compose(deterministic)
    crops = [
        SpatialPadd(keys, spatial_size=roi_size),
        RandCropByPosNegLabeld(
            keys,
            label_key=LABEL_KEY,
            spatial_size=roi_size,
            pos=1,
            neg=1,
            num_samples=samples_per_case,
            image_key=IMAGE_KEY,
            image_threshold=0,
        ),
    ]
    return Compose([*deterministic, *crops, *random_transforms(keys).transforms])


def to_file_grid(volume: MetaTensor) -> MetaTensor:
    """`volume` (channels, *spatial), derived from an image that :class:`LoadModalitiesd`
    loaded, resampled (bilinear) onto the grid of the image's files: the inverse of
    reorientation, resampling and cropping at once, from the affines alone. Unlike MONAI's
    ``Invertd`` it needs neither the transforms that were applied nor their record, so it maps
    back a volume read from a cache that another process wrote."""
    shape = [int(size) for size in volume.meta["spatial_shape"]][: volume.ndim - 1]
    resample = SpatialResample(mode="bilinear", padding_mode="zeros", dtype=torch.float32)
    return resample(volume, dst_affine=volume.meta["original_affine"], spatial_size=shape)


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
