"""Lightning tasks that hold a network and its metrics; data handling lives in resnext3d.data."""

from resnext3d.tasks.classification import VolumeClassifier
from resnext3d.tasks.multitask import VolumeMultitask
from resnext3d.tasks.postprocessing import RegionPostprocessing
from resnext3d.tasks.segmentation import VolumeSegmenter

__all__ = ["RegionPostprocessing", "VolumeClassifier", "VolumeMultitask", "VolumeSegmenter"]
