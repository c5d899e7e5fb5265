"""The benchmark: its ratios and tables on made-up measurements, its timing and memory meters on
trivial steps, its options, and one --quick run of the whole entry point (slow). Timings are
never asserted: they depend on the machine and on whatever else runs on it."""

import json
import math
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from benchmarks import bench, measure, report, suites
from resnext3d.models import count_macs, count_parameters, create_model
from resnext3d.training.performance import cpu_has_native_bf16

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("## Models", "## Efficiency", "## Activation checkpointing", "## Data loading")
SAVED = {"machine", "settings", "models", "dense_conv", "checkpointing", "data_loading"}


def positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


# Made-up measurements, shaped as the suites return them.


def timing(*step_s: float, peak: float = 100.0, warmup_s: float = 1.0) -> dict:
    return {"step_s": list(step_s), "warmup_s": [warmup_s], "peak_memory_mib": peak}


def model_row(variant: suites.Variant, train_s: float, infer_s: float, share: float) -> dict:
    return {
        **asdict(variant),
        "macs": 10**9,
        "parameters": 1000,
        "inference": report.summarize([timing(infer_s, peak=50.0 * infer_s)], 2),
        "train": report.summarize([timing(train_s, peak=100.0 * train_s, warmup_s=30.0)], 2),
        "saved_activations_mib": 10.0,
        "other_processes_cpu_share": share,
    }


def fabricated_sections(settings: suites.Settings, noisy_key: str = "") -> dict:
    """Every section of a report, from made-up timings run through the report's functions."""
    variants = [suites.OURS_DEFAULT, suites.OURS_BF16, suites.OURS_COMPILED, *suites.COMPARED]
    rows = [
        model_row(
            variant,
            train_s=0.1 * (i + 1),
            infer_s=0.05 * (i + 1),
            share=0.5 if variant.key == noisy_key else 0.0,
        )
        for i, variant in enumerate(variants)
    ]
    models = {
        "input_shape": settings.input_shape,
        "bf16_tiny_convolutions_guarded": True,
        "reference": suites.REFERENCE.key,
        "rounds": 1,
        "rows": report.compare_models(rows, suites.REFERENCE.key),
    }
    formats = {
        "contiguous": {"macs": 1, "gflops_per_s": 100.0, "other_processes_cpu_share": 0.0},
        "channels_last_3d": {"macs": 1, "gflops_per_s": 200.0, "other_processes_cpu_share": 0.0},
    }
    dense = report.compare_with_dense_conv(rows, (2, 64, 16, 16, 16), formats)
    step = {"median_step_s": 1.0, "peak_memory_mib": 400.0, "saved_activations_mib": 100.0}
    checkpointed = {"median_step_s": 1.3, "peak_memory_mib": 300.0, "saved_activations_mib": 20.0}
    checkpointing = {"input_shape": settings.checkpoint_shape, "weights_and_optimizer_mib": 395.0}
    for allocator in ("default", "returning"):
        checkpointing[allocator] = report.compare_checkpointing(
            without={**step, "other_processes_cpu_share": 0.0},
            with_={**checkpointed, "other_processes_cpu_share": 0.0},
        )
    pipelines = {
        f"{pipeline}_{cache}": {
            "pipeline": pipeline,
            "cache": cache,
            "volumes_per_s": 40.0,
            "volumes": 12,
            "seconds": 0.3,
            "setup_s": 0.1,
            "num_workers": 2,
            "other_processes_cpu_share": 0.0,
        }
        for pipeline in ("classification", "segmentation")
        for cache in ("memory", "none")
    }
    fastest = report.fastest_of(models["rows"], suites.OURS_DEFAULT.model)
    train_volumes_per_s = fastest["train"]["volumes_per_s"]
    loading = {
        "phantom_cases": settings.phantom_cases,
        "phantom_shape": settings.phantom_shape,
        "train_volumes_per_s": train_volumes_per_s,
        "pipelines": report.compare_loading(pipelines, train_volumes_per_s),
    }
    return {
        "models": models,
        "dense_conv": dense,
        "checkpointing": checkpointing,
        "data_loading": loading,
    }


# The report's arithmetic.


def test_summary_is_the_median_step_over_every_round_and_the_highest_peak():
    summary = report.summarize([timing(3.0, 1.0, peak=10), timing(2.0, peak=30)], 4)
    assert summary["median_step_s"] == 2.0
    assert summary["volumes_per_s"] == 2.0  # 4 volumes in 2 s
    assert summary["peak_memory_mib"] == 30
    assert summary["step_s"] == [3.0, 1.0, 2.0] and summary["warmup_s"] == [1.0, 1.0]


def test_ratios_are_to_the_reference_row_and_flops_to_each_rows_own_step():
    sections = fabricated_sections(suites.QUICK)
    rows = {row["key"]: row for row in sections["models"]["rows"]}
    reference = rows[suites.REFERENCE.key]
    assert reference["ratios"] == pytest.approx(dict.fromkeys(reference["ratios"], 1.0))
    ours = rows[suites.OURS_DEFAULT.key]  # 0.1 s train and 0.05 s inference, the reference 0.4/0.2
    assert ours["ratios"] == pytest.approx(
        {
            "train_throughput": 4.0,
            "inference_throughput": 4.0,
            "train_memory": 0.25,
            "inference_memory": 0.25,
        }
    )
    for row in rows.values():
        assert row["train_gflops_per_s"] == pytest.approx(
            6 * 1e9 / row["train"]["median_step_s"] / 1e9
        )


def test_dense_conv_share_is_of_the_faster_format_and_none_for_bf16_rows():
    sections = fabricated_sections(suites.QUICK)
    assert sections["dense_conv"]["best_gflops_per_s"] == 200.0
    for row in sections["models"]["rows"]:
        if row["bf16"]:
            assert row["fraction_of_dense_conv"] is None
        else:
            assert row["fraction_of_dense_conv"] == pytest.approx(row["train_gflops_per_s"] / 200)


def test_checkpointing_and_loading_are_compared_within_the_run():
    sections = fabricated_sections(suites.QUICK)
    compared = sections["checkpointing"]["default"]
    assert compared["memory_saved_percent"] == pytest.approx(25)  # 400 → 300 MiB
    assert compared["activations_saved_percent"] == pytest.approx(80)  # 100 → 20 MiB
    assert compared["time_added_percent"] == pytest.approx(30)  # 1.0 → 1.3 s
    loading = sections["data_loading"]
    # The fastest resnext50_32x4d row: 0.1 s per step of 2 volumes, the others slower.
    assert loading["train_volumes_per_s"] == pytest.approx(20)
    for result in loading["pipelines"].values():
        assert result["ratio_to_train_step"] == pytest.approx(2)  # 40 vol/s


# The tables.


def test_every_section_and_row_is_printed_and_only_noisy_rows_are_marked(capsys):
    settings = suites.QUICK
    sections = fabricated_sections(settings, noisy_key=suites.REFERENCE_CHANNELS_LAST.key)
    full = {**sections, "other_processes_cpu_share": 0.05, "total_s": 60.0}
    report.print_header(measure.describe_machine(), asdict(settings))
    report.print_models(sections["models"], sections["dense_conv"])
    report.print_checkpointing(sections["checkpointing"])
    report.print_loading(sections["data_loading"], "fastest resnext50_32x4d")
    report.print_footer(full)
    stdout = capsys.readouterr().out
    assert all(heading in stdout for heading in SECTIONS)
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in stdout.splitlines()]
    printed = {(row[0].removesuffix(" †"), row[1]): row for row in cells if len(row) == 9}
    for row in sections["models"]["rows"]:
        line = printed[row["label"], report.settings_name(row)]
        assert line[0].endswith("†") == (row["key"] == suites.REFERENCE_CHANNELS_LAST.key)
        assert (
            line[3]
            == f"{row['train']['volumes_per_s']:.2f} ({row['ratios']['train_throughput']:.2f}×)"
        )
    assert printed["MONAI SEResNeXt50 (reference)", "contiguous"][3] == "5.00 (1.00×)"
    assert "bf16-mixed: the convolutions" in stdout
    assert "torch.compile: the first train step took 30 s" in stdout
    assert "checkpointing saves 25% of the peak memory and 80% of the activations" in stdout
    assert "Total time: 1.0 min." in stdout
    # The instruction sets beside the numbers: bf16 is native with avx512_bf16 or amx_bf16.
    flags = measure.describe_machine()["cpu_flags"]
    assert set(flags) <= set(measure.CPU_FLAGS) and " ".join(flags) in stdout
    if torch.cpu.get_capabilities().get("architecture") == "x86_64":
        assert cpu_has_native_bf16() == bool({"avx512_bf16", "amx_bf16"} & set(flags))
    assert "† Other processes used more than 10%" in stdout

    quiet = fabricated_sections(settings)
    report.print_footer({**quiet, "other_processes_cpu_share": 0.0, "total_s": 1.0})
    assert "†" not in capsys.readouterr().out


# The meters.


def test_steps_are_timed_after_the_warm_up_with_torchs_own_thread_count():
    threads_in_step = []
    step = lambda: threads_in_step.append(torch.get_num_threads())  # noqa: E731
    memory = measure.PeakMemory(torch.device("cpu"))
    timed = measure.time_steps(step, measure.Schedule(warmup_steps=2, budget_s=0.0), memory)
    assert len(timed["warmup_s"]) == 2 and all(s >= 0 for s in timed["warmup_s"])
    assert len(timed["step_s"]) == 1  # a budget of 0: one timed block
    assert positive(timed["step_s"][0])
    # The warm-ups, Timer's block sizing and at least one timed step.
    assert len(threads_in_step) >= 4
    assert set(threads_in_step) == {torch.get_num_threads()}


def test_a_budget_bounds_the_timed_steps():
    # A spread of 0 is never reached: the budget alone ends the timing, after more than a block.
    schedule = measure.Schedule(warmup_steps=0, budget_s=0.05, spread=0.0)
    timed = measure.time_steps(
        lambda: time.sleep(0.01), schedule, measure.PeakMemory(torch.device("cpu"))
    )
    assert len(timed["step_s"]) >= 2 and timed["warmup_s"] == []


def test_peak_memory_counts_what_a_step_touches_after_the_reset():
    memory = measure.PeakMemory(torch.device("cpu"))
    memory.reset()
    held = torch.ones(64 * 2**20 // 4)  # 64 MiB, written
    assert memory.peak_mib() > 48
    del held


def test_other_processes_share_is_a_fraction():
    with measure.OtherProcessesCpu() as others:
        time.sleep(0.2)
    assert 0 <= others.share <= 1


# The entry point.


def test_options_reach_the_settings(tmp_path):
    settings, out = bench.parse_settings([])
    assert settings == suites.Settings() and out.parent == Path("bench-results")
    settings, out = bench.parse_settings(
        [
            "--quick",
            "--batch",
            "3",
            "--size",
            "24",
            "--checkpoint-size",
            "40",
            "--out",
            str(tmp_path / "r.json"),
        ]
    )
    assert settings.input_shape == (3, 4, 24, 24, 24)
    assert settings.checkpoint_shape == (suites.QUICK.checkpoint_batch, 4, 40, 40, 40)
    assert settings.rounds == suites.QUICK.rounds and out == tmp_path / "r.json"
    assert not bench.parse_settings(["--no-compile"])[0].compile


def test_main_prints_and_saves_every_section(monkeypatch, tmp_path, capsys):
    """The entry point's order of work, with the measurements replaced by made-up ones."""
    measured = {}

    def fake(section: str):
        def benchmark(settings, *_):
            measured.setdefault("sections", fabricated_sections(settings))
            return measured["sections"][section]

        return benchmark

    monkeypatch.setattr(bench, "benchmark_models", fake("models"))
    monkeypatch.setattr(bench, "benchmark_dense_conv", fake("dense_conv"))
    monkeypatch.setattr(bench, "benchmark_checkpointing", fake("checkpointing"))
    monkeypatch.setattr(bench, "benchmark_loading", fake("data_loading"))
    out = tmp_path / "results" / "run.json"
    assert bench.main(["--quick", "--size", "24", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert all(heading in stdout for heading in SECTIONS)
    assert f"Results: {out}" in stdout
    saved = json.loads(out.read_text())
    assert set(saved) >= SAVED
    assert saved["models"]["input_shape"] == [2, 4, 24, 24, 24]
    assert saved["settings"]["size"] == 24
    assert 0 <= saved["other_processes_cpu_share"] <= 1 and positive(saved["total_s"])
    assert saved["machine"]["torch"] == torch.__version__


# One real --quick run of the entry point: every model built, stepped and measured.

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
ALLOCATORS = ("default", "returning") if not torch.cuda.is_available() else ("default",)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results.json"
    command = [sys.executable, "-m", "benchmarks.bench", "--quick", "--size", str(SIZE)]
    completed = subprocess.run(
        [*command, "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed.stdout, json.loads(out.read_text())


@pytest.mark.slow
def test_quick_run_prints_and_saves_every_section(quick_run):
    stdout, saved = quick_run
    assert all(heading in stdout for heading in SECTIONS) and "Total time:" in stdout
    assert set(saved) >= SAVED
    assert all(
        0 <= m["other_processes_cpu_share"] <= 1 for m in [saved, *report.measurements(saved)]
    )
    assert saved["machine"]["device"] in ("cpu", "cuda")


@pytest.mark.slow
def test_quick_run_measures_every_model_at_the_requested_size(quick_run):
    stdout, saved = quick_run
    models = saved["models"]
    assert models["input_shape"] == [BATCH, 4, SIZE, SIZE, SIZE]
    assert models["rounds"] == 1  # --quick
    rows = {row["key"]: row for row in models["rows"]}
    # --quick leaves torch.compile out: it takes a minute whatever the size.
    assert sorted(rows) == sorted(MODEL_KEYS)
    reference = rows[models["reference"]]
    assert reference["model"] == "monai_seresnext50" and not reference["channels_last"]
    for row in rows.values():
        assert row["label"] in stdout
        for phase in ("train", "inference"):
            measured = row[phase]
            assert positive(measured["volumes_per_s"]), (row["key"], phase)
            assert positive(measured["peak_memory_mib"]), (row["key"], phase)
            assert measured["volumes_per_s"] == pytest.approx(BATCH / measured["median_step_s"])
            for quantity, field in (("throughput", "volumes_per_s"), ("memory", "peak_memory_mib")):
                expected = measured[field] / reference[phase][field]
                assert row["ratios"][f"{phase}_{quantity}"] == pytest.approx(expected)
        assert positive(row["parameters"]) and positive(row["saved_activations_mib"])
    # The MACs are analytic and tell the models apart; the memory format changes no arithmetic.
    with torch.device("meta"):
        ours = create_model("resnext50_32x4d", in_channels=4, num_classes=2)
        assert rows["resnext50_32x4d"]["macs"] == count_macs(ours, (BATCH, 4, SIZE, SIZE, SIZE))
    assert rows["resnext50_32x4d_cl"]["macs"] == rows["resnext50_32x4d"]["macs"]
    assert rows["monai_seresnext50"]["macs"] == pytest.approx(rows["resnext50_32x4d"]["macs"], 0.01)
    # MONAI resnet50's default stride-1 first convolution is what makes it several times costlier.
    assert rows["monai_resnet50_t1"]["macs"] > 5 * rows["monai_resnet50_t2"]["macs"]
    dense = saved["dense_conv"]
    assert dense["input_shape"] == [BATCH, 64, SIZE, SIZE, SIZE]
    assert sorted(dense["formats"]) == ["channels_last_3d", "contiguous"]
    assert all(positive(result["gflops_per_s"]) for result in dense["formats"].values())


@pytest.mark.slow
def test_quick_run_checkpointing_keeps_fewer_activations(quick_run):
    _, saved = quick_run
    checkpointing = saved["checkpointing"]
    assert checkpointing["input_shape"] == [2, 4, 32, 32, 32]
    for allocator in ALLOCATORS:
        without, with_ = checkpointing[allocator]["without"], checkpointing[allocator]["with"]
        assert positive(without["peak_memory_mib"]) and positive(with_["peak_memory_mib"])
        assert positive(without["median_step_s"]) and positive(with_["median_step_s"])
        # What autograd keeps is exact: checkpointing keeps only the stem's and blocks' inputs.
        assert 0 < with_["saved_activations_mib"] < without["saved_activations_mib"]
    parameters = count_parameters(create_model("resnext50_32x4d", in_channels=4, num_classes=2))
    # A float32 weight, its gradient and AdamW's two moments.
    assert checkpointing["weights_and_optimizer_mib"] == pytest.approx(16 * parameters / 2**20)


@pytest.mark.slow
def test_quick_run_loads_both_pipelines_cached_and_not(quick_run):
    _, saved = quick_run
    loading = saved["data_loading"]
    ours = [row for row in saved["models"]["rows"] if row["model"] == "resnext50_32x4d"]
    assert loading["train_volumes_per_s"] == max(row["train"]["volumes_per_s"] for row in ours)
    pipelines = loading["pipelines"]
    assert sorted(pipelines) == [
        "classification_memory",
        "classification_none",
        "segmentation_memory",
        "segmentation_none",
    ]
    for result in pipelines.values():
        assert positive(result["volumes_per_s"]) and positive(result["seconds"])
        assert result["volumes"] > 0 and result["volumes"] % BATCH == 0
    # The cache changes how fast the cases come, not which.
    for pipeline in ("classification", "segmentation"):
        cached, uncached = pipelines[f"{pipeline}_memory"], pipelines[f"{pipeline}_none"]
        assert cached["volumes"] == uncached["volumes"]
