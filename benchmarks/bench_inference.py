"""Whole-case CPU segmentation per inference engine: latency, peak memory and the masks'
agreement with PyTorch's float32 ones.

Each engine predicts the phantom's validation cases as ``resnext3d predict --run RUN --engine
ENGINE`` does (the same data loading, sliding window, mirroring, post-processing and writer),
in a process of its own, so that its peak resident memory (the high-water mark, ru_maxrss) is
its own: that of a predict process, Python, torch and the engine included. A callback
(:class:`CaseTimer`) times each case and its stages; a case's latency is the time from the end of
one case to the end of the next, which holds one case's loading, prediction and writing, and the
table gives the median over the cases after the first (whose time includes the engines' first-run
set-up). The cases are the validation half of a phantom with BraTS's geometry (240x240x155
files at 1 mm), so that resampling onto the files' grid and post-processing cost what they cost
on real cases; the network is `experiments/brats_seg.yaml`'s (3 mm voxels, 32³ windows), briefly
trained on the default phantom (``--run`` for another run), exported to ONNX and
``torch.export`` before any clock; the masks of each engine are compared voxel by voxel with
those of PyTorch float32 with the same mirroring.

    python -m benchmarks.bench_inference [--cases 5] [--mirror-cases 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import lightning as L
import nibabel as nib
import numpy as np
import torch

from benchmarks.measure import OtherProcessesCpu
from resnext3d.data.datamodule import PHANTOM_DIR, PHANTOM_SEED
from resnext3d.data.phantom import ensure_phantom
from resnext3d.training.performance import cpu_has_native_bf16

ROOT = Path(__file__).parents[1]
EXPERIMENT = ROOT / "experiments" / "brats_seg.yaml"
REFERENCE = "torch fp32"
ENGINES: dict[str, list[str]] = {
    REFERENCE: ["--engine", "torch", "--trainer.precision", "32-true"],
    "torch bf16-mixed": ["--engine", "torch", "--trainer.precision", "bf16-mixed"],
    "torch.export": ["--engine", "torch-export"],
    "onnxruntime": ["--engine", "onnxruntime"],
    "openvino": ["--engine", "openvino"],
}
MIRRORING = {"no": [], "8 flips": ["--model.init_args.mirror_axes", "[0, 1, 2]"]}
BRATS_SHAPE, BRATS_SPACING = (240, 240, 155), (1.0, 1.0, 1.0)
POSTPROCESSING = "--model.init_args.postprocessing"
# The BraTS post-processing of the README's validate example: connected components cleaned.
PREDICT = [
    POSTPROCESSING, "resnext3d.tasks.RegionPostprocessing",
    f"{POSTPROCESSING}.init_args.min_component_mm3", "100",
    f"{POSTPROCESSING}.init_args.enhancing_min_mm3", "500",
    "--data.init_args.predict_split", "val",
    "--data.init_args.val_fraction", "0.5",
    "--data.init_args.cache", "none",  # every case read from its files, as a deployment would
    "--data.init_args.num_workers", "0",  # loading counted in the case's time, not hidden
    "--trainer.enable_progress_bar", "false",
]  # fmt: skip
STAGES = (
    "load and resample",
    "network",
    "sliding window (stitching)",
    "to file grid",
    "post-processing",
    "label map",
    "write",
)


class CaseTimer(L.Callback):
    """Times each predicted case and its stages into `out` (JSON), with the process's memory.

    The stages are timed by wrapping, for this process only, the functions the task calls:
    the data set's transforms, the network, MONAI's sliding window (its time less the network's
    is the stitching), the resampling onto the files' grid, the post-processing, the label map
    and the writer's save. What is left of a case's time is the sigmoid, threshold, flips and
    Lightning's own work."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.cases: list[dict[str, float]] = []
        self.current: dict[str, float] = defaultdict(float)

    def _timed(self, stage: str, function: Callable) -> Callable:
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.current[stage] += time.perf_counter() - start

        return timed

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        import resnext3d.tasks.segmentation as segmentation
        from resnext3d.training.callbacks import SegmentationWriter

        dataset = trainer.datamodule._datasets["predict"]
        dataset.transform = self._timed("load and resample", dataset.transform)
        network = pl_module.network
        network.forward = self._timed("network", network.forward)
        for name, stage_name in (
            ("sliding_window_inference", "sliding window"),
            ("thresholded_on_file_grid", "to file grid"),
            ("regions_to_labels", "label map"),
        ):
            setattr(segmentation, name, self._timed(stage_name, getattr(segmentation, name)))
        if pl_module.postprocessing is not None:
            pl_module.postprocessing = self._timed("post-processing", pl_module.postprocessing)
        for callback in trainer.callbacks:
            if isinstance(callback, SegmentationWriter):
                callback.save = self._timed("write", callback.save)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rss_before_cases = _resident_mib()
        self.other_processes = OtherProcessesCpu().__enter__()
        self.last = time.perf_counter()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *_) -> None:
        now = time.perf_counter()
        case = dict(self.current)
        case["latency"] = now - self.last
        case["sliding window (stitching)"] = case.pop("sliding window", 0) - case.get("network", 0)
        self.cases.append(case)
        self.current.clear()
        self.last = now

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from resnext3d.training.callbacks import run_dir

        self.other_processes.__exit__(None, None, None)
        result = {
            "cases": self.cases,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_cases_mib": self.rss_before_cases,
            "other_processes_cpu_share": self.other_processes.share,
            "predictions": str(run_dir(trainer) / "predictions"),
            "threads": torch.get_num_threads(),
        }
        self.out.write_text(json.dumps(result, indent=1))


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def _resident_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def trained_run(data_dir: Path, out: Path, quick: bool) -> Path:
    """A brief fit of brats_seg.yaml on `data_dir` (reused when it is there): the masks'
    agreement means something only for a network whose probabilities are not all near 0.5."""
    run = (out / "train" / "brats_seg" / "run").resolve()
    if (run / "checkpoints" / "last.ckpt").is_file():
        return run
    steps = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1"] if quick else [
        "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "40"]  # fmt: skip
    command = [sys.executable, "-m", "resnext3d", "fit", "--config", str(EXPERIMENT),
               "--data.init_args.data_dir", str(data_dir), "--run_dir", str(run),
               "--trainer.enable_progress_bar", "false", *steps]  # fmt: skip
    subprocess.run(command, check=True, cwd=ROOT)
    return run


def measure(
    run: Path, data_dir: Path, engine: list[str], mirroring: list[str], cases: int, out: Path
) -> dict:
    """One engine's prediction of `cases` cases in a process of its own; what CaseTimer
    wrote."""
    timer = {"class_path": "benchmarks.bench_inference.CaseTimer", "init_args": {"out": str(out)}}
    command = [sys.executable, "-m", "resnext3d", "predict", "--run", str(run), *engine,
               "--data.init_args.data_dir", str(data_dir), *PREDICT, *mirroring,
               "--trainer.limit_predict_batches", str(cases),
               f"--trainer.callbacks+={json.dumps(timer)}"]  # fmt: skip
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def agreement(predictions: Path, reference: Path) -> tuple[float, int]:
    """The share of voxels whose label equals the reference's, and how many differ."""
    equal = total = 0
    for path in sorted(reference.iterdir()):
        expected = np.asarray(nib.load(path).dataobj)
        labels = np.asarray(nib.load(predictions / path.name).dataobj)
        equal += int((labels == expected).sum())
        total += expected.size
    return equal / total, total - equal


def summarise(results: dict[tuple[str, str], dict]) -> list[str]:
    rows = [
        "| engine | mirroring | median s/case | loading | network | stitching | "
        "post-processing | RSS MiB before cases, peak | voxels equal to torch fp32 | "
        "others' CPU use |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for (mirroring, engine), result in results.items():
        cases = result["cases"][1:] or result["cases"]  # the first holds the set-up
        median = {
            stage: statistics.median(case.get(stage, 0.0) for case in cases)
            for stage in ("latency", *STAGES)
        }
        after = sum(median[stage] for stage in STAGES[3:])  # on the files' grid
        share, differing = result["agreement"]
        rows.append(
            f"| {engine} | {mirroring} | {median['latency']:.2f} | "
            f"{median['load and resample']:.2f} | {median['network']:.2f} | "
            f"{median['sliding window (stitching)']:.2f} | {after:.2f} | "
            f"{result['rss_before_cases_mib']:.0f}, {result['peak_rss_mib']:.0f} | "
            f"{share:.4%} ({differing} differ) | {result['other_processes_cpu_share']:.0%} |"
        )
    return rows


def stage_shares(result: dict) -> str:
    """Each stage's share of the median case, for the reference engine."""
    cases = result["cases"][1:] or result["cases"]
    latency = statistics.median(case["latency"] for case in cases)
    parts = [
        f"{stage} {statistics.median(case.get(stage, 0.0) for case in cases) / latency:.0%}"
        for stage in STAGES
    ]
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_inference", description=__doc__
    )
    parser.add_argument("--run", type=Path, help="a segmentation run (default: a brief fit)")
    parser.add_argument("--data-dir", type=Path, help="BraTS cases (default: the phantom)")
    parser.add_argument("--cases", type=int, default=5, help="cases per engine")
    parser.add_argument("--mirror-cases", type=int, default=3, help="cases with mirroring")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 small cases without mirroring, a network of one training step",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results/inference"))
    args = parser.parse_args(argv)
    out = args.out.resolve()
    # Generated before any clock; twice the cases, half of them validated.
    if args.data_dir:
        data_dir = args.data_dir.resolve()
    elif args.quick:
        data_dir = ensure_phantom(out / "phantom_quick", 4, PHANTOM_SEED).resolve()
    else:
        data_dir = ensure_phantom(
            out / "phantom_brats_size", 2 * args.cases, PHANTOM_SEED, BRATS_SHAPE, BRATS_SPACING
        ).resolve()
    training_data = data_dir if args.quick else ensure_phantom(PHANTOM_DIR, 100, PHANTOM_SEED)
    run = args.run.resolve() if args.run else trained_run(training_data.resolve(), out, args.quick)
    cases = {"no": 2, "8 flips": 0} if args.quick else {
        "no": args.cases, "8 flips": args.mirror_cases}  # fmt: skip
    from resnext3d.deploy import export_run

    for export_format in ("onnx", "torch-export"):
        export_run(run, export_format)
    engines = {
        name: engine
        for name, engine in ENGINES.items()
        if "bf16" not in name or cpu_has_native_bf16()
    }
    results: dict[tuple[str, str], dict] = {}
    started = time.perf_counter()
    for mirroring, mirror_arguments in MIRRORING.items():
        if not cases[mirroring]:
            continue
        for name, engine in engines.items():
            timings = out / f"{name.replace(' ', '_')}-{mirroring.replace(' ', '_')}.json"
            result = measure(run, data_dir, engine, mirror_arguments, cases[mirroring], timings)
            reference = results.get((mirroring, REFERENCE), result)["predictions"]
            result["agreement"] = agreement(Path(result["predictions"]), Path(reference))
            results[mirroring, name] = result
            print(f"  {name}, mirroring {mirroring}: done", flush=True)
    load = max(result["other_processes_cpu_share"] for result in results.values())
    table = [
        f"{_cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; validation cases of {data_dir.name} ({cases['no']} "
        f"without mirroring, {cases['8 flips']} with), the median over all but the first; other "
        f"processes used up to {load:.0%} of the CPUs while an engine ran",
        "",
        *summarise(results),
        "",
        f"Stages of a {REFERENCE} case without mirroring: "
        + stage_shares(results["no", REFERENCE]),
    ]
    print("\n" + "\n".join(table))
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text("\n".join(table) + "\n")
    (out / "results.json").write_text(
        json.dumps({f"{m} | {e}": r for (m, e), r in results.items()}, indent=1)
    )


if __name__ == "__main__":
    main()
