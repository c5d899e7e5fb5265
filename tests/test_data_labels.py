"""Classification labels from each source, and how they are matched to the cases."""

from pathlib import Path

import pytest

from resnext3d.data import (
    BratsCase,
    DataError,
    assign_labels,
    find_labels,
    grade_folder_labels,
    read_label_csv,
)

# The header of the BraTS 2020 name_mapping.csv; ids of cases absent from a release are NA.
NAME_MAPPING = """\
Grade,BraTS_2017_subject_ID,BraTS_2018_subject_ID,TCGA_TCIA_subject_ID,BraTS_2019_subject_ID,BraTS_2020_subject_ID
HGG,Brats17_CBICA_AAB_1,Brats18_CBICA_AAB_1,NA,BraTS19_CBICA_AAB_1,BraTS20_Training_001
LGG,NA,NA,TCGA-CS-4942,BraTS19_2013_0_1,BraTS20_Training_260
HGG,NA,NA,NA,NA,BraTS20_Training_003
"""


def case(case_id, root=Path("/data"), grade=None):
    folder = root / case_id
    images = tuple(folder / f"{case_id}_{kind}.nii.gz" for kind in ("flair", "t1", "t1ce", "t2"))
    return BratsCase(case_id, images, None, "brats2021", grade)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_brats_2020_name_mapping(tmp_path):
    labels = read_label_csv(write(tmp_path / "name_mapping.csv", NAME_MAPPING))
    assert labels.by_id == {
        "BraTS20_Training_001": "HGG",
        "BraTS20_Training_260": "LGG",
        "BraTS20_Training_003": "HGG",
    }
    # LGG first: HGG is class 1, the positive class of a binary AUROC.
    assert labels.class_names == ("LGG", "HGG")


def test_name_mapping_with_another_id_column(tmp_path):
    path = write(tmp_path / "name_mapping.csv", NAME_MAPPING)
    labels = read_label_csv(path, id_column="BraTS_2019_subject_ID")
    assert labels.by_id == {"BraTS19_CBICA_AAB_1": "HGG", "BraTS19_2013_0_1": "LGG"}


def test_rsna_mgmt_ids_are_zero_padded_and_matched(tmp_path):
    csv_text = "\ufeffBraTS21ID,MGMT_value\n0,1\n2,0\n12,1\n"  # with Excel's byte-order mark
    labels = read_label_csv(write(tmp_path / "train_labels.csv", csv_text))
    assert labels.by_id == {"00000": "1", "00002": "0", "00012": "1"}
    assert labels.class_names == ("0", "1")
    cases = [case("BraTS2021_00000"), case("00002"), case("BraTS2021_00012")]
    assert assign_labels(cases, labels) == {
        "BraTS2021_00000": "1",
        "00002": "0",
        "BraTS2021_00012": "1",
    }


def test_generic_csv_with_named_columns(tmp_path):
    path = write(tmp_path / "labels.csv", "subject,idh\nA,wildtype\nB,mutant\nC,wildtype\nD,\n")
    labels = read_label_csv(path, id_column="subject", label_column="idh")
    assert labels.by_id == {"A": "wildtype", "B": "mutant", "C": "wildtype"}
    assert labels.class_names == ("mutant", "wildtype")


def test_generic_csv_needs_its_columns_named(tmp_path):
    path = write(tmp_path / "labels.csv", "subject,idh\nA,wildtype\nB,mutant\n")
    with pytest.raises(DataError, match=r"labels\.csv: not a known BraTS label file"):
        read_label_csv(path)
    with pytest.raises(DataError, match=r"labels\.csv: no column grade"):
        read_label_csv(path, id_column="subject", label_column="grade")


def test_contradictory_and_single_class_labels_are_named(tmp_path):
    path = write(tmp_path / "labels.csv", "id,y\nA,x\nA,z\n")
    with pytest.raises(DataError, match=r"labels\.csv:3: A labelled both x and z"):
        read_label_csv(path, id_column="id", label_column="y")
    path = write(tmp_path / "one.csv", "id,y\nA,x\nB,x\n")
    with pytest.raises(DataError, match=r"one\.csv: a classifier needs two classes"):
        read_label_csv(path, id_column="id", label_column="y")


def test_grade_folders():
    cases = [case("BraTS19_2013_0_1", grade="LGG"), case("BraTS19_TCIA01_131_1", grade="HGG")]
    labels = grade_folder_labels(cases, "/data")
    assert labels.by_id == {"BraTS19_2013_0_1": "LGG", "BraTS19_TCIA01_131_1": "HGG"}
    assert labels.class_names == ("LGG", "HGG")


def test_find_labels_prefers_the_given_csv_then_name_mapping_then_folders(tmp_path):
    cases = [case("BraTS20_Training_001", grade="LGG"), case("BraTS20_Training_003", grade="HGG")]
    assert find_labels(tmp_path, cases).source.startswith("the HGG/LGG folders")
    name_mapping = write(
        tmp_path / "MICCAI_BraTS2020_TrainingData" / "name_mapping.csv", NAME_MAPPING
    )
    assert find_labels(tmp_path, cases).source == str(name_mapping)
    given = write(tmp_path / "mine.csv", "BraTS21ID,MGMT_value\n1,0\n2,1\n")
    assert find_labels(tmp_path, cases, labels_csv=given).source == str(given)


def test_find_labels_without_any_source_names_the_folder(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path}: no classification labels"):
        find_labels(tmp_path, [case("BraTS2021_00000")])


def test_case_without_label_and_label_without_case_are_named(tmp_path):
    labels = read_label_csv(write(tmp_path / "name_mapping.csv", NAME_MAPPING))
    cases = [
        case("BraTS20_Training_001"),
        case("BraTS20_Training_003"),
        case("BraTS20_Training_999"),
    ]
    with pytest.raises(DataError) as error:
        assign_labels(cases, labels)
    message = str(error.value)
    assert "(2 problems)" in message
    assert (
        f"{Path('/data/BraTS20_Training_999')}: case BraTS20_Training_999 has no label" in message
    )
    assert "name_mapping.csv: BraTS20_Training_260 is labelled but there is no such case" in message


def test_unlabelled_cases_can_be_dropped(tmp_path):
    labels = read_label_csv(
        write(tmp_path / "train_labels.csv", "BraTS21ID,MGMT_value\n0,1\n1,0\n")
    )
    cases = [case("BraTS2021_00000"), case("BraTS2021_00001"), case("BraTS2021_00002")]
    assigned = assign_labels(cases, labels, drop_unlabelled=True)
    assert assigned == {"BraTS2021_00000": "1", "BraTS2021_00001": "0"}
    with pytest.raises(DataError, match="00001 is labelled but there is no such case"):
        assign_labels(cases[:1], labels, drop_unlabelled=True)
