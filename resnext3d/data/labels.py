"""Classification labels of BraTS cases: reading them and matching them to the cases.

Sources: the BraTS 2020 ``name_mapping.csv`` (``Grade`` by ``BraTS_2020_subject_ID``), the
BraTS 2018/19 ``HGG/`` and ``LGG/`` folders, the RSNA-MICCAI ``train_labels.csv`` (``MGMT_value`` by
``BraTS21ID``) and any CSV with named id and label columns.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from resnext3d.data.errors import DataError, raise_for_problems
from resnext3d.data.layouts import BratsCase

# Low grade first, so that HGG is class 1: the positive class of binary metrics such as AUROC.
GRADE_CLASSES = ("LGG", "HGG")
NAME_MAPPING_FILE = "name_mapping.csv"
# (id column, label column) of the label files known by their header.
_KNOWN_COLUMNS = (("BraTS_2020_subject_ID", "Grade"), ("BraTS21ID", "MGMT_value"))
# The RSNA-MICCAI MGMT file stores BraTS 2021 ids as integers: 12 is case 00012.
_ZERO_PADDED_ID_COLUMNS = {"BraTS21ID": 5}
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
    path: str | Path, id_column: str | None = None, label_column: str | None = None
) -> CaseLabels:
    """Read labels from a CSV; the columns default to those of the known BraTS label files."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:  # -sig: Excel's byte-order mark
            reader = csv.DictReader(file)
            columns = reader.fieldnames or []
            id_column, label_column = _label_columns(path, columns, id_column, label_column)
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: cannot read the label CSV ({error})") from error

    by_id, problems = {}, []
    for line_number, row in enumerate(rows, start=2):
        case_id, label = (row[id_column] or "").strip(), (row[label_column] or "").strip()
        if case_id in _EMPTY_CELLS or label in _EMPTY_CELLS:
            continue
        case_id = case_id.zfill(_ZERO_PADDED_ID_COLUMNS.get(id_column, 0))
        if by_id.get(case_id, label) != label:
            problems.append(
                f"{path}:{line_number}: {case_id} labelled both {by_id[case_id]} and {label}"
            )
        by_id[case_id] = label
    raise_for_problems(problems, f"{path}: contradictory labels")
    return CaseLabels(by_id, _class_names(by_id.values(), str(path)), str(path))


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
) -> CaseLabels:
    """The labels for `cases`: `labels_csv`, else a name_mapping.csv in `data_dir` or a folder
    below it, else the HGG/LGG folders."""
    data_dir = Path(data_dir)
    name_mappings = [
        *data_dir.glob(NAME_MAPPING_FILE),
        *sorted(data_dir.glob(f"*/{NAME_MAPPING_FILE}")),
    ]
    if labels_csv is not None or name_mappings:
        return read_label_csv(labels_csv or name_mappings[0], id_column, label_column)
    if any(case.grade for case in cases):
        return grade_folder_labels(cases, data_dir)
    raise DataError(
        f"{data_dir}: no classification labels: no {NAME_MAPPING_FILE} and no HGG/LGG folders; "
        "pass a CSV with --data.labels (and --data.id_column/--data.label_column if needed)"
    )


def assign_labels(
    cases: Sequence[BratsCase], labels: CaseLabels, drop_unlabelled: bool = False
) -> dict[str, str]:
    """Each case's label by case id; raise DataError for a label without a case and, unless
    `drop_unlabelled`, for a case without a label.

    A label id matches a case id equal to it or ending in ``_<id>``, as RSNA-MICCAI's ``00012``
    names BraTS 2021's ``BraTS2021_00012``.
    """
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
            problems.append(
                f"{case.images[0].parent}: case {case.case_id} has no label in {labels.source}"
            )
    problems += [
        f"{labels.source}: {label_id} is labelled but there is no such case"
        for label_id in sorted(set(labels.by_id) - used_ids)
    ]
    raise_for_problems(problems, "the classification labels do not match the cases")
    return assigned


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


def _class_names(labels: Iterable[str], source: str) -> tuple[str, ...]:
    classes = set(labels)
    if classes <= set(GRADE_CLASSES):
        return GRADE_CLASSES
    if len(classes) < 2:
        raise DataError(
            f"{source}: a classifier needs two classes or more, found {sorted(classes)}"
        )
    return tuple(sorted(classes))
