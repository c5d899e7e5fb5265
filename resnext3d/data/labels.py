"""Classification labels of BraTS cases: reading them and matching them to the cases.

Sources: the BraTS 2020 ``name_mapping.csv`` (``Grade`` by ``BraTS_2020_subject_ID``), the
BraTS 2018/19 ``HGG/`` and ``LGG/`` folders, the RSNA-MICCAI ``train_labels.csv`` (``MGMT_value`` by
``BraTS21ID``) and any CSV with named id and label columns.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from resnext3d.data.errors import DataError, Problem, raise_for_problems
from resnext3d.data.layouts import BratsCase

# Low grade first, so that HGG is class 1: the positive class of binary metrics such as AUROC.
GRADE_CLASSES = ("LGG", "HGG")
NAME_MAPPING_FILE = "name_mapping.csv"
# (id column, label column) of the label files known by their header.
_KNOWN_COLUMNS = (("BraTS_2020_subject_ID", "Grade"), ("BraTS21ID", "MGMT_value"))
# The RSNA-MICCAI MGMT file stores BraTS 2021 ids as integers: 12 is case 00012.
_ZERO_PADDED_ID_COLUMNS = {"BraTS21ID": 5}
# The classes of the known label files' label columns, in class-index order.
_KNOWN_CLASSES = {"Grade": GRADE_CLASSES, "MGMT_value": ("0", "1")}
# Cells that mean "no value" in the BraTS spreadsheets (e.g. ids of cases absent from a release).
_EMPTY_CELLS = {"", "NA", "N/A", "nan"}


@dataclass(frozen=True)
class CaseLabels:
    """Labels keyed by the ids their source uses, and the class names in class-index order.

    Attributes:
        by_id: label by id; an id is a case id or its last ``_`` part (``00012``).
        class_names: the classes in index order.
        source: the file or folder the labels come from, for error messages.
    """

    by_id: Mapping[str, str]
    class_names: tuple[str, ...]
    source: str


def read_label_csv(
    path: str | Path,
    id_column: str | None = None,
    label_column: str | None = None,
    classes: Sequence[str] | None = None,
) -> CaseLabels:
    """Read labels from a CSV; the columns default to those of the known BraTS label files.

    Raises one DataError for every contradictory duplicate, label that is not a class (of the
    known label file, or of `classes` where given) and for fewer than two classes.
    """
    labels, problems = _read_label_csv(Path(path), id_column, label_column, classes)
    raise_for_problems(problems, f"{path}: unusable labels")
    return labels


def grade_folder_labels(cases: Sequence[BratsCase], source: str | Path) -> CaseLabels:
    """Labels HGG/LGG from the BraTS 2018/19 grade folders that hold the cases."""
    by_id = {case.case_id: case.grade for case in cases if case.grade}
    return CaseLabels(by_id, GRADE_CLASSES, f"the HGG/LGG folders of {source}")


def find_labels(
    data_dir: str | Path,
    cases: Sequence[BratsCase],
    labels_csv: str | Path | None = None,
    id_column: str | None = None,
    label_column: str | None = None,
    classes: Sequence[str] | None = None,
) -> CaseLabels:
    """The labels for `cases`: `labels_csv`, else a name_mapping.csv in `data_dir` or a folder
    below it, else the HGG/LGG folders; see `read_label_csv` for what raises."""
    labels, problems = _find_labels(data_dir, cases, labels_csv, id_column, label_column, classes)
    raise_for_problems(problems, f"{labels.source}: unusable labels")
    return labels


def assign_labels(
    cases: Sequence[BratsCase], labels: CaseLabels, drop_unlabelled: bool = False
) -> dict[str, str]:
    """Each case's label by case id; raise DataError for a label without a case and, unless
    `drop_unlabelled`, for a case without a label.

    A label id matches a case id equal to it or ending in ``_<id>``, as RSNA-MICCAI's ``00012``
    names BraTS 2021's ``BraTS2021_00012``.
    """
    assigned, problems = _match_labels(cases, labels, drop_unlabelled)
    raise_for_problems(problems, "the classification labels do not match the cases")
    return assigned


def check_labels(
    data_dir: str | Path,
    cases: Sequence[BratsCase],
    labels_csv: str | Path | None = None,
    id_column: str | None = None,
    label_column: str | None = None,
    classes: Sequence[str] | None = None,
    drop_unlabelled: bool = False,
) -> tuple[CaseLabels, dict[str, str], list[Problem]]:
    """`find_labels` then `assign_labels`, returning every problem of both instead of raising on
    the first kind, so that one report lists them all.

    Returns:
        The labels, each case's label by case id, and the problems.

    Raises:
        DataError: there is no label source, or the CSV cannot be read at all.
    """
    labels, problems = _find_labels(data_dir, cases, labels_csv, id_column, label_column, classes)
    assigned, match_problems = _match_labels(cases, labels, drop_unlabelled)
    return labels, assigned, problems + match_problems


def _find_labels(
    data_dir: str | Path,
    cases: Sequence[BratsCase],
    labels_csv: str | Path | None,
    id_column: str | None,
    label_column: str | None,
    classes: Sequence[str] | None,
) -> tuple[CaseLabels, list[Problem]]:
    data_dir = Path(data_dir)
    name_mappings = [
        *data_dir.glob(NAME_MAPPING_FILE),
        *sorted(data_dir.glob(f"*/{NAME_MAPPING_FILE}")),
    ]
    if labels_csv is not None or name_mappings:
        path = Path(labels_csv or name_mappings[0])
        return _read_label_csv(path, id_column, label_column, classes)
    if any(case.grade for case in cases):
        labels = grade_folder_labels(cases, data_dir)
        by_label = {label: [] for label in set(labels.by_id.values())}
        return labels, _class_problems(
            by_label, labels.source, classes or GRADE_CLASSES, labels.by_id
        )
    raise DataError(
        f"{data_dir}: no classification labels: no {NAME_MAPPING_FILE} and no HGG/LGG folders; "
        "pass a CSV with --data.labels (and --data.id_column/--data.label_column if needed)"
    )


def _read_label_csv(
    path: Path, id_column: str | None, label_column: str | None, classes: Sequence[str] | None
) -> tuple[CaseLabels, list[Problem]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:  # -sig: Excel's byte-order mark
            reader = csv.DictReader(file)
            columns = reader.fieldnames or []
            id_column, label_column = _label_columns(path, columns, id_column, label_column)
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: cannot read the label CSV ({error})") from error

    by_id, lines_by_label, problems = {}, defaultdict(list), []
    for line_number, row in enumerate(rows, start=2):
        case_id, label = (row[id_column] or "").strip(), (row[label_column] or "").strip()
        if case_id in _EMPTY_CELLS or label in _EMPTY_CELLS:
            continue
        case_id = case_id.zfill(_ZERO_PADDED_ID_COLUMNS.get(id_column, 0))
        if by_id.get(case_id, label) != label:
            message = f"{case_id} labelled both {by_id[case_id]} and {label}"
            problems.append(Problem(f"{path}:{line_number}", message, case_id))
        by_id[case_id] = label
        lines_by_label[label].append(line_number)
    known_classes = classes or _KNOWN_CLASSES.get(label_column)
    if known_classes is None:
        known_classes = _class_names(lines_by_label)
    problems += _class_problems(lines_by_label, str(path), known_classes, by_id)
    return CaseLabels(by_id, tuple(known_classes), str(path)), problems


def _class_problems(
    lines_by_label: Mapping[str, Sequence[int]],
    source: str,
    classes: Sequence[str],
    by_id: Mapping[str, str],
) -> list[Problem]:
    """A problem for each label that is not one of `classes` (by the CSV lines that hold it) and
    for fewer than two classes among `classes` or among the labels."""
    problems = []
    for label, lines in lines_by_label.items():
        if label in classes:
            continue
        same_but_case = [name for name in classes if name.lower() == label.lower()]
        hint = f"; did you mean {same_but_case[0]}? (case matters)" if same_but_case else ""
        where = f"{source}:{lines[0]}" if len(lines) == 1 else source
        on_lines = ""
        if len(lines) > 1:
            on_lines = (
                f" on lines {', '.join(map(str, lines[:5]))}{', ...' if len(lines) > 5 else ''}"
            )
        message = f"label {label!r}{on_lines} is not a class ({', '.join(classes)}){hint}"
        problems.append(Problem(where, message))
    used = sorted(set(by_id.values()) & set(classes)) if by_id else list(classes)
    if len(classes) < 2 or len(used) < 2:
        found = used if len(classes) >= 2 else list(classes)
        problems.append(Problem(source, f"a classifier needs two classes or more, found {found}"))
    return problems


def _match_labels(
    cases: Sequence[BratsCase], labels: CaseLabels, drop_unlabelled: bool
) -> tuple[dict[str, str], list[Problem]]:
    assigned, used_ids, problems = {}, set(), []
    for case in cases:
        label_id = next(
            (key for key in (case.case_id, case.case_id.rsplit("_", 1)[-1]) if key in labels.by_id),
            None,
        )
        if label_id is not None:
            assigned[case.case_id] = labels.by_id[label_id]
            used_ids.add(label_id)
        elif not drop_unlabelled:
            message = f"case {case.case_id} has no label in {labels.source}"
            problems.append(Problem(str(case.images[0].parent), message, case.case_id))
    problems += [
        Problem(labels.source, f"{label_id} is labelled but there is no such case")
        for label_id in sorted(set(labels.by_id) - used_ids)
    ]
    return assigned, problems


def _label_columns(
    path: Path, columns: Sequence[str], id_column: str | None, label_column: str | None
) -> tuple[str, str]:
    known = next(((i, label) for i, label in _KNOWN_COLUMNS if {i, label} <= set(columns)), None)
    if known is not None:
        id_column, label_column = id_column or known[0], label_column or known[1]
    if id_column is None or label_column is None:
        raise DataError(
            f"{path}: not a known BraTS label file (columns {', '.join(columns)}); "
            "name its id and label columns (--data.id_column, --data.label_column)"
        )
    missing = [column for column in (id_column, label_column) if column not in columns]
    if missing:
        raise DataError(f"{path}: no column {', '.join(missing)} (columns {', '.join(columns)})")
    return id_column, label_column


def _class_names(labels: Iterable[str]) -> tuple[str, ...]:
    """The classes of a CSV that no known file or `classes` describes: the labels it holds."""
    classes = set(labels)
    return GRADE_CLASSES if classes <= set(GRADE_CLASSES) else tuple(sorted(classes))
