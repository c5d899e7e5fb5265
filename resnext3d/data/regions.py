"""BraTS label maps as the three nested tumour regions a segmentation network predicts, and back.

Region channels, in this order: TC (tumour core), WT (whole tumour), ET (enhancing tumour), with
ET ⊆ TC ⊆ WT. Every release labels the same three tissues, with its own values
(:mod:`resnext3d.data.releases`).

TC = core ∪ enhancing, WT = core ∪ edema ∪ enhancing, ET = enhancing. The functions take NumPy
arrays or torch tensors (MetaTensors keep their metadata) and return the same type.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import DtypeLike, KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses, MapLabelValue, MapTransform
from monai.utils import (
    PostFix,
    TransformBackends,
    convert_to_dst_type,
    convert_to_tensor,
    look_up_option,
)

from resnext3d.data.errors import DataError
from resnext3d.data.releases import RELEASES, Release, TumourLabels

REGIONS = ("TC", "WT", "ET")


def tumour_labels(release: Release) -> TumourLabels:
    """The release's label values; an unknown release is a ValueError naming the known ones."""
    return look_up_option(release, RELEASES).labels


def labels_to_regions(
    label_map: NdarrayOrTensor,
    release: Release,
    filename: str | None = None,
    dtype: DtypeLike | torch.dtype = torch.float32,
) -> NdarrayOrTensor:
    """The ``(3, *spatial)`` TC, WT, ET masks of a label map, as 0/1 of ``dtype``.

    Args:
        label_map: ``(1, *spatial)``, channel-first as MONAI loads it, or ``(*spatial)``.
        release: whose label values the map uses (see the module docstring).
        filename: the label map's file, named in the error for unknown label values.
        dtype: of the masks; ``torch.uint8`` caches in a quarter of float32's memory.

    Raises:
        DataError: the map holds values that are not the release's labels.
    """
    labels = tumour_labels(release)
    tensor = convert_to_tensor(label_map, track_meta=False)
    if tensor.ndim > 0 and tensor.shape[0] == 1:
        tensor = tensor[0]
    check_label_values(tensor, release, filename)
    # MONAI's converter reads BraTS 2018-2021 values only: its `et_label` for 2023 came with
    # MONAI 1.6, and the Decathlon swaps core and edema. So every map is translated first.
    as_brats2021 = MapLabelValue(labels.values, tumour_labels("brats2021").values, torch.uint8)
    regions = ConvertToMultiChannelBasedOnBratsClasses()(as_brats2021(tensor))
    return convert_to_dst_type(regions, dst=label_map, dtype=dtype)[0]


def regions_to_labels(
    regions: NdarrayOrTensor, release: Release, threshold: float = 0.5
) -> NdarrayOrTensor:
    """A ``(1, *spatial)`` uint8 label map in the release's values from TC, WT, ET channels.

    ``regions`` are ``(3, *spatial)`` probabilities or 0/1 masks; a voxel is in a region where
    its channel is ``>= threshold``. The regions are read as nested even where a prediction is
    not: a voxel is background unless in WT; inside WT it is edema unless in TC; inside TC it is
    core unless in ET, then enhancing.
    """
    labels = tumour_labels(release)
    tensor = convert_to_tensor(regions, track_meta=False)
    if tensor.ndim < 2 or tensor.shape[0] != len(REGIONS):
        raise ValueError(
            f"regions must be channel-first with {len(REGIONS)} channels {REGIONS}, "
            f"got shape {tuple(tensor.shape)}"
        )
    core, whole, enhancing = (tensor >= threshold).unbind(0)
    in_core = whole & core
    in_enhancing = in_core & enhancing
    label_map = torch.zeros_like(whole, dtype=torch.uint8)
    label_map[whole] = labels.edema
    label_map[in_core] = labels.core
    label_map[in_enhancing] = labels.enhancing
    return convert_to_dst_type(label_map[None], dst=regions, dtype=torch.uint8)[0]


def check_label_values(
    label_map: NdarrayOrTensor, release: Release, filename: str | None = None
) -> None:
    """Raise a DataError, naming ``filename`` where known, if the map holds values other than
    the release's labels (e.g. a 3 in a BraTS 2021 map, or fractions from linear resampling)."""
    labels = tumour_labels(release)
    tensor = convert_to_tensor(label_map, track_meta=False)
    known = torch.isin(tensor, tensor.new_tensor(labels.values))
    if known.all():
        return
    unknown = torch.unique(tensor[~known]).tolist()
    present = set(torch.unique(tensor).tolist())
    other_releases = [
        name for name, other in RELEASES.items() if present <= set(other.labels.values)
    ]
    hint = f"; its values fit {', '.join(other_releases)}" if other_releases else ""
    source = f"{filename}: " if filename else ""
    raise DataError(
        f"{source}label values {unknown} are not {release} labels {list(labels.values)}{hint}"
    )


class ConvertToBratsRegionsd(MapTransform):
    """Replace label maps with their TC, WT, ET masks (:func:`labels_to_regions`); the error for
    unknown label values names the file the map was loaded from (MONAI's
    ``ConvertToMultiChannelBasedOnBratsClassesd`` counts them as background)."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        keys: KeysCollection,
        release: Release,
        dtype: DtypeLike | torch.dtype = torch.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        tumour_labels(release)  # an unknown release fails here, not mid-epoch
        self.release = release
        self.dtype = dtype

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        item = dict(data)
        for key in self.key_iterator(item):
            item[key] = labels_to_regions(
                item[key], self.release, filename=_source_filename(item, key), dtype=self.dtype
            )
        return item


class ConvertBratsRegionsToLabelsd(MapTransform):
    """Replace TC, WT, ET probabilities or masks with a label map in the release's values
    (:func:`regions_to_labels`), e.g. before ``SaveImaged`` writes predictions."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        keys: KeysCollection,
        release: Release,
        threshold: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        tumour_labels(release)  # an unknown release fails here, not mid-epoch
        self.release = release
        self.threshold = threshold

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        item = dict(data)
        for key in self.key_iterator(item):
            item[key] = regions_to_labels(item[key], self.release, self.threshold)
        return item


def _source_filename(item: Mapping[Hashable, object], key: Hashable) -> str | None:
    """The file a loaded image came from: in a MetaTensor's metadata, or in the ``<key>_meta_dict``
    entry that MONAI writes when metadata is not tracked."""
    value = item[key]
    meta = value.meta if isinstance(value, MetaTensor) else item.get(PostFix.meta(str(key)), {})
    filename = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    return str(filename) if filename else None
