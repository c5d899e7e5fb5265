"""``resnext3d check-data``: read a whole data set, list every problem at once, summarise it.

The files are checked in full (`resnext3d.data.file_checks.check_files` with ``full=True``) and the
classification labels as the classification data module reads them, so a data set this command
accepts is one that training accepts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib

from resnext3d.data.errors import DataError, Problem
from resnext3d.data.file_checks import LABEL_MAP_ROLE, FileCheck, axis_codes, check_files
from resnext3d.data.labels import check_labels
from resnext3d.data.layouts import MODALITIES, BratsCase, find_cases

COLUMNS = ("severity", "case", "file", "problem")


def check_data_main(argv: Sequence[str] | None = None) -> int:
    """Run ``resnext3d check-data``; return 1 if the data set has errors, else 0."""
    args = _parser().parse_args(argv)
    started = time.perf_counter()
    try:
        discovery = find_cases(args.data_dir)
    except DataError as error:
        print(f"resnext3d check-data: {error}", file=sys.stderr)
        return 1
    cases = discovery.cases
    label_map_use = {"segmentation": "required", "classification": "unused"}.get(
        args.task, "if present"
    )
    workers = args.workers or min(32, (os.cpu_count() or 1) + 4)
    files = check_files(cases, label_map_use, full=True, workers=workers, show_progress=True)
    class_lines, label_problems = _check_labels(args, cases)
    problems = discovery.problems + files.problems + label_problems
    seconds = time.perf_counter() - started

    print(problem_table(problems, args.data_dir) if problems else "no problems found")
    print()
    print(f"{args.data_dir}: {len(cases)} cases ({_releases(cases)}), {len(files.scans)} files "
          f"read in {seconds:.1f} s by {workers} threads")  # fmt: skip
    for line in class_lines + summary_lines(files):
        print(f"  {line}")
    errors = sum(problem.severity == "error" for problem in problems)
    warnings = len(problems) - errors
    print(f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}")
    return 1 if errors else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnext3d check-data",
        description="Read every file of a BraTS or Decathlon data set and list every problem: "
        "missing, empty, truncated or unreadable files, files that disagree with the rest of "
        "their case, NaN or infinite voxels, all-zero images, label values the release does not "
        "use and classification labels that do not fit the cases. Exit status 1 on any error.",
    )
    parser.add_argument("data_dir", type=Path, help="the data set's folder")
    parser.add_argument(
        "--task",
        choices=("classification", "segmentation"),
        help="check only what the task reads: classification reads the images and the labels, "
        "segmentation the images and every case's label map (default: every file there is, and "
        "the classification labels if there are any)",
    )
    parser.add_argument(
        "--labels",
        nargs="+",
        type=Path,
        metavar="CSV",
        help="label CSVs to check against the cases (default: name_mapping.csv or the HGG/LGG "
        "folders, as training finds them)",
    )
    parser.add_argument("--id-column", help="the CSVs' id column (default: known label files')")
    parser.add_argument("--label-column", help="the CSVs' label column (idem)")
    parser.add_argument("--classes", nargs="+", help="the class names; any other label is an error")
    parser.add_argument(
        "--drop-unlabelled",
        action="store_true",
        help="cases without a label are left out of training, not an error",
    )
    parser.add_argument("--workers", type=int, help="reading threads (default: CPUs + 4)")
    return parser


def _check_labels(
    args: argparse.Namespace, cases: list[BratsCase]
) -> tuple[list[str], list[Problem]]:
    """Summary lines (class counts per label source) and the problems of every label source."""
    if args.task == "segmentation":
        return [], []
    lines, problems = [], []
    for csv_path in args.labels or [None]:
        try:
            labels, assigned, found = check_labels(
                args.data_dir,
                cases,
                csv_path,
                args.id_column,
                args.label_column,
                args.classes,
                args.drop_unlabelled,
            )
        except DataError as error:
            if csv_path is None and args.task is None:
                lines.append("classes: no labels (no name_mapping.csv or HGG/LGG folders)")
                continue
            path = str(csv_path or args.data_dir)
            problems.append(Problem(path, str(error).removeprefix(f"{path}: ")))
            continue
        problems += found
        counts = Counter(assigned.values())
        classes = ", ".join(f"{name} {counts[name]}" for name in labels.class_names)
        others = sorted(set(counts) - set(labels.class_names))
        classes += "".join(f", {name}? {counts[name]}" for name in others)
        lines.append(f"classes ({_short(labels.source, args.data_dir)}): {classes}")
    return lines, problems


def problem_table(problems: Sequence[Problem], root: Path) -> str:
    """Plain aligned columns (severity, case, file, problem) with files relative to `root`, so
    that the table survives a pipe or a log file unwrapped."""
    rows = [COLUMNS] + [
        (p.severity, p.case or "-", _short(p.path, root), p.message)
        for p in sorted(problems, key=lambda p: (p.severity != "error", p.case, p.path))
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(COLUMNS) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        + f"  {row[-1]}"
        for row in rows
    )


def summary_lines(files: FileCheck) -> list[str]:
    """Shapes, voxel sizes, orientations and intensity ranges seen, with how many files each."""
    readable = [scan for scan in files.scans if scan.shape is not None]
    images = [scan for scan in readable if scan.role != LABEL_MAP_ROLE]
    lines = [
        f"image shapes: {_counted('x'.join(map(str, s.shape)) for s in images)}",
        "voxel sizes (mm): "
        + _counted(
            "x".join(f"{v:.3g}" for v in nib.affines.voxel_sizes(s.affine)) for s in readable
        ),
        f"orientations: {_counted(axis_codes(s.affine) for s in readable)}",
    ]
    ranges: dict[str, list[tuple[float, float]]] = {name: [] for name in MODALITIES}
    for scan in images:
        names = MODALITIES if scan.role == "image" else (scan.role,)
        for name, value_range in zip(names, scan.channel_ranges or [], strict=False):
            if value_range is not None:
                ranges[name].append(value_range)
    for name, values in ranges.items():
        if values:
            maxima = [high for _, high in values]
            lines.append(
                f"{name} intensity: {min(low for low, _ in values):.4g} to {max(maxima):.4g} "
                f"(case maxima: median {statistics.median(maxima):.4g}, "
                f"lowest {min(maxima):.4g})"
            )
    label_values = sorted({v for s in readable if s.label_values for v in s.label_values})
    if label_values:
        lines.append(f"label map values: {', '.join(f'{v:g}' for v in label_values)}")
    return lines


def _counted(values) -> str:
    counts = Counter(values).most_common()
    return ", ".join(f"{value} ({count})" for value, count in counts) or "-"


def _releases(cases: Sequence[BratsCase]) -> str:
    return ", ".join(f"{release} layout" for release in sorted({case.release for case in cases}))


def _short(path: str, root: Path) -> str:
    """`path` relative to `root` where it lies below it (keeping a ``:line`` suffix)."""
    try:
        relative = str(Path(path).relative_to(root))
    except ValueError:
        return path
    return path if relative == "." else relative
