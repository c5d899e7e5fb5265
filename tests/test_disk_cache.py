"""The disk cache: the same items as the memory cache, and safe against kills, concurrent runs,
damaged cache files and input files that change."""

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from resnext3d.data import BratsClassificationData, BratsSegmentationData, generate_phantom
from resnext3d.data.cache import DiskCacheDataset

SETTINGS = {"roi_size": (32, 32, 32), "batch_size": 2, "num_workers": 0, "val_fraction": 0.5}


@pytest.fixture
def phantom(tmp_path):
    return generate_phantom(tmp_path / "phantom", cases=6, shape=(32, 32, 24))


def classification(phantom, cache_dir, cache="disk"):
    data = BratsClassificationData(
        data_dir=str(phantom), cache=cache, cache_dir=str(cache_dir), **SETTINGS
    )
    data.setup("fit")
    return data


def assert_same_items(first, second):
    assert first.keys() == second.keys()
    for key, value in first.items():
        other = second[key]
        assert type(value) is type(other), key
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, other, rtol=0, atol=0)
            if isinstance(value, MetaTensor):
                torch.testing.assert_close(value.affine, other.affine, rtol=0, atol=0)
        elif isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, other)
        else:
            assert value == other, key


def cache_files(cache_dir):
    return sorted(cache_dir.rglob("*.pt"))


def test_segmentation_items_keep_their_affine_on_cache_hits(phantom, tmp_path):
    """HD95 is in mm only where the validation image still carries its affine."""
    memory = BratsSegmentationData(data_dir=str(phantom), spacing=(4.0, 4.0, 4.0), **SETTINGS)
    memory.setup("validate")
    disk = BratsSegmentationData(
        data_dir=str(phantom),
        spacing=(4.0, 4.0, 4.0),
        cache="disk",
        cache_dir=str(tmp_path / "cache"),
        **SETTINGS,
    )
    disk.setup("validate")
    expected = list(memory.val_dataloader())
    misses, hits = list(disk.val_dataloader()), list(disk.val_dataloader())
    assert len(cache_files(tmp_path / "cache")) == len(expected) == len(memory.split.val)
    for reference, miss, hit in zip(expected, misses, hits, strict=True):
        for batch in (miss, hit):
            assert isinstance(batch["image"], MetaTensor)
            torch.testing.assert_close(batch["image"].affine, reference["image"].affine)
            torch.testing.assert_close(batch["image"].as_tensor(), reference["image"].as_tensor())
            torch.testing.assert_close(batch["label"].as_tensor(), reference["label"].as_tensor())
        spacing = torch.linalg.norm(hit["image"].affine[0, :3, :3], dim=0)
        torch.testing.assert_close(spacing, torch.full((3,), 4.0, dtype=spacing.dtype))


def test_a_half_filled_cache_serves_batches_that_collate(phantom, tmp_path):
    data = classification(phantom, tmp_path / "cache")
    train = data.train_dataloader().dataset
    train[(0, 0)]  # (index, seed): one case cached, the others computed in the same batch
    assert len(cache_files(tmp_path / "cache")) == 1
    for _ in range(2):
        for batch in data.train_dataloader():
            assert batch["image"].shape[1:] == (4, 32, 32, 32)
    memory = classification(phantom, tmp_path / "unused", cache="memory")
    for index in range(len(memory.split.val)):
        assert_same_items(data._datasets["val"][index], memory._datasets["val"][index])


# Caches the first case, then hangs after writing the second one's temporary file, before the
# rename: the parent kills it there.
KILLED_WRITER = """
import sys, time
from pathlib import Path
import torch
from resnext3d.data import BratsClassificationData

phantom, cache_dir, marker = sys.argv[1:]
real_save, saves = torch.save, []

def save_then_hang(obj, file, *args, **kwargs):
    real_save(obj, file, *args, **kwargs)
    saves.append(file)
    if len(saves) == 2:
        file.flush()
        Path(marker).touch()
        time.sleep(600)

torch.save = save_then_hang
data = BratsClassificationData(
    data_dir=phantom, cache="disk", cache_dir=cache_dir, roi_size=(32, 32, 32), batch_size=2,
    num_workers=0, val_fraction=0.5,
)
data.setup("fit")
for batch in data.val_dataloader():
    pass
"""


@pytest.mark.slow  # a writer process of its own, killed
def test_the_cache_survives_a_kill_while_writing(phantom, tmp_path):
    marker, cache_dir = tmp_path / "writing", tmp_path / "cache"
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(KILLED_WRITER))
    writer = subprocess.Popen([sys.executable, str(script), str(phantom), str(cache_dir), marker])
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert writer.poll() is None, "the writer ended before it was killed"
            assert time.monotonic() < deadline, "the writer never reached its second write"
            time.sleep(0.05)
        writer.send_signal(signal.SIGKILL)
        assert writer.wait(timeout=30) == -signal.SIGKILL
    finally:
        writer.kill()
    assert len(cache_files(cache_dir)) == 1
    assert len(list(cache_dir.rglob(".*.partial"))) == 1  # the killed write, under no cache name

    data = classification(phantom, cache_dir)
    memory = classification(phantom, tmp_path / "unused", cache="memory")
    for _ in range(2):  # the first pass mixes cached and computed cases
        batches = list(data.val_dataloader())
        assert sum(len(batch["case_id"]) for batch in batches) == len(memory.split.val)
    for index in range(len(memory.split.val)):
        assert_same_items(data._datasets["val"][index], memory._datasets["val"][index])
    assert len(cache_files(cache_dir)) == len(memory.split.val)


def test_a_damaged_cache_file_is_computed_again(phantom, tmp_path, caplog):
    data = classification(phantom, tmp_path / "cache")
    expected = data._datasets["val"][0]
    (cache_file,) = cache_files(tmp_path / "cache")
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    again = classification(phantom, tmp_path / "cache")._datasets["val"][0]
    assert_same_items(again, expected)
    assert "unreadable cache file" in caplog.text
    assert cache_file.stat().st_size > 100


def test_concurrent_runs_fill_one_cache(phantom, tmp_path):
    runs = [classification(phantom, tmp_path / "cache") for _ in range(2)]
    count = len(runs[0].split.val)
    with ThreadPoolExecutor(2) as pool:
        items = list(pool.map(lambda d: [d._datasets["val"][i] for i in range(count)], runs))
    for first, second in zip(*items, strict=True):
        assert_same_items(first, second)
    assert len(cache_files(tmp_path / "cache")) == count
    assert not list((tmp_path / "cache").rglob(".*.partial"))


def test_a_changed_input_file_is_preprocessed_again(phantom, tmp_path):
    data = classification(phantom, tmp_path / "cache")
    case_id = data._datasets["val"][0]["case_id"]
    before = data._datasets["val"][0]["image"]

    flair = phantom / case_id / f"{case_id}_flair.nii.gz"
    image = nib.load(flair)
    # Flipped, not scaled: normalisation would undo a change of scale.
    flipped = np.ascontiguousarray(np.asanyarray(image.dataobj)[::-1])
    nib.save(nib.Nifti1Image(flipped, image.affine, image.header), flair)

    after = classification(phantom, tmp_path / "cache")._datasets["val"][0]
    expected = classification(phantom, tmp_path / "unused", cache="memory")._datasets["val"][0]
    assert after["case_id"] == case_id
    assert_same_items(after, expected)
    assert not torch.equal(after["image"], before)


def test_partial_files_of_long_dead_runs_are_removed(tmp_path):
    stale, fresh = tmp_path / ".a.pt.x.partial", tmp_path / ".b.pt.y.partial"
    for path in (stale, fresh):
        path.write_bytes(b"half")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    DiskCacheDataset([], None, tmp_path)
    assert not stale.exists() and fresh.exists()


@pytest.mark.slow  # two segmentation fits through the CLI
def test_segmentation_metrics_are_the_same_from_either_cache(phantom, in_tmp_dir):
    """End to end: validating from the disk cache (filling it, then from it) logs the memory
    cache's Dice and HD95 (in mm, at 4 mm voxels)."""
    from resnext3d.cli import main

    config = Path(__file__).parents[1] / "experiments" / "brats_seg.yaml"
    metrics = []
    for cache in ("memory", "disk", "disk"):
        main(["validate", "--config", str(config), "--data.init_args.data_dir", str(phantom),
              "--data.init_args.spacing", "[4, 4, 4]", "--data.init_args.roi_size", "[32, 32, 32]",
              "--model.init_args.sliding_window_size", "[32, 32, 32]",
              "--data.init_args.num_workers", "0", "--data.init_args.cache", cache,
              "--data.init_args.cache_dir", str(in_tmp_dir / "cache")])  # fmt: skip
        run = max((in_tmp_dir / "runs" / "brats_seg").iterdir())
        with (run / "metrics.csv").open() as file:
            metrics.append(next(csv.DictReader(file)))
    assert metrics[0]["val/hd95_mean"] not in ("", "nan")
    assert metrics[0] == metrics[1] == metrics[2]


def test_one_cache_folder_keeps_each_preprocessing_apart(phantom, tmp_path):
    """The same files preprocessed another way (other voxel size, another task, the predict
    pipeline without labels) are other cache entries, never a stale hit."""
    cache_dir = tmp_path / "cache"

    def validation_item(data_class, stage="fit", **settings):
        settings = {**SETTINGS, **settings}
        data = data_class(data_dir=str(phantom), cache="disk", cache_dir=str(cache_dir), **settings)
        data.setup(stage)
        if stage == "predict":
            return data.predict_dataloader().dataset[0]
        return data.val_dataloader().dataset[0]

    coarse = validation_item(BratsSegmentationData, spacing=(4.0, 4.0, 4.0))
    fine = validation_item(BratsSegmentationData, spacing=(2.0, 2.0, 2.0))
    assert fine["image"].shape[1] > coarse["image"].shape[1]
    graded = validation_item(BratsClassificationData)
    assert graded["image"].shape[1:] == (32, 32, 32) and "label" in graded
    predicted = validation_item(
        BratsSegmentationData, "predict", spacing=(4.0, 4.0, 4.0), predict_split="val"
    )
    assert isinstance(predicted["label"], str)  # the path: predicting loads no label map


class ShellCommand:
    """A pickle that runs a shell command when it is loaded."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def segmentation(phantom, cache_dir, stage="fit", cache="disk", **settings):
    data = BratsSegmentationData(
        data_dir=str(phantom),
        spacing=(4.0, 4.0, 4.0),
        cache=cache,
        cache_dir=str(cache_dir),
        **{**SETTINGS, **settings},
    )
    data.setup(stage)
    return data


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_planted_pickle_runs_no_code(phantom, tmp_path, caplog, zip_format):
    """A cache folder another user can write to must not run their code: the entry is refused,
    named, and computed again."""
    data = segmentation(phantom, tmp_path / "cache")
    expected = data._datasets["val"][0]
    (cache_file,) = cache_files(tmp_path / "cache")
    marker = tmp_path / "code_ran"
    planted = {"image": ShellCommand(f"touch {marker}")}
    torch.save(planted, cache_file, _use_new_zipfile_serialization=zip_format)

    again = segmentation(phantom, tmp_path / "cache")._datasets["val"][0]
    assert not marker.exists()
    assert_same_items(again, expected)
    assert str(cache_file) in caplog.text
    caplog.clear()
    segmentation(phantom, tmp_path / "cache")._datasets["val"][0]
    assert not marker.exists() and not caplog.text  # the planted entry was overwritten


def test_an_entry_copied_over_another_case_is_computed_again(phantom, tmp_path, caplog):
    """An entry under another case's name (copied, renamed) is never served as that case."""
    cache_dir = tmp_path / "cache"
    data = segmentation(phantom, cache_dir)
    dataset = data._datasets["val"]
    dataset[0]
    (first_file,) = cache_files(cache_dir)
    dataset[1]
    (second_file,) = set(cache_files(cache_dir)) - {first_file}
    second_file.write_bytes(first_file.read_bytes())

    again = segmentation(phantom, cache_dir)._datasets["val"][1]
    expected = segmentation(phantom, tmp_path / "unused", cache="memory")._datasets["val"][1]
    assert again["case_id"] == expected["case_id"] != dataset[0]["case_id"]
    assert_same_items(again, expected)
    assert str(second_file) in caplog.text
    caplog.clear()
    assert_same_items(segmentation(phantom, cache_dir)._datasets["val"][1], expected)
    assert not caplog.text  # the entry was written again, as the second case


def test_every_pipeline_loads_its_entries_without_computing_them_again(phantom, tmp_path, caplog):
    """Entries are loaded with only the types they hold allowed: each pipeline's second load is a
    hit, not a refused entry computed again."""
    cache_dir = tmp_path / "cache"
    pipelines = {
        "classification": lambda: classification(phantom, cache_dir)._datasets["val"],
        "segmentation": lambda: segmentation(phantom, cache_dir)._datasets["val"],
        "prediction": lambda: (
            segmentation(phantom, cache_dir, "predict", predict_split="val")
            .predict_dataloader()
            .dataset
        ),
    }
    for name, dataset in pipelines.items():
        dataset()[0]
        written = {path: path.stat().st_mtime_ns for path in cache_files(cache_dir)}
        dataset()[0]
        assert not caplog.text, name
        assert {path: path.stat().st_mtime_ns for path in cache_files(cache_dir)} == written, name
