"""`resnext3d study`: variants of equal and double complexity, runs in the study's directory,
finished runs skipped, killed ones resumed, the three result files, failed runs, and a stopped
study stopping its fit."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from resnext3d import sweep
from resnext3d.models import count_parameters
from resnext3d.models.complexity import bottleneck_parameters, complexity_table
from resnext3d.models.resnext import ResNeXt
from resnext3d.study import paired_over_replicates, study_main, study_parser
from resnext3d.study.config import StudyConfig, parse_study
from resnext3d.study.results import best_case_scores, paired_table

ROOT = Path(__file__).parents[1]
TESTS = Path(__file__).parent
STUDIES = sorted((ROOT / "experiments" / "studies").glob("*.yaml"))
REFERENCE_3D = bottleneck_parameters(1, 64, 3)


def write_study(tmp_path: Path, **config) -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def block_parameters(model: ResNeXt) -> int:
    """The parameters of the second conv2-stage block's convolutions: 256 channels in and out,
    the block `resnext3d complexity` counts."""
    block = model.layer1[1]
    return sum(conv.weight.numel() for conv in (block.conv1, block.conv2, block.conv3))


def load_study(path: Path, *overrides: str):
    """The study `resnext3d study PATH [overrides]` runs, its variants counted."""
    parser = study_parser()
    namespace = parser.parse_args(["--config", str(path), *overrides])
    for key in ("config", "print_commands", "slurm_array", "task"):
        namespace.pop(key)
    return parse_study(StudyConfig(**parser.instantiate(namespace).as_dict()), path)


# Counting builds every variant's network through the CLI (about a second each): the default
# suite loads one here, the others run with the slow tests.
FAST_STUDIES = ("cpu_phantom",)  # the segmentation series test loads cpu_seg_anatomical


@pytest.mark.parametrize(
    "path",
    [pytest.param(path, marks=() if path.stem in FAST_STUDIES else pytest.mark.slow)
     for path in STUDIES],
    ids=lambda path: path.stem,
)  # fmt: skip
def test_the_study_configs_load_from_the_repository_root(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    study = load_study(path)
    assert len(study.runs) == len(study.variants) * len(study.seeds) * len(study.folds)
    assert len({run.name for run in study.runs}) == len(study.runs)
    assert all(variant.parameters > 0 and variant.gmacs > 0 for variant in study.variants)


def test_equal_complexity_widths_and_parameters_are_the_complexity_tables(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    path = write_study(
        tmp_path,
        base="brats_cls",
        reference={"cardinality": 1, "width": 64},
        layers=[2, 1, 1, 1],
        equal_complexity=[row["cardinality"] for row in complexity_table(3)],
        double_complexity={"wider": {"cardinality": 1}, "more_groups": {"cardinality": 2}},
        overrides={"data": {"init_args": {"roi_size": [32, 32, 32]}}},
    )
    study = load_study(path)
    equal = [v for v in study.variants if v.group == "equal"]
    assert [(v.cardinality, v.width) for v in equal] == [
        (row["cardinality"], row["equal_width"]) for row in complexity_table(3)
    ]
    for variant, row in zip(equal, complexity_table(3), strict=True):
        with torch.device("meta"):
            model = ResNeXt(
                preset="resnext50_32x4d",
                cardinality=variant.cardinality,
                base_width=variant.width,
                layers=variant.layers,
                in_channels=4,
                num_classes=2,
            )
        assert block_parameters(model) == row["equal_parameters"]
        assert variant.parameters == count_parameters(model)
        assert variant.depth == 17  # the stem, 5 blocks of 3, the classifier
    double = {v.group: v for v in study.variants if v.group != "equal"}
    wider, more_groups = double["wider"], double["more_groups"]
    assert (more_groups.cardinality, more_groups.width) == (2, 64)  # the paper's 2×64d
    assert bottleneck_parameters(1, wider.width, 3) == pytest.approx(2 * REFERENCE_3D, rel=0.02)


def test_parameters_are_counted_on_the_network_the_experiment_builds(tmp_path, monkeypatch):
    """An argument of the base experiment's network that the study does not vary (squeeze-and-
    excitation here) is in every count, and GMACs follow the data's crop size."""
    monkeypatch.chdir(ROOT)
    counts = {}
    for se in (None, 4):
        for crop in (32, 64):
            path = write_study(
                tmp_path,
                base="brats_cls",
                reference={"cardinality": 1, "width": 64},
                layers=[1, 1, 1, 1],
                equal_complexity=[4],
                overrides={
                    "model": {"init_args": {"network": {"init_args": {"se_reduction": se}}}},
                    "data": {"init_args": {"roi_size": [crop] * 3}},
                },
            )
            (variant,) = load_study(path).variants
            counts[se, crop] = variant.parameters, variant.gmacs
    assert counts[4, 32][0] > counts[None, 32][0]
    assert counts[None, 64][0] == counts[None, 32][0]
    assert counts[None, 64][1] == pytest.approx(8 * counts[None, 32][1], rel=0.05)


def test_the_segmentation_series_varies_the_unets_blocks_at_equal_complexity(monkeypatch):
    monkeypatch.chdir(ROOT)
    study = load_study(ROOT / "experiments" / "studies" / "cpu_seg_anatomical.yaml")
    blocks = {v.cardinality: bottleneck_parameters(v.cardinality, v.width, 3, 32)
              for v in study.variants}  # fmt: skip
    reference = bottleneck_parameters(8, 4, 3, 32)
    assert all(abs(count / reference - 1) < 0.05 for count in blocks.values()), blocks
    parameters = [variant.parameters for variant in study.variants]
    assert max(parameters) / min(parameters) < 1.1
    assert {v.depth for v in study.variants} == {26}  # the 4 stages a 32³ patch at 3 mm plans


def test_a_study_config_error_names_the_file_and_the_key(tmp_path, capsys):
    path = write_study(tmp_path, base="brats_cls", cardinalities=[1, 2])
    assert study_main([str(path), "--print_commands"]) == 2
    error = capsys.readouterr().err
    assert f"{path}: " in error and "cardinalities" in error


def write_toy_study(tmp_path: Path, phantom: Path, max_epochs: int = 1) -> Path:
    """Two variants of a tiny network, one seed, two training steps and one validation batch an
    epoch."""
    return write_study(
        tmp_path,
        base=str(ROOT / "experiments" / "brats_cls.yaml"),
        reference={"cardinality": 1, "width": 64},
        layers=[1, 1, 1, 1],
        equal_complexity=[1, 4],
        seeds=[0],
        overrides={
            "model": {"init_args": {"network": {"init_args": {"preset": "resnext14_tiny"}}}},
            "trainer": {
                "max_epochs": max_epochs, "limit_train_batches": 2, "limit_val_batches": 1,
                "accelerator": "cpu", "enable_progress_bar": False,
                "enable_model_summary": False, "log_every_n_steps": 1,
            },
            "data": {"init_args": {
                "data_dir": str(phantom), "roi_size": [16, 16, 16], "batch_size": 2,
                "num_workers": 0, "spacing": [4.0, 4.0, 4.0],
            }},
        },
    )  # fmt: skip


@pytest.fixture
def toy_study(tiny_phantom, tmp_path) -> tuple[Path, Path]:
    return write_toy_study(tmp_path, tiny_phantom), tmp_path / "study"


@pytest.mark.slow  # trains the toy study's runs, each a process of its own
def test_a_toy_study_runs_end_to_end_and_a_second_run_launches_nothing(
    toy_study, monkeypatch, capsys
):
    config, out_dir = toy_study
    assert study_main([str(config), "--out_dir", str(out_dir)]) == 0
    for name in ("results.csv", "results.md", "results.png"):
        assert (out_dir / name).stat().st_size > 0, name
    results, paired = (out_dir / "results.md").read_text().split("\n\n", 1)
    table = results.splitlines()
    assert len(table) == 4 and len({line.count("|") for line in table}) == 1
    (difference,) = [line for line in paired.splitlines() if line.startswith("| resnext14_4x")]
    assert difference.endswith("| – | 1 | – |")  # one seed: no interval, no estimate
    with (out_dir / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["C"], row["d"], row["depth"]) for row in rows] == [
        ("1", "64", "14"),
        ("4", "28", "14"),
    ]
    for row in rows:
        assert row["metric"] == "val/auroc" and row["runs"] == "1"
        assert 0.0 <= float(row["mean"]) <= 1.0 and row["seed0"] == row["mean"]
        assert float(row["seconds_per_step"]) > 0
        run = out_dir / "runs" / f"{row['variant']}-seed0"
        tags = json.loads((run / "tags.json").read_text())
        assert (tags["C"], tags["d"], tags["depth"], tags["seed"]) == (
            int(row["C"]), int(row["d"]), 14, 0
        )  # fmt: skip
        assert f"study/C: {row['C']}" in (run / "hparams.yaml").read_text()
        assert (run / "checkpoints" / "last.ckpt").is_file()
        assert any(run.glob("events.out.tfevents.*"))
    capsys.readouterr()

    launched = []
    monkeypatch.setattr(subprocess, "Popen", lambda *args, **kwargs: launched.append(args))
    assert study_main([str(config), "--out_dir", str(out_dir)]) == 0
    assert launched == []
    assert capsys.readouterr().out.count("finished, skipped") == 2

    # A run killed after its checkpoint, without its completion record, is resumed in place.
    killed = out_dir / "runs" / "resnext14_4x28d-seed0"
    (killed / sweep.FINISHED_FILE).unlink()

    class FinishingFit:
        def __init__(self, command, **kwargs):
            launched.append(command)
            environments.append(kwargs["env"])
            (killed / sweep.FINISHED_FILE).write_text("{}")

        def wait(self) -> int:
            return 0

    environments = []
    monkeypatch.setattr(subprocess, "Popen", FinishingFit)
    assert study_main([str(config), "--out_dir", str(out_dir)]) == 0
    (command,) = launched
    assert command[command.index("fit") :] == ["fit", "--resume", str(killed)]
    # wandb names, groups and tags the resumed fit as it did the new one.
    (environment,) = environments
    assert environment["WANDB_NAME"] == "toy/resnext14_4x28d-seed0"
    assert environment["WANDB_RUN_GROUP"] == "toy"
    assert set(environment["WANDB_TAGS"].split(",")) >= {"C=4", "d=28", "seed=0"}


def test_print_commands_and_slurm_array(toy_study, capsys):
    config, out_dir = toy_study
    assert study_main([str(config), "--out_dir", str(out_dir), "--print_commands"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.startswith("resnext3d fit --config ") for line in lines)
    assert "--model.init_args.network.init_args.cardinality=4 " in lines[1]
    assert f"--run_dir={(out_dir / 'runs' / 'resnext14_4x28d-seed0').resolve()} " in lines[1]

    script = out_dir / "study.sbatch"
    assert study_main([str(config), "--out_dir", str(out_dir), "--slurm_array", str(script)]) == 0
    text = script.read_text()
    assert "#SBATCH --array=0-1" in text
    assert '--task "$SLURM_ARRAY_TASK_ID"' in text


@pytest.mark.slow  # trains the toy study's runs, each a process of its own
def test_a_failed_run_is_failed_in_the_results_and_the_sweep_goes_on(toy_study, capsys):
    config, out_dir = toy_study
    # A run directory whose fit cannot resume it (a checkpoint, no config): `fit --resume` exits 1.
    broken = out_dir / "runs" / "resnext14_1x64d-seed0"
    (broken / "checkpoints").mkdir(parents=True)
    (broken / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    assert study_main([str(config), "--out_dir", str(out_dir)]) == 1
    with (out_dir / "results.csv").open() as handle:
        failed, trained = csv.DictReader(handle)
    assert (failed["seed0"], failed["runs"]) == ("failed", "0")
    assert trained["runs"] == "1" and 0.0 <= float(trained["seed0"]) <= 1.0
    table = (out_dir / "results.md").read_text().splitlines()
    assert table[2].endswith("| failed |") and not table[3].endswith("| failed |")
    err = capsys.readouterr().err
    assert f"failed: its fit exited 1; its output: {broken / 'study.log'}" in err
    assert "1 of 2 runs failed" in err


def start_study(config: Path, out_dir: Path) -> subprocess.Popen:
    """`resnext3d study` in a process group of its own, as a terminal starts a command."""
    environment = {**os.environ, "PYTHONPATH": str(TESTS)}
    environment.pop("RESNEXT3D_RUN_VERSION", None)
    return subprocess.Popen(
        [sys.executable, "-m", "resnext3d", "study", str(config), "--out_dir", str(out_dir)],
        cwd=out_dir.parent,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def alive(pid: int) -> bool:
    """Whether process `pid` exists and has not exited (an orphan's zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {seconds} s"
        time.sleep(0.1)


def children(pid: int) -> list[int]:
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]


@pytest.fixture
def kill_afterwards():
    """Pids to SIGKILL after the test where they still live: the test's study and its fit."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def long_toy_study(tiny_phantom, tmp_path) -> tuple[Path, Path]:
    """The toy study with epochs enough to train until it is stopped."""
    return write_toy_study(tmp_path, tiny_phantom, max_epochs=100_000), tmp_path / "study"


@pytest.mark.parametrize(
    "stop",
    [
        pytest.param(signal.SIGTERM, id="sigterm-to-the-study", marks=pytest.mark.slow),
        pytest.param(signal.SIGINT, id="ctrl-c-to-its-group", marks=pytest.mark.slow),
    ],
)
def test_a_stopped_study_stops_its_fit_and_writes_no_results(long_toy_study, kill_afterwards, stop):
    config, out_dir = long_toy_study
    study = start_study(config, out_dir)
    kill_afterwards.append(study.pid)
    run = out_dir / "runs" / "resnext14_1x64d-seed0"
    wait_until(
        lambda: study.poll() is not None or (run / "checkpoints" / "last.ckpt").is_file(),
        seconds=180,
        what="first checkpoint",
    )
    assert study.poll() is None, study.communicate()
    (fit,) = children(study.pid)
    kill_afterwards.append(fit)
    if stop == signal.SIGTERM:
        study.send_signal(stop)
    else:  # what a terminal's Ctrl-C does: SIGINT to every process of the foreground group
        os.killpg(study.pid, stop)

    # Within the fit's grace period to save its state (STOP_GRACE_SECONDS), and a margin.
    _, err = study.communicate(timeout=90)
    assert study.returncode == 128 + stop, err
    assert not alive(fit)
    assert f"stopped by {stop.name}, its fit exited" in err  # of itself, not killed
    assert str(run / "study.log") in err
    assert sweep.run_state(run) == "resumable"  # the rerun continues it
    assert not (out_dir / "runs" / "resnext14_4x28d-seed0").exists()  # no further run started
    assert not (out_dir / "results.csv").exists()


@pytest.mark.slow  # trains the toy study's runs, each a process of its own
def test_a_fit_does_not_outlive_a_study_killed_with_sigkill(long_toy_study, kill_afterwards):
    config, out_dir = long_toy_study
    study = start_study(config, out_dir)
    kill_afterwards.append(study.pid)
    wait_until(lambda: study.poll() is not None or children(study.pid), 120, what="fit process")
    (fit,) = children(study.pid)
    kill_afterwards.append(fit)
    study.kill()
    study.communicate()
    wait_until(lambda: not alive(fit), seconds=60, what="end of the orphaned fit")


def test_a_fit_that_ignores_the_stop_signal_is_killed_with_its_group_after_the_grace():
    # A "fit" that ignores SIGTERM, with a process of its own (a data-loader worker, say).
    script = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
        "print(worker.pid, flush=True); time.sleep(300)"
    )
    fit = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    worker = int(fit.stdout.readline())
    started = time.monotonic()
    try:
        assert sweep.stop_fit(fit, signal.SIGTERM, grace=1.0) == -signal.SIGKILL
        assert 1.0 <= time.monotonic() - started < 10
        wait_until(lambda: not alive(worker), seconds=10, what="end of the fit's worker")
    finally:
        for pid in (fit.pid, worker):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        fit.stdout.close()


def test_paired_differences_have_a_t_interval_and_the_replicates_a_target_would_need():
    reference = {"seed0": 0.70, "seed1": 0.80, "seed2": 0.75, "seed3": 0.9}
    variant = {"seed0": 0.72, "seed1": 0.83, "seed2": 0.76}  # seed3 failed: left out
    difference = paired_over_replicates(variant, reference, target_half_width=0.01)
    # Differences 0.02, 0.03, 0.01: mean 0.02, s = 0.01, t(0.975, 2) = 4.303.
    assert difference.n == 3
    assert difference.mean == pytest.approx(0.02)
    assert difference.high - difference.mean == pytest.approx(4.303 * 0.01 / 3**0.5, rel=1e-3)
    assert difference.low < 0 < difference.high  # three seeds cannot resolve it
    assert difference.needed == 4  # 1.96 × 0.01 / √n ≤ 0.01


def write_run_with_case_scores(run_dir: Path, scores: dict[str, tuple[float, float]]) -> None:
    """A finished segmentation run as the study reads it: last.ckpt naming its best checkpoint
    (epoch 3), and the per-case scores validation wrote at that epoch (dice_tc, dice_wt)."""
    (run_dir / "checkpoints").mkdir(parents=True)
    best = run_dir / "checkpoints" / "best-epoch003.ckpt"
    torch.save({"epoch": 3, "state_dict": {}}, best)
    state = {"best_model_path": str(best), "best_model_score": 0.5, "monitor": "val/dice_mean"}
    callbacks = {"ModelCheckpoint{'monitor': 'val/dice_mean'}": state}
    torch.save({"state_dict": {}, "callbacks": callbacks}, run_dir / "checkpoints" / "last.ckpt")
    (run_dir / "scores").mkdir()
    lines = ["case_id,dice_tc,lesion_dice_tc,dice_wt"]
    lines += [f"{case},{tc},0.0,{wt}" for case, (tc, wt) in scores.items()]
    (run_dir / "scores" / "val_epoch003_cases.csv").write_text("\n".join(lines) + "\n")


def case_scores(run_dir: Path) -> dict[str, float]:
    """The run's per-case val/dice_mean at its best epoch, as the study collects them."""
    state = sweep.best_checkpoint_state(run_dir)
    return best_case_scores(run_dir, state["monitor"], state["best_model_path"])


def test_segmentation_runs_are_also_paired_case_by_case_at_their_best_epoch(tmp_path):
    cases = [f"case{i:02d}" for i in range(20)]
    reference = {case: (0.2 + 0.03 * i, 0.5) for i, case in enumerate(cases)}
    variant = {case: (tc + 0.02, wt) for case, (tc, wt) in reference.items()}
    write_run_with_case_scores(tmp_path / "reference", reference)
    write_run_with_case_scores(tmp_path / "variant", variant)

    scores = case_scores(tmp_path / "variant")
    assert scores["case05"] == pytest.approx((0.2 + 0.15 + 0.02 + 0.5) / 2)  # lesion-wise out
    rows = [
        {"group": "equal", "C": 1, "d": 13, "variant": "c1", "values": {"seed0": 0.5},
         "cases": {"seed0": case_scores(tmp_path / "reference")}},
        {"group": "equal", "C": 4, "d": 6, "variant": "c4", "values": {"seed0": 0.51},
         "cases": {"seed0": scores}},
    ]  # fmt: skip

    class OneReference:
        reference_cardinality = 1

    table = paired_table(OneReference(), rows, "val/dice_mean")
    (by_case,) = [line for line in table if line.startswith("| c4 |") and "20 × 1" in line]
    # Every case gains 0.01 in the mean of two regions: resolved over 20 cases of one seed.
    assert by_case.startswith("| c4 | +0.0100 | [+0.0100, +0.0100] |")
    assert by_case.endswith("| yes |")
