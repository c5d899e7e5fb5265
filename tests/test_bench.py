"""The benchmark: its ratios and tables on made-up measurements, its timing and memory meters on
trivial steps, its options, and one --quick run of the whole entry point (slow). Timings are
never asserted: they depend on the machine and on whatever else runs on it."""

import gc
import json
import math
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from benchmarks import bench, measure, report, step_profile, suites
from benchmarks.conv_rates import (
    ConvCase,
    conv_settings,
    grouped_cases_of,
    issue_cases,
    measure_rates,
)
from benchmarks.grouped_conv_attempts import MatmulGroupedConv3d, MergedGroupsConv3d
from resnext3d.models import count_macs, count_parameters, create_model
from resnext3d.training.performance import cpu_has_native_bf16

REPO = Path(__file__).resolve().parents[1]
SECTIONS = (
    "## Models",
    "## Conv3d rates, GFLOP/s: forward",
    "## Conv3d rates, GFLOP/s: forward + input and weight gradients",
    "## Where a resnext50_32x4d train step's time goes",
    "## Activation checkpointing",
    "## Data loading",
)
SAVED = {
    "machine",
    "settings",
    "models",
    "conv_rates",
    "step_profile",
    "checkpointing",
    "data_loading",
}


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
    dense_case, grouped_case = issue_cases(4, 256, 16, 32)
    # Dense: 100 GFLOP/s contiguous, 200 channels-last; grouped a quarter of that; bf16 twice.
    rates = [
        {
            "case": asdict(case),
            "setting": {"dtype": dtype, "channels_last": channels_last},
            "macs": 1,
            "forward_gflops_per_s": 2 * rate,
            "train_gflops_per_s": rate,
        }
        for case, scale in ((dense_case, 1.0), (grouped_case, 0.25))
        for dtype, dtype_scale in (("float32", 1.0), ("bfloat16", 2.0))
        for channels_last, format_scale in ((True, 200.0), (False, 100.0))
        for rate in [scale * dtype_scale * format_scale]
    ]
    conv = report.compare_with_conv_rates(
        rows,
        {"rates": rates, "other_processes_cpu_share": 0.0},
        dense_case.label,
        grouped_case.label,
    )
    profile = {
        **asdict(suites.OURS_BF16),
        **step_profile.shares_by_kind(
            [
                (
                    "aten::convolution_backward",
                    [[2, 8, 4, 4, 4], [2, 8, 4, 4, 4], [8, 2, 3, 3, 3]],
                    3.0,
                ),
                ("aten::mkldnn_convolution", [[2, 8, 4, 4, 4], [8, 8, 1, 1, 1]], 1.0),
                ("aten::native_batch_norm", [[2, 8, 4, 4, 4]], 1.0),
            ]
        ),
        "other_processes_cpu_share": 0.0,
    }
    profiles = {"input_shape": settings.input_shape, "profiles": {suites.OURS_BF16.key: profile}}
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
        "conv_rates": conv,
        "step_profile": profiles,
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


def test_a_steps_fractions_are_of_the_conv_rates_in_its_own_number_and_memory_format():
    sections = fabricated_sections(suites.QUICK)
    for row in sections["models"]["rows"]:
        dense = (2.0 if row["bf16"] else 1.0) * (200.0 if row["channels_last"] else 100.0)
        assert row["fraction_of_dense_conv"] == pytest.approx(row["train_gflops_per_s"] / dense)
        assert row["fraction_of_grouped_conv"] == pytest.approx(4 * row["fraction_of_dense_conv"])
    # A setting that was not measured (bf16 on a CPU without it) gives no fraction.
    row = report.compare_models([model_row(suites.OURS_BF16, 0.1, 0.1, 0.0)], suites.OURS_BF16.key)
    float32_only = [
        r for r in sections["conv_rates"]["rates"] if r["setting"]["dtype"] == "float32"
    ]
    conv = sections["conv_rates"]
    report.compare_with_conv_rates(row, {"rates": float32_only}, conv["dense"], conv["grouped"])
    assert row[0]["fraction_of_dense_conv"] is None


def test_profiled_operators_are_summed_by_kind_and_convolutions_keyed_by_groups_and_kernel():
    kind = step_profile.operator_kind
    # Forward: (input, weight); backward: (output gradient, input, weight).
    assert kind("aten::mkldnn_convolution", [[2, 128, 8, 8, 8], [128, 4, 3, 3, 3]]) == (
        "conv 3×3×3 grouped"
    )
    backward = [[2, 64, 4, 4, 4], [2, 64, 8, 8, 8], [64, 64, 3, 3, 3]]
    assert kind("aten::convolution_backward", backward) == "conv 3×3×3"
    assert kind("aten::mkldnn_convolution", [[2, 4, 64, 64, 64], [64, 4, 7, 7, 7]]) == "conv 7×7×7"
    assert kind("aten::native_batch_norm_backward", []) == "batch norm"
    assert kind("aten::_to_copy", []) == "casts and copies"
    assert kind("aten::_fused_adamw_", []) == "optimizer"
    assert kind("aten::threshold_backward", []) == "elementwise"
    assert kind("aten::something_new", []) == step_profile.OTHER
    # A backward operator's forward MACs: output elements × input channels per group × kernel.
    assert step_profile.conv_train_macs("aten::convolution_backward", backward) == (
        2 * 64 * 4**3 * 64 * 27
    )
    shares = step_profile.shares_by_kind(
        [
            (
                "aten::convolution_backward",
                [[2, 8, 4, 4, 4], [2, 8, 4, 4, 4], [8, 2, 3, 3, 3]],
                3.0,
            ),
            ("aten::mkldnn_convolution", [[2, 8, 4, 4, 4], [8, 2, 3, 3, 3]], 1.0),
            ("aten::native_batch_norm", [[2, 8, 4, 4, 4]], 4.0),
        ]
    )
    assert shares["total_s"] == 8.0 and shares["grouped_share"] == 0.5
    assert shares["kinds"]["batch norm"] == {"seconds": 4.0, "share": 0.5}
    assert shares["grouped_gflops_per_s"] == pytest.approx(6 * 2 * 8 * 64 * 2 * 27 / 4.0 / 1e9)


def test_a_profiled_step_finds_its_grouped_convolution_and_its_macs():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(16, 16, 3, padding=1, groups=4, bias=False)
    inputs = torch.randn(2, 16, 6, 6, 6, requires_grad=True)
    measured = step_profile.profile_step(lambda: conv(inputs).sum().backward(), torch.device("cpu"))
    assert 0 < measured["grouped_share"] <= 1
    assert measured["grouped_macs"] == count_macs(conv, inputs.shape)
    assert positive(measured["grouped_gflops_per_s"])


def test_conv_rates_cover_the_grouped_convolutions_of_a_network_and_every_setting():
    with torch.device("meta"):
        network = create_model("resnext14_tiny", in_channels=4, num_classes=2)
    cases = grouped_cases_of(network, (2, 4, 32, 32, 32))
    # resnext14_tiny: one block per stage, 8 groups of 4 to 32 channels; the stride in the
    # conv2 of stages 2-4, so each stage has one grouped case, on the stage's input maps.
    assert [(case.channels, case.groups, case.size, case.stride) for case in cases] == [
        (32, 8, 8, 1),
        (64, 8, 8, 2),
        (128, 8, 4, 2),
        (256, 8, 2, 2),
    ]
    assert [setting.dtype for setting in conv_settings(bf16=False)] == ["float32", "float32"]
    assert len(conv_settings(bf16=True)) == 4
    tiny = ConvCase("tiny", batch=1, channels=16, size=4, groups=4)
    measured = measure_rates([tiny], conv_settings(False), measure.Schedule(0, 0.0))["rates"]
    assert len(measured) == 2
    for rate in measured:
        assert rate["macs"] == 16 * 4 * 27 * 4**3
        assert positive(rate["forward_gflops_per_s"]) and positive(rate["train_gflops_per_s"])


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("swapped", [MatmulGroupedConv3d, MergedGroupsConv3d])
def test_the_attempted_grouped_convolutions_compute_the_convolution(swapped, stride):
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(32, 32, 3, stride=stride, padding=1, groups=8, bias=False)
    inputs = torch.randn(2, 32, 6, 6, 6).contiguous(memory_format=torch.channels_last_3d)
    inputs.requires_grad_(True)
    expected = conv(inputs)
    output_grad = torch.randn_like(expected)
    expected.backward(output_grad)
    expected_grads = conv.weight.grad.clone(), inputs.grad.clone()
    conv.weight.grad = inputs.grad = None
    conv.__class__ = swapped
    conv.merge = 4
    output = conv(inputs)
    output.backward(output_grad)
    # float32 sums in another order: the rounding of a few terms differs.
    tolerance = {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(output, expected, **tolerance)
    torch.testing.assert_close(conv.weight.grad, expected_grads[0], **tolerance)
    torch.testing.assert_close(inputs.grad, expected_grads[1], **tolerance)
    assert set(conv.state_dict()) == {"weight"}


def test_the_cardinality_series_is_timed_against_one_group_in_each_setting():
    variants = suites.cardinality_variants(bf16=True)
    pairs = {(v.cardinality, v.base_width) for v in variants}
    # The paper's 2D widths and the 3D equal-complexity widths (resnext3d complexity).
    assert {(1, 64), (2, 40), (4, 24), (8, 14), (32, 4)} <= pairs
    assert {(2, 43), (4, 28), (8, 18), (32, 7)} <= pairs
    assert len(variants) == 2 * len(pairs) and all(v.channels_last for v in variants)
    assert len(suites.cardinality_variants(bf16=False)) == len(pairs)
    with torch.device("meta"):
        built = suites.build_model(variants[-1])
    assert (built.cardinality, built.base_width) == (variants[-1].cardinality, 7)
    rows = [
        {
            **asdict(variant),
            "macs": 10**9,
            "parameters": 1000,
            "train": report.summarize([timing(0.1 * variant.cardinality)], 2),
        }
        for variant in variants
    ]
    for row in report.compare_cardinality(rows):
        assert row["step_ratio_to_one_group"] == pytest.approx(row["cardinality"])


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
    report.print_models(sections["models"])
    report.print_conv_rates(sections["conv_rates"])
    report.print_step_profile(sections["step_profile"], sections["conv_rates"])
    report.print_checkpointing(sections["checkpointing"])
    report.print_loading(sections["data_loading"], "fastest resnext50_32x4d")
    report.print_footer(full)
    stdout = capsys.readouterr().out
    assert all(heading in stdout for heading in SECTIONS)
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in stdout.splitlines()]
    printed = {(row[0].removesuffix(" †"), row[1]): row for row in cells if len(row) == 10}
    for row in sections["models"]["rows"]:
        line = printed[row["label"], report.settings_name(row)]
        assert line[0].endswith("†") == (row["key"] == suites.REFERENCE_CHANNELS_LAST.key)
        assert (
            line[3]
            == f"{row['train']['volumes_per_s']:.2f} ({row['ratios']['train_throughput']:.2f}×)"
        )
        grouped = row["fraction_of_grouped_conv"]
        assert line[9] == f"{100 * grouped:.0f}%"
    assert printed["MONAI SEResNeXt50 (reference)", "contiguous"][3] == "5.00 (1.00×)"
    # The conv rates: a row per convolution, the issue's pair first, a column per setting.
    dense = next(line for line in cells if line[0] == "dense (groups 1)")
    assert dense[1:] == ["4×256×16³", "400", "200", "800", "400"]  # forward: twice the train rate
    assert "Grouped over dense, forward + backward: float32 channels_last 0.25×" in stdout
    # The profile: its kinds' shares, and the grouped convolutions' rate inside the step.
    profiled = {line[0]: line[1] for line in cells if len(line) == 2}
    assert profiled["conv 3×3×3 grouped"] == "60% (3000 ms)"
    assert profiled["total"] == "100% (5000 ms)"
    assert "grouped convolutions take 60% of the step and run at" in stdout
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


def test_the_cardinality_table_prints_each_network_in_each_setting(capsys):
    rows = [
        {
            **asdict(variant),
            "macs": 11 * 10**9,
            "parameters": 25 * 10**6,
            "train": report.summarize([timing(0.5 if variant.cardinality == 1 else 1.0)], 2),
            "other_processes_cpu_share": 0.0,
        }
        for variant in suites.cardinality_variants(bf16=True)
    ]
    report.print_cardinality(
        {"input_shape": (2, 4, 64, 64, 64), "rows": report.compare_cardinality(rows)}
    )
    stdout = capsys.readouterr().out
    assert "## Cardinality's price" in stdout
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in stdout.splitlines()]
    printed = {line[0]: line for line in cells if len(line) == 7}
    assert printed["resnext50_1x64d"][1:] == [
        "1",
        "64",
        "25.00",
        "11.0",
        "0.500 (1.00×)",
        "0.500 (1.00×)",
    ]
    assert printed["resnext50_32x7d"][5:] == ["1.000 (2.00×)", "1.000 (2.00×)"]


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
    # Earlier tests' networks, freed by the collector while the meter runs, would lower the
    # resident size it measures from.
    gc.collect()
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
    assert settings.cardinality is None
    assert bench.parse_settings(["--cardinality"])[0].cardinality == "also"
    assert bench.parse_settings(["--cardinality", "only"])[0].cardinality == "only"


def test_main_prints_and_saves_every_section(monkeypatch, tmp_path, capsys):
    """The entry point's order of work, with the measurements replaced by made-up ones."""
    measured = {}

    def fake(section: str):
        def benchmark(settings, *_):
            measured.setdefault("sections", fabricated_sections(settings))
            return measured["sections"][section]

        return benchmark

    monkeypatch.setattr(bench, "benchmark_models", fake("models"))
    monkeypatch.setattr(bench, "benchmark_conv_rates", fake("conv_rates"))
    monkeypatch.setattr(bench, "benchmark_step_profile", fake("step_profile"))
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


def test_cardinality_only_measures_and_prints_the_c_series_alone(monkeypatch, tmp_path, capsys):
    def not_measured(*_):
        raise AssertionError("--cardinality only measured another section")

    for name in ("models", "conv_rates", "step_profile", "checkpointing", "loading"):
        monkeypatch.setattr(bench, f"benchmark_{name}", not_measured)
    rows = [
        {
            **asdict(variant),
            "macs": 10**9,
            "parameters": 1000,
            "train": report.summarize([timing(0.5)], 2),
            "other_processes_cpu_share": 0.0,
        }
        for variant in suites.cardinality_variants(bf16=False)
    ]
    fake = {"input_shape": (2, 4, 24, 24, 24), "rows": report.compare_cardinality(rows)}
    monkeypatch.setattr(bench, "benchmark_cardinality", lambda settings: fake)
    out = tmp_path / "run.json"
    assert bench.main(["--quick", "--cardinality", "only", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "## Cardinality's price" in stdout and "## Models" not in stdout
    assert set(json.loads(out.read_text())) >= {"machine", "settings", "cardinality"}


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
    conv = saved["conv_rates"]
    settings = {(r["setting"]["dtype"], r["setting"]["channels_last"]) for r in conv["rates"]}
    dtypes = {"float32", "bfloat16"} if BF16_KEY in MODEL_KEYS else {"float32"}
    assert settings == {(dtype, cl) for dtype in dtypes for cl in (True, False)}
    labels = {r["case"]["label"] for r in conv["rates"]}
    assert {conv["dense"], conv["grouped"]} <= labels and len(labels) > 2
    assert all(positive(r["train_gflops_per_s"]) for r in conv["rates"])
    assert all(positive(rows[key]["fraction_of_grouped_conv"]) for key in MODEL_KEYS)
    profiles = saved["step_profile"]["profiles"]
    assert sorted(profiles) == sorted(
        key for key in MODEL_KEYS if key.startswith("resnext50_32x4d_cl")
    )
    for profile in profiles.values():
        assert sum(kind["share"] for kind in profile["kinds"].values()) == pytest.approx(1)
        assert 0 < profile["grouped_share"] < 1


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
