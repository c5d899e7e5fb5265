"""`predict --run RUN RUN ...`: the ensemble of several runs, the mean of their probabilities."""

import csv
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from test_experiments import small_data
from test_failures import run_expecting_exit_1

import resnext3d
from resnext3d.cli import main
from resnext3d.models import ProbabilityEnsemble

ROOT = Path(__file__).parents[1]
CLASSIFICATION = str(ROOT / "experiments" / "brats_cls.yaml")
SEGMENTATION = str(ROOT / "experiments" / "brats_seg.yaml")
ONE_STEP = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1"]
WINDOW = ["--model.init_args.sliding_window_size", "[32, 32, 32]"]


def fit_runs(phantom, directory: Path, config: str, runs: list[list[str]]) -> list[Path]:
    """One run of `config` per list of overrides, of one training step each, in order."""
    cwd = Path.cwd()
    os.chdir(directory)
    try:
        for overrides in runs:
            main(["fit", "--config", config, *small_data(phantom), *ONE_STEP, *overrides])
    finally:
        os.chdir(cwd)
    return sorted((directory / "runs" / Path(config).stem).iterdir())


@pytest.fixture(scope="module")
def segmentation_runs(tiny_phantom, tmp_path_factory) -> list[Path]:
    """Two brats_seg runs of other seeds, in one folder (as a cross-validation's folds)."""
    directory = tmp_path_factory.mktemp("segmentation")
    seeds = [["--seed_everything", str(seed), *WINDOW] for seed in (1, 2)]
    return fit_runs(tiny_phantom, directory, SEGMENTATION, seeds)


@pytest.fixture(scope="module")
def classification_runs(tiny_phantom, tmp_path_factory) -> list[Path]:
    """A brats_cls run, and one of another cardinality."""
    directory = tmp_path_factory.mktemp("classification")
    overrides = [[], ["--model.init_args.network.init_args.cardinality", "16"]]
    return fit_runs(tiny_phantom, directory, CLASSIFICATION, overrides)


def predict(run_dirs: list[Path], *overrides: str) -> Path:
    """Predict with the runs (as `--run` arguments); the new run directory."""
    folder = run_dirs[0].parent
    before = set(folder.rglob("config.yaml"))
    main(["predict", "--run", *map(str, run_dirs), *overrides])
    (config,) = set(folder.rglob("config.yaml")) - before
    return config.parent


def class_probabilities(run: Path) -> np.ndarray:
    with (run / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return np.array([[float(row["p_LGG"]), float(row["p_HGG"])] for row in rows])


def test_the_ensemble_returns_the_logits_of_the_mean_probability():
    image = torch.randn(2, 4, 32, 32, 32)
    networks = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        encoder = resnext3d.create_model("resnext14_tiny", in_channels=4, features_only=True)
        unet = resnext3d.ResNeXtUNet(encoder, decoder_channels=(64, 32, 16, 16, 8))
        networks.append(unet.eval())
    ensemble = ProbabilityEnsemble(networks, "sigmoid").eval()
    with torch.no_grad():
        mean = sum(torch.sigmoid(network(image)) for network in networks) / 2
        torch.testing.assert_close(torch.sigmoid(ensemble(image)), mean, rtol=0, atol=1e-6)
        alone = ProbabilityEnsemble(networks[:1], "sigmoid").eval()
        torch.testing.assert_close(alone(image), networks[0](image), rtol=0, atol=1e-5)
    # Certain members: sigmoid(60) is 1.0 in float32, whose logit would be infinite.
    certain = torch.tensor([[60.0, -60.0]])
    identities = ProbabilityEnsemble([torch.nn.Identity(), torch.nn.Identity()], "sigmoid")
    torch.testing.assert_close(identities(certain), certain)


@pytest.mark.slow  # fits of their own: kept out of make test's minutes
def test_an_ensemble_of_classifiers_predicts_the_mean_of_their_probabilities(
    tiny_phantom, tmp_path
):
    first, second = fit_runs(
        tiny_phantom,
        tmp_path,
        CLASSIFICATION,
        [["--seed_everything", "1"], ["--seed_everything", "2"]],
    )
    data = small_data(tiny_phantom)
    alone = [class_probabilities(predict([run], *data)) for run in (first, second)]
    ensemble = predict([first, second], *data)
    assert ensemble.parent == first.parent  # a new run directory beside the first run
    np.testing.assert_allclose(class_probabilities(ensemble), sum(alone) / 2, atol=2e-6)
    assert not np.allclose(alone[0], alone[1])  # two runs that differ


@pytest.mark.slow  # fits of their own: kept out of make test's minutes
def test_runs_of_another_architecture_or_task_are_named_in_one_line(
    tiny_phantom, classification_runs, segmentation_runs, capsys
):
    first, other = classification_runs
    error = run_expecting_exit_1(
        ["predict", "--run", str(first), str(other), *small_data(tiny_phantom)], capsys
    )
    (line,) = [line for line in error.splitlines() if "error:" in line]
    assert f"{other}/checkpoints/" in line and "whose weights do not fit" in line
    assert f"share the model of its first, {first})" in line
    error = run_expecting_exit_1(
        ["predict", "--run", str(segmentation_runs[0]), str(first), *small_data(tiny_phantom)],
        capsys,
    )
    assert f"{first}/checkpoints/" in error and "holds a VolumeClassifier" in error


@pytest.mark.slow  # fits of their own (segmentation_runs): kept out of make test
def test_an_ensemble_of_two_runs_writes_one_mask_per_case(tiny_phantom, segmentation_runs):
    ensemble = predict(
        segmentation_runs, *small_data(tiny_phantom), "--model.init_args.submission_names", "true"
    )
    masks = sorted((ensemble / "predictions").iterdir())
    assert [mask.name for mask in masks] == [f"BraTS2021_{i:05d}.nii.gz" for i in range(8)]
    reference = nib.load(tiny_phantom / "BraTS2021_00000" / "BraTS2021_00000_flair.nii.gz")
    assert nib.load(masks[0]).shape == reference.shape


@pytest.mark.slow  # fits of their own (segmentation_runs): kept out of make test
def test_a_folder_of_one_run_predicts_exactly_as_the_run(tiny_phantom, segmentation_runs, tmp_path):
    folds = tmp_path / "cv"
    shutil.copytree(segmentation_runs[0], folds / "fold0")
    (folds / "fold0" / "checkpoints" / "last.ckpt").rename(folds / "not_a_fold")
    shutil.copytree(segmentation_runs[0], folds / "fold1")
    alone = predict([segmentation_runs[0]], *small_data(tiny_phantom))
    from_folder = predict([folds], *small_data(tiny_phantom))
    assert from_folder.parent == folds  # beside fold1, the folder's only trained run
    masks = sorted(path.name for path in (alone / "predictions").iterdir())
    assert masks == sorted(path.name for path in (from_folder / "predictions").iterdir())
    for name in masks:
        expected = np.asarray(nib.load(alone / "predictions" / name).dataobj)
        np.testing.assert_array_equal(
            np.asarray(nib.load(from_folder / "predictions" / name).dataobj), expected
        )


def brats2023_without_label_maps(phantom: Path, root: Path) -> list[str]:
    """The phantom as BraTS 2023 validation data: its file names, and no label maps."""
    suffixes = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}
    case_ids = []
    for case in sorted(phantom.glob("BraTS2021_*")):
        case_id = case.name.replace("BraTS2021_", "BraTS-GLI-") + "-000"
        (root / case_id).mkdir(parents=True)
        for old, new in suffixes.items():
            shutil.copy(
                case / f"{case.name}_{old}.nii.gz", root / case_id / f"{case_id}-{new}.nii.gz"
            )
        case_ids.append(case_id)
    return case_ids


@pytest.mark.slow  # fits of their own (segmentation_runs): kept out of make test
def test_cases_without_label_maps_are_predicted_with_submission_names(
    tiny_phantom, segmentation_runs, tmp_path
):
    case_ids = brats2023_without_label_maps(tiny_phantom, tmp_path / "validation")
    data = [*small_data(tiny_phantom), "--data.init_args.data_dir", str(tmp_path / "validation")]
    ensemble = predict(segmentation_runs, *data, "--model.init_args.submission_names", "true")
    names = sorted(path.name for path in (ensemble / "predictions").iterdir())
    assert names == [f"{case_id}.nii.gz" for case_id in case_ids]
    labels = np.asarray(nib.load(ensemble / "predictions" / names[0]).dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2, 3}  # BraTS 2023 values: enhancing tumour is 3
