"""`make bench-seg` in its quick mode: every network trains and validates, and the table has a
row per network with its ratios to the best other."""

import csv
import json
from pathlib import Path

import pytest

from benchmarks import bench_seg


def test_the_ratios_compare_each_network_with_the_best_other():
    seed = {"dice_tc": 0.5, "dice_wt": 0.7, "dice_et": 0.3, "hd95_tc": 8.0, "hd95_wt": 10.0}
    better = {**seed, "dice_tc": 0.7, "dice_wt": 0.9, "hd95_wt": 5.0}
    table = bench_seg.summarise(
        {"ours": [{**seed, "steps": 90}, {**seed, "steps": 110}], "peer": [better, better]}
    )
    ours = next(line for line in table if line.startswith("| ours"))
    assert ours.startswith("| ours | 100 | 0.500 ± 0.000 |")
    assert ours.endswith("| 0.750 | 2.000 |")  # (0.5+0.7)/(0.7+0.9), 10/5


@pytest.mark.slow  # three networks trained and validated in processes of their own
def test_quick_mode_runs_every_network(tiny_phantom, tmp_path, capsys):
    bench_seg.main(["--quick", "--data-dir", str(tiny_phantom), "--out", str(tmp_path)])
    table = (tmp_path / "results.md").read_text().splitlines()
    for name in bench_seg.NETWORKS:
        assert any(line.startswith(f"| {name} |") for line in table)
        assert any(line.startswith(f"- {name}: trained ") for line in table)
    pairs = [line for line in table if line.endswith(("| yes |", "| no |", "(< 10) |"))]
    networks = len(bench_seg.NETWORKS)
    assert len(pairs) == networks * (networks - 1) // 2 * len(bench_seg.CASE_SCORES)
    results = json.loads((tmp_path / "results.json").read_text())
    for name, chosen in results["settings"].items():
        times = chosen["seconds_per_step"]
        assert chosen["chosen"] == min(times, key=times.get), name


def test_each_network_trains_in_its_fastest_memory_format_and_norm(tmp_path, monkeypatch):
    def fake_resnext3d(args, cwd):
        runs = cwd / "runs" / "brats_seg"
        runs.mkdir(parents=True, exist_ok=True)
        folder = runs / f"run{len(list(runs.iterdir()))}"
        folder.mkdir()
        channels_last = args[args.index("--model.init_args.channels_last") + 1] == "true"
        step = 0.2 if channels_last else 0.1  # contiguous faster, as for SegResNet on this CPU
        step += 0.05 if "batch" in args else 0.0  # and its default norm faster than batch norm
        seconds = [5.0] * bench_seg.PROBE_WARMUP_STEPS + [step] * 8  # one-off costs first
        (folder / "step_times.json").write_text(json.dumps(seconds))

    monkeypatch.setattr(bench_seg, "run", fake_resnext3d)
    norms = {"group": [], "batch": ["--model.init_args.network.init_args.norm", "batch"]}
    arguments, fastest, medians = bench_seg.fastest_setting([], norms, [], tmp_path)
    assert fastest == "contiguous, group norm"
    assert arguments == ["--model.init_args.channels_last", "false"]
    assert medians == pytest.approx({
        "channels_last_3d, group norm": 0.2, "channels_last_3d, batch norm": 0.25,
        "contiguous, group norm": 0.1, "contiguous, batch norm": 0.15,
    })  # fmt: skip


def test_every_network_offers_its_norms_and_the_quick_bench_knows_them():
    assert set(bench_seg.NORMS) == set(bench_seg.NETWORKS)
    assert all(len(norms) >= 2 for norms in bench_seg.NORMS.values())


def test_a_second_bench_run_reads_its_own_runs_and_keeps_the_earlier_ones(tmp_path, monkeypatch):
    """The folders of an earlier `make bench-seg` into the same --out are neither read as this
    run's nor deleted."""
    validated_runs = []

    def fake_resnext3d(args, cwd):
        """Make a run folder as `resnext3d fit|validate` would, with its metrics.csv."""
        runs = cwd / "runs" / "brats_seg"
        runs.mkdir(parents=True, exist_ok=True)
        folder = runs / f"run{len(list(runs.iterdir()))}"
        folder.mkdir()
        invocation = len(validated_runs)
        if args[0] == "fit":
            rows = [{"step": step, "train/loss": 1.0} for step in (9, 19 + invocation)]
        else:
            validated_runs.append(Path(args[args.index("--run") + 1]))
            rows = [{"val/dice_mean": invocation / 10, "val/dice_tc": invocation / 10}]
            (folder / "scores").mkdir()
            (folder / "scores" / "val_cases.csv").write_text(f"case_id,dice_tc\nc1,{invocation}\n")
        with (folder / "metrics.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    monkeypatch.setattr(bench_seg, "run", fake_resnext3d)
    first = bench_seg.train_and_validate([], 0, 5.0, [], tmp_path)
    second = bench_seg.train_and_validate([], 0, 5.0, [], tmp_path)
    assert first == {"dice_mean": 0.0, "dice_tc": 0.0, "steps": 19, "cases": {"c1": {"dice_tc": 0}}}
    assert second["steps"] == 20 and second["dice_mean"] == 0.1
    assert second["cases"] == {"c1": {"dice_tc": 1.0}}
    runs = tmp_path / "runs" / "brats_seg"
    assert validated_runs == [runs / "run0", runs / "run2"]  # each the state it just trained
    assert sorted(path.name for path in runs.iterdir()) == ["run0", "run1", "run2", "run3"]
