"""``resnext3d study CONFIG [overrides]``: run every run of a study that has not finished, then
write its results."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from resnext3d.study.config import StudyConfig, StudyError, parse_study
from resnext3d.study.results import collect, write_results
from resnext3d.study.runs import fit_arguments, slurm_script, sweep_run
from resnext3d.sweep import SweepRun, run_sweep


def study_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="resnext3d study",
        description="Cardinality at equal complexity: one `resnext3d fit` run per variant and "
        "seed, then results.csv, results.md and results.png. Any key of the study config can be "
        "overridden, e.g. --seeds [0,1,2].",
        exit_on_error=False,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="a study config (YAML)")
    parser.add_class_arguments(StudyConfig, fail_untyped=True)
    parser.add_argument(
        "--print_commands",
        action="store_true",
        help="print each run's `resnext3d fit` command; train nothing",
    )
    parser.add_argument(
        "--slurm_array",
        type=str | None,
        default=None,
        help="write an sbatch script (this path) running the runs as a SLURM job array",
    )
    parser.add_argument("--task", type=int | None, default=None, help="run only this run (0-based)")
    return parser


def study_main(argv: Sequence[str] | None = None) -> int:
    """``resnext3d study CONFIG [overrides]``; the config may also come as ``--config CONFIG``.

    Exits 2 for a config that cannot be used, 1 if a run failed, 128 + the signal's number if
    SIGTERM or SIGINT stopped it."""
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--config", *argv]
    parser = study_parser()
    try:
        namespace = parser.parse_args(argv)
        given = namespace.pop("config")
        path = Path(str(given[-1])) if given else Path("study")
        options = {key: namespace.pop(key) for key in ("print_commands", "slurm_array", "task")}
        config = StudyConfig(**parser.instantiate(namespace).as_dict())
        study = parse_study(config, path)
    except StudyError as error:
        print(f"resnext3d study: error: {error}", file=sys.stderr)
        return 2
    except argparse.ArgumentError as error:
        source = f"{argv[1]}: " if argv[:1] == ["--config"] and len(argv) > 1 else ""
        print(f"resnext3d study: error: {source}{error}", file=sys.stderr)
        return 2
    runs = study.runs

    if options["print_commands"]:
        for run in runs:
            print(f"resnext3d {shlex.join(fit_arguments(study, run))}")
        return 0
    if options["slurm_array"] is not None:
        script = Path(options["slurm_array"])
        script.parent.mkdir(parents=True, exist_ok=True)
        (study.out_dir / "slurm").mkdir(parents=True, exist_ok=True)  # sbatch does not create it
        script.write_text(slurm_script(study, _without(argv, "--slurm_array", "--out_dir")))
        print(f"{script}: {len(runs)} array tasks; submit it with sbatch")
        return 0
    if options["task"] is not None:
        if not 0 <= options["task"] < len(runs):
            print(
                f"resnext3d study: error: --task must be 0 to {len(runs) - 1} for {path}",
                file=sys.stderr,
            )
            return 2
        runs = [runs[options["task"]]]

    sweep_runs = [sweep_run(study, run) for run in runs]

    def summarise(failed_runs: list[SweepRun]) -> None:
        failed_names = {sweep_run.name for sweep_run in failed_runs}
        failed = [run for run in runs if run.name in failed_names]
        for written in write_results(study, collect(study, failed)):
            print(f"wrote {written}")

    return run_sweep("study", "runs", sweep_runs, summarise if options["task"] is None else None)


def _without(argv: list[str], *options: str) -> list[str]:
    """`argv` without `options` and their values (``--option VALUE`` or ``--option=VALUE``)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in options:
            skip = True
        elif not arg.startswith(tuple(f"{option}=" for option in options)):
            kept.append(arg)
    return kept
