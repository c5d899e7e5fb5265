"""Pictures of volumes: orthogonal slices through a tumour with its masks overlaid."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

# One colour per region channel, painted in channel order over the image.
REGION_COLOURS = ("red", "green", "yellow", "blue", "purple")
VIEWS = ("axial", "coronal", "sagittal")


def tumour_centre(masks: torch.Tensor) -> tuple[int, ...]:
    """The voxel at the centre of mass of the union of ``masks`` (C, X, Y, Z), or the volume's
    centre where there is no tumour."""
    union = masks.sum(dim=0) > 0
    if not union.any():
        return tuple(size // 2 for size in union.shape)
    return tuple(int(c.float().mean().round()) for c in torch.nonzero(union, as_tuple=True))


def orthogonal_slices(volume: torch.Tensor, centre: Sequence[int]) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices of ``volume`` (…, X, Y, Z in RAS) through ``centre``,
    transposed so that anterior and superior point up."""
    x, y, z = centre
    return [
        volume[..., :, :, z].transpose(-1, -2).flip(-2).numpy(),  # axial: X right, Y up
        volume[..., :, y, :].transpose(-1, -2).flip(-2).numpy(),  # coronal: X right, Z up
        volume[..., x, :, :].transpose(-1, -2).flip(-2).numpy(),  # sagittal: Y right, Z up
    ]


def segmentation_figure(
    image: torch.Tensor,
    truth: torch.Tensor,
    prediction: torch.Tensor,
    region_names: Sequence[str],
    title: str = "",
) -> Figure:
    """Image, ground truth and prediction in three orthogonal slices through the tumour.

    ``image`` is one channel (X, Y, Z); ``truth`` and ``prediction`` are region masks
    (C, X, Y, Z), painted in channel order.
    """
    centre = tumour_centre(truth if truth.any() else prediction)
    figure = Figure(figsize=(9, 9), layout="constrained")
    axes = figure.subplots(3, 3)
    for row, (view, image_slice, truth_slice, predicted_slice) in enumerate(
        zip(
            VIEWS,
            orthogonal_slices(image, centre),
            orthogonal_slices(truth, centre),
            orthogonal_slices(prediction, centre),
            strict=True,
        )
    ):
        for column, masks in enumerate((None, truth_slice, predicted_slice)):
            ax = axes[row, column]
            ax.imshow(image_slice, cmap="gray")
            for channel, mask in enumerate(masks if masks is not None else []):
                colour = ListedColormap([REGION_COLOURS[channel % len(REGION_COLOURS)]])
                ax.imshow(np.ma.masked_where(mask < 0.5, mask), cmap=colour, alpha=0.45)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(("image", "ground truth", "prediction")[column])
        axes[row, 0].set_ylabel(view)
    legend = ", ".join(
        f"{name} {REGION_COLOURS[i % len(REGION_COLOURS)]}" for i, name in enumerate(region_names)
    )
    figure.suptitle(f"{title}\n{legend}".strip())
    return figure
