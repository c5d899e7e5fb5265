"""The benchmark's --quick run: every section printed and saved, with positive numbers and ratios
that agree with the numbers they come from. Timings are never asserted: they depend on the
machine and on whatever else runs on it."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnext3d.models import count_macs, count_parameters, create_model
from resnext3d.training.performance import cpu_has_native_bf16

REPO = Path(__file__).resolve().parents[1]
SIZE = 24  # not the --quick default of 16, so that the run shows that --size reaches every model
BATCH = 2
MODEL_KEYS = [
    "resnext50_32x4d",
    "resnext50_32x4d_cl",
    "monai_seresnext50",
    "monai_seresnext50_cl",
    "monai_resnet50_t1",
    "monai_resnet50_t2",
]
# bf16 is measured where the device computes it natively.
BF16_KEY = "resnext50_32x4d_cl_bf16"
if torch.cuda.is_available() or cpu_has_native_bf16():
    MODEL_KEYS += [BF16_KEY, "monai_seresnext50_cl_bf16"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results.json"
    command = [sys.executable, "-m", "benchmarks.bench", "--quick", "--size", str(SIZE)]
    completed = subprocess.run(
        [*command, "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed.stdout, json.loads(out.read_text())


def positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_every_section_is_printed_and_saved(quick_run):
    stdout, report = quick_run
    for heading in ("## Models", "## Efficiency", "## Activation checkpointing", "## Data loading"):
        assert heading in stdout
    assert "Total time:" in stdout
    assert {"machine", "settings", "models", "dense_conv", "checkpointing", "data_loading"} <= set(
        report
    )
    assert positive(report["total_s"])
    measurements = [
        report,
        *report["models"]["rows"],
        *report["dense_conv"]["formats"].values(),
        *checkpointing_steps(report["checkpointing"]),
        *report["data_loading"]["pipelines"].values(),
    ]
    assert all(0 <= m["other_processes_cpu_share"] <= 1 for m in measurements)
    assert report["machine"]["device"] in ("cpu", "cuda")
    assert positive(report["machine"]["cpu_count"])
    assert report["machine"]["torch"] == torch.__version__


def checkpointing_steps(checkpointing: dict) -> list[dict]:
    return [
        checkpointing[allocator][step] for allocator in ALLOCATORS for step in ("without", "with")
    ]


def test_every_model_row_has_positive_measurements_at_the_requested_size(quick_run):
    stdout, report = quick_run
    models = report["models"]
    assert models["input_shape"] == [BATCH, 4, SIZE, SIZE, SIZE]
    assert models["rounds"] == 1  # --quick
    rows = {row["key"]: row for row in models["rows"]}
    # --quick leaves torch.compile out: it takes a minute whatever the size.
    assert sorted(rows) == sorted(MODEL_KEYS)
    for row in rows.values():
        assert row["label"] in stdout
        for phase in ("train", "inference"):
            measured = row[phase]
            assert positive(measured["volumes_per_s"]), (row["key"], phase)
            assert positive(measured["peak_memory_mib"]), (row["key"], phase)
            assert min(measured["step_s"]) <= measured["median_step_s"] <= max(measured["step_s"])
            assert measured["volumes_per_s"] == pytest.approx(BATCH / measured["median_step_s"])
        assert positive(row["train_gflops_per_s"])
        assert positive(row["parameters"]) and positive(row["saved_activations_mib"])


def test_ratios_are_to_the_monai_seresnext50_of_the_same_run(quick_run):
    _, report = quick_run
    rows = {row["key"]: row for row in report["models"]["rows"]}
    reference = rows[report["models"]["reference"]]
    assert reference["model"] == "monai_seresnext50" and not reference["channels_last"]
    assert all(ratio == pytest.approx(1) for ratio in reference["ratios"].values())
    for row in rows.values():
        ratios = row["ratios"]
        for phase in ("train", "inference"):
            for quantity, field in (("throughput", "volumes_per_s"), ("memory", "peak_memory_mib")):
                expected = row[phase][field] / reference[phase][field]
                assert positive(ratios[f"{phase}_{quantity}"])
                assert ratios[f"{phase}_{quantity}"] == pytest.approx(expected)


def test_flops_are_analytic_and_tell_the_models_apart(quick_run):
    _, report = quick_run
    rows = {row["key"]: row for row in report["models"]["rows"]}
    shape = (BATCH, 4, SIZE, SIZE, SIZE)
    with torch.device("meta"):
        ours = create_model("resnext50_32x4d", in_channels=4, num_classes=2)
        assert rows["resnext50_32x4d"]["macs"] == count_macs(ours, shape)
    # The memory format changes no arithmetic; SE layers add well under 1 %.
    assert rows["resnext50_32x4d_cl"]["macs"] == rows["resnext50_32x4d"]["macs"]
    if BF16_KEY in rows:
        assert rows[BF16_KEY]["macs"] == rows["resnext50_32x4d"]["macs"]
    assert rows["monai_seresnext50"]["macs"] == pytest.approx(rows["resnext50_32x4d"]["macs"], 0.01)
    # MONAI resnet50's default stride-1 first convolution is what makes it several times costlier.
    assert rows["monai_resnet50_t1"]["macs"] > 5 * rows["monai_resnet50_t2"]["macs"]
    for row in rows.values():
        train_gflops = 6 * row["macs"] / row["train"]["median_step_s"] / 1e9
        assert row["train_gflops_per_s"] == pytest.approx(train_gflops)


def test_train_steps_are_compared_with_the_faster_dense_convolution(quick_run):
    _, report = quick_run
    dense = report["dense_conv"]
    assert dense["input_shape"] == [BATCH, 64, SIZE, SIZE, SIZE]
    assert sorted(dense["formats"]) == ["channels_last_3d", "contiguous"]
    speeds = [result["gflops_per_s"] for result in dense["formats"].values()]
    assert all(positive(speed) for speed in speeds)
    assert dense["best_gflops_per_s"] == max(speeds)
    for row in report["models"]["rows"]:
        if row["bf16"]:  # the dense convolution is float32's measure
            assert row["fraction_of_dense_conv"] is None
            continue
        assert row["fraction_of_dense_conv"] == pytest.approx(
            row["train_gflops_per_s"] / max(speeds)
        )


ALLOCATORS = ("default", "returning") if not torch.cuda.is_available() else ("default",)


def test_checkpointing_reports_both_peaks_and_the_share_saved_per_allocator(quick_run):
    _, report = quick_run
    checkpointing = report["checkpointing"]
    assert checkpointing["input_shape"] == [2, 4, 32, 32, 32]
    for allocator in ALLOCATORS:
        measured = checkpointing[allocator]
        without, with_ = measured["without"], measured["with"]
        assert positive(without["peak_memory_mib"]) and positive(with_["peak_memory_mib"])
        assert positive(without["median_step_s"]) and positive(with_["median_step_s"])
        saved = 100 * (1 - with_["peak_memory_mib"] / without["peak_memory_mib"])
        assert measured["memory_saved_percent"] == pytest.approx(saved)
        # What autograd keeps is exact: checkpointing keeps only the stem's and blocks' inputs.
        assert 0 < with_["saved_activations_mib"] < without["saved_activations_mib"]
    parameters = count_parameters(create_model("resnext50_32x4d", in_channels=4, num_classes=2))
    # A float32 weight, its gradient and AdamW's two moments.
    assert checkpointing["weights_and_optimizer_mib"] == pytest.approx(16 * parameters / 2**20)


def test_data_loading_covers_both_pipelines_cached_and_not(quick_run):
    _, report = quick_run
    loading = report["data_loading"]
    ours = [row for row in report["models"]["rows"] if row["model"] == "resnext50_32x4d"]
    assert loading["train_volumes_per_s"] == max(row["train"]["volumes_per_s"] for row in ours)
    pipelines = loading["pipelines"]
    assert sorted(pipelines) == [
        "classification_memory",
        "classification_none",
        "segmentation_memory",
        "segmentation_none",
    ]
    for result in pipelines.values():
        assert positive(result["volumes_per_s"])
        assert result["volumes"] > 0 and result["volumes"] % BATCH == 0
        assert result["ratio_to_train_step"] == pytest.approx(
            result["volumes_per_s"] / loading["train_volumes_per_s"]
        )
    # The cache changes how fast the cases come, not which.
    for pipeline in ("classification", "segmentation"):
        cached, uncached = pipelines[f"{pipeline}_memory"], pipelines[f"{pipeline}_none"]
        assert cached["volumes"] == uncached["volumes"]
