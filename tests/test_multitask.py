"""Grade and regions from one network: its two outputs, losses of cases missing a label, learnt
task weights, and the experiment's fit and predict on a phantom with such cases."""

import csv
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch

from resnext3d.cli import main
from resnext3d.data import BratsMultitaskData
from resnext3d.models import (
    GradingResNeXtUNet,
    PlannedGradingResNeXtUNet,
    RegionsAndGrade,
    build_network,
)
from resnext3d.tasks import VolumeMultitask

CONFIG = Path(__file__).parents[1] / "experiments" / "brats_multitask.yaml"
TINY_UNET = dict(
    preset="resnext_unet_s", patch_size=(16, 16, 16), spacing=(3.0, 3.0, 3.0), layers=(1, 1, 1)
)


def tiny_network(**arguments) -> PlannedGradingResNeXtUNet:
    torch.manual_seed(0)
    return PlannedGradingResNeXtUNet(num_grades=2, **TINY_UNET, **arguments)


def test_the_network_returns_regions_and_grade_from_one_encoder_pass():
    network = tiny_network().eval()
    image = torch.randn(3, 4, 16, 16, 16)
    calls = []
    network.encoder.register_forward_hook(lambda *_: calls.append(1))
    output = network(image)
    assert isinstance(output, RegionsAndGrade)
    assert output.regions.shape == (3, 3, 16, 16, 16)
    assert output.grade.shape == (3, 2)
    assert len(calls) == 1
    # The grade alone (no decoder) is the same head on the same features.
    torch.testing.assert_close(network.grade(image), output.grade)
    # Its plan is data: a plain GradingResNeXtUNet with the same weights' names and shapes.
    rebuilt = build_network(network.plan)
    assert type(rebuilt) is GradingResNeXtUNet
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in network.state_dict().items()
    }


def test_deep_supervision_stacks_the_region_heads_in_training():
    network = tiny_network(deep_supervision=True, deep_supervision_heads=1).train()
    output = network(torch.randn(2, 4, 16, 16, 16))
    assert output.regions.shape == (2, 2, 3, 16, 16, 16)  # final, then one head
    assert output.grade.shape == (2, 2)


def mixed_batch() -> dict:
    """Four crops: graded and segmented, segmented only, graded only, neither."""
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(4, 4, 16, 16, 16, generator=generator, requires_grad=True)
    label = (torch.rand(4, 3, 16, 16, 16, generator=generator) > 0.7).float()
    return {
        "image": image,
        "label": label,
        "grade": torch.tensor([1, -1, 0, -1]),
        "has_mask": torch.tensor([True, True, False, False]),
        "case_id": ["a", "b", "c", "d"],
    }


def test_a_case_without_a_label_adds_nothing_to_that_task_s_loss():
    task = VolumeMultitask(tiny_network(), grade_names=["LGG", "HGG"])
    # In eval mode batch norm uses its running statistics: items do not mix, and each item's
    # gradient says which loss it takes part in.
    task.network.eval()
    batch = mixed_batch()
    terms = task.loss_terms(batch)
    assert set(terms) == {"grade", "regions"}
    touched = {}
    for term, loss in terms.items():
        (gradient,) = torch.autograd.grad(loss, batch["image"], retain_graph=True)
        touched[term] = [bool(g.abs().sum() > 0) for g in gradient]
    assert touched == {"grade": [True, False, True, False], "regions": [True, True, False, False]}
    # The terms are those of the labelled items alone.
    output = task.network(batch["image"])
    expected = torch.nn.functional.cross_entropy(output.grade[[0, 2]].float(), torch.tensor([1, 0]))
    torch.testing.assert_close(terms["grade"], expected)
    expected = task.criterion(output.regions[[0, 1]].float(), batch["label"][[0, 1]])
    torch.testing.assert_close(terms["regions"], expected)


def test_a_batch_without_a_label_of_a_task_has_no_term_for_it():
    task = VolumeMultitask(tiny_network(), grade_names=["LGG", "HGG"])
    batch = mixed_batch()
    batch["grade"][:] = -1
    assert set(task.loss_terms(batch)) == {"regions"}
    batch["has_mask"][:] = False
    assert task.loss_terms(batch) == {}
    assert task.training_step(batch, 0) is None  # the step is skipped


def test_a_task_weighted_0_is_not_trained_and_its_decoder_not_run():
    task = VolumeMultitask(tiny_network(), grade_names=["LGG", "HGG"], regions_weight=0)
    decoded = []
    task.network.head.register_forward_hook(lambda *_: decoded.append(1))
    terms = task.loss_terms(mixed_batch())
    assert set(terms) == {"grade"} and not decoded
    with pytest.raises(ValueError, match="one of them more than 0"):
        VolumeMultitask(tiny_network(), grade_weight=0, regions_weight=0)


def test_uncertainty_weighting_learns_a_weight_per_task():
    task = VolumeMultitask(tiny_network(), grade_names=["LGG", "HGG"], weighting="uncertainty")
    assert task.log_variances is not None
    torch.testing.assert_close(task.weight("grade"), torch.tensor(1.0))  # exp(-0) at first
    optimizer = torch.optim.SGD([task.log_variances], lr=0.1)
    loss = task.combined_loss(task.loss_terms(mixed_batch()))
    loss.backward()
    assert (task.log_variances.grad != 0).all()
    optimizer.step()
    # The larger loss gets the larger variance, so the smaller weight.
    assert (task.log_variances != 0).all()
    assert task.weight("grade") != task.weight("regions")


def phantom_missing_labels(tiny_phantom: Path, folder: Path) -> Path:
    """The tiny phantom with case 0's label map removed and case 1 left out of the grades."""
    data = shutil.copytree(tiny_phantom, folder)
    (data / "BraTS2021_00000" / "BraTS2021_00000_seg.nii.gz").unlink()
    mapping = data / "name_mapping.csv"
    lines = mapping.read_text().splitlines()
    mapping.write_text("\n".join(line for line in lines if "BraTS2021_00001" not in line) + "\n")
    return data


def test_the_data_give_each_case_the_labels_it_has(tiny_phantom, tmp_path):
    data = BratsMultitaskData(
        data_dir=str(phantom_missing_labels(tiny_phantom, tmp_path / "data")),
        roi_size=(16, 16, 16),
        spacing=(3.0, 3.0, 3.0),
        num_workers=0,
        cache="none",
        predict_split="all",
    )
    assert data.grade_names == ["LGG", "HGG"] and data.class_names == ["TC", "WT", "ET"]
    data.setup("predict")
    items = {item["case_id"]: item for item in data._datasets["predict"].data}
    grades = {row["BraTS_2020_subject_ID"]: row["Grade"] for row in csv.DictReader(
        (tiny_phantom / "name_mapping.csv").open())}  # fmt: skip
    for case_id, has_mask, grade in (
        ("BraTS2021_00000", False, data.grade_names.index(grades["BraTS2021_00000"])),
        ("BraTS2021_00001", True, -1),
        ("BraTS2021_00002", True, data.grade_names.index(grades["BraTS2021_00002"])),
    ):
        assert (items[case_id]["has_mask"], items[case_id]["grade"]) == (has_mask, grade)
    # A case without a label map trains on an empty one, in crops that collate with the others.
    data.setup("fit")
    train = {item["case_id"]: item for item in data._datasets["train"].data}
    if "BraTS2021_00000" in train:
        index = list(train).index("BraTS2021_00000")
        crops = data._datasets["train"][index]
        assert all(crop["label"].sum() == 0 and crop["label"].shape[0] == 3 for crop in crops)


def test_a_tiny_fit_logs_every_metric_of_both_tasks(tiny_phantom, tmp_path):
    data = BratsMultitaskData(
        data_dir=str(phantom_missing_labels(tiny_phantom, tmp_path / "data")),
        roi_size=(16, 16, 16),
        spacing=(3.0, 3.0, 3.0),
        batch_size=2,
        num_workers=0,
        val_fraction=0.25,
    )
    network = tiny_network(in_channels=data.in_channels, out_channels=data.num_classes)
    task = VolumeMultitask(
        network,
        grade_names=data.grade_names,
        class_names=data.class_names,
        weighting="uncertainty",
        # The cheapest validation: one batch of windows per case, scored on the network's grid.
        overlap=0.0,
        sliding_window_batch_size=8,
        scoring_grid="resampled",
        # An untrained network's noise would be thousands of lesions to score.
        threshold=0.95,
    )
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=3,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(task, data)
    logged = set(trainer.logged_metrics)
    classification = {
        f"{s}/{m}" for s in ("train", "val") for m in ("acc", "balanced_acc", "auroc", "f1")
    }
    segmentation = {f"val/{k}_{r}" for k in ("dice", "hd95", "lesion_dice", "lesion_hd95")
                    for r in ("tc", "wt", "et", "mean")}  # fmt: skip
    losses = {f"{s}/loss{t}" for s in ("train", "val") for t in ("", "_grade", "_regions")}
    counts = {"train/cases_graded", "train/cases_segmented", "train/weight_grade",
              "train/weight_regions"}  # fmt: skip
    assert classification | segmentation | losses | counts <= logged
    # Three steps of two cases, every case with one label at least.
    assert (
        trainer.logged_metrics["train/cases_graded"]
        + trainer.logged_metrics["train/cases_segmented"]
        >= 6
    )
    assert (task.log_variances.detach() != 0).all()  # the task weights trained


@pytest.mark.slow  # a CLI fit and predict: about a minute
def test_the_experiment_fits_and_predicts_masks_and_grades(tiny_phantom, tmp_path, in_tmp_dir):
    data = phantom_missing_labels(tiny_phantom, tmp_path / "data")
    small = [
        "--data.init_args.data_dir", str(data),
        "--data.init_args.roi_size", "[16, 16, 16]",
        "--data.init_args.num_workers", "0",
    ]  # fmt: skip
    main(["fit", "--config", str(CONFIG), *small, "--trainer.max_epochs", "1",
          "--model.init_args.network.init_args.layers", "[1, 1, 1]",
          "--trainer.limit_train_batches", "2", "--trainer.check_val_every_n_epoch", "1",
          "--model.init_args.weighting", "uncertainty"])  # fmt: skip
    (run,) = (in_tmp_dir / "runs" / "brats_multitask").iterdir()
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    (state,) = [s for k, s in last["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert state["monitor"] == "val/auroc"  # the experiment's choice
    main(["predict", "--run", str(run), *small])
    (predicted,) = set((in_tmp_dir / "runs" / "brats_multitask").iterdir()) - {run}
    masks = sorted(path.name for path in (predicted / "predictions").glob("*_seg.nii.gz"))
    assert masks == [f"BraTS2021_{i:05d}_seg.nii.gz" for i in range(8)]
    with (predicted / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["case_id"] for row in rows] == [f"BraTS2021_{i:05d}" for i in range(8)]
    assert set(rows[0]) == {"case_id", "p_LGG", "p_HGG", "predicted"}


def test_the_benchmark_pairs_multi_task_with_each_single_task_seed_by_seed():
    from benchmarks import bench_multitask

    def run(auroc, dice, cases):
        return {"auroc": auroc, "dice_mean": dice, "dice_tc": dice, "dice_wt": dice,
                "dice_et": dice, "steps": 100, "load": 2.0, "cases": cases}  # fmt: skip

    cases = {f"case{i}": 0.5 for i in range(12)}
    better = {case: score + 0.1 for case, score in cases.items()}
    results = {
        "multi-task": {0: run(0.8, 0.6, better), 1: run(0.7, 0.7, better)},
        "grade only": {0: run(0.6, 0.0, {}), 1: run(0.6, 0.0, {})},
        "regions only": {0: run(0.5, 0.5, cases), 1: run(0.5, 0.5, cases)},
    }
    table = bench_multitask.paired_table(results, [0, 1])
    auroc = next(line for line in table if "val/auroc" in line)
    assert auroc.startswith("| − grade only | val/auroc | 2 seeds | +0.150 |")
    per_case = table[-1]
    assert "12 cases × 2 seeds | +0.100 | [+0.100, +0.100] | yes |" in per_case
    rows = bench_multitask.results_table(results, [0, 1])
    assert rows[2].startswith("| multi-task | 100 | 2.0 | 0.750 ± 0.050 (0.800, 0.700) |")


@pytest.mark.slow  # three short fits and their validations, after three warm-up fits
def test_the_benchmark_s_quick_mode_trains_and_compares_every_run(tiny_phantom, tmp_path):
    from benchmarks import bench_multitask

    bench_multitask.run_benchmark(
        ["--quick", "--data-dir", str(tiny_phantom), "--val-fraction", "0.5",
         "--out", str(tmp_path)]
    )  # fmt: skip
    table = (tmp_path / "results.md").read_text()
    for name in bench_multitask.RUNS:
        assert f"| {name} | " in table
    assert "| − regions only | val/dice_mean | 1 seeds |" in table
