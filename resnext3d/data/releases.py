"""One record per brain-tumour data set release: how its files are named, how many dimensions
they have and which value labels each tumour tissue, as nnU-Net's ``dataset.json`` says it of a
data set. The layouts, the label conversion, the file checks and the phantoms read it here.

=========  ==================================  ====  =====  =========
release    image files                         core  edema  enhancing
=========  ==================================  ====  =====  =========
brats2021  ``<ID>_{flair,t1,t1ce,t2}.nii.gz``  1     2      4
brats2023  ``<ID>-{t2f,t1n,t1c,t2w}.nii.gz``   1     2      3
decathlon  one 4-D file, channels last         2     1      3
=========  ==================================  ====  =====  =========

"brats2021" covers BraTS 2018-2021, "brats2023" the 2023 cohorts (GLI and the others), "decathlon"
the Medical Segmentation Decathlon's Task01_BrainTumour. The core is the necrotic (and, before
2023, the non-enhancing) tumour core; 0 is background in every release.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# The channel order of every image this package loads, whichever release the files come from.
MODALITIES = ("flair", "t1", "t1ce", "t2")

Release = Literal["brats2021", "brats2023", "decathlon"]


@dataclass(frozen=True)
class TumourLabels:
    """One release's label value of each tumour tissue; 0 is background in every release."""

    core: int  # necrotic (and, before 2023, non-enhancing) tumour core
    edema: int
    enhancing: int

    @property
    def values(self) -> tuple[int, ...]:
        return (0, self.core, self.edema, self.enhancing)


@dataclass(frozen=True)
class DatasetRelease:
    """How one release stores a case.

    Attributes:
        channel_suffixes: the file-name suffix of each of the ``MODALITIES``, in that order, one
            3-D file each; empty where one 4-D file holds every channel (the Decathlon).
        separator: between the case id and a suffix, ``<ID><separator><suffix>.nii.gz``.
        label_suffix: the label map's file-name suffix.
        labels: the label value of each tumour tissue.
        spatial_dims: the dimensions of a channel: 3, volumes.
    """

    channel_suffixes: tuple[str, ...]
    separator: str
    labels: TumourLabels
    label_suffix: str = "seg"
    spatial_dims: int = 3

    @property
    def image_ndim(self) -> int:
        """The dimensions of an image file: a channel's, plus one where a file holds them all."""
        return self.spatial_dims + (0 if self.channel_suffixes else 1)


RELEASES: dict[Release, DatasetRelease] = {
    "brats2021": DatasetRelease(
        channel_suffixes=("flair", "t1", "t1ce", "t2"),
        separator="_",
        labels=TumourLabels(core=1, edema=2, enhancing=4),
    ),
    "brats2023": DatasetRelease(
        channel_suffixes=("t2f", "t1n", "t1c", "t2w"),
        separator="-",
        labels=TumourLabels(core=1, edema=2, enhancing=3),
    ),
    # dataset.json names each case's files. Not BraTS's label order: 1 is edema here (MONAI's
    # Decathlon tutorial takes 1 for the core).
    "decathlon": DatasetRelease(
        channel_suffixes=(), separator="", labels=TumourLabels(core=2, edema=1, enhancing=3)
    ),
}
