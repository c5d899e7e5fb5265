"""A BraTS researcher's loop end to end on the phantom: cross-validate, predict with the ensemble
of the folds, score the predictions as the challenge does."""

import csv
from pathlib import Path

import pytest
from test_experiments import small_data

from resnext3d.cli import main
from resnext3d.crossval import cv_main

SEGMENTATION = Path(__file__).parents[1] / "experiments" / "brats_seg.yaml"
TINY = [
    "--model.init_args.sliding_window_size", "[32, 32, 32]",
    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
    "--trainer.check_val_every_n_epoch", "1",
    "--trainer.enable_progress_bar", "false",
]  # fmt: skip


@pytest.mark.slow
def test_cross_validate_ensemble_and_score(tiny_phantom, in_tmp_dir, capsys):
    folds = in_tmp_dir / "cv"
    cv = ["--config", str(SEGMENTATION), "--folds", "2", "--out", str(folds)]
    assert cv_main([*cv, *small_data(tiny_phantom), *TINY]) == 0
    with (folds / "cv_results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["fold"] for row in rows] == ["0", "1", "mean", "std"]
    assert "val/lesion_dice_mean" in rows[0]  # the challenge's metric beside the legacy ones

    before = set(folds.rglob("predictions"))
    main(["predict", "--run", str(folds), *small_data(tiny_phantom)[:2]])
    (predictions,) = set(folds.rglob("predictions")) - before
    assert len(list(predictions.glob("*_seg.nii.gz"))) == 8  # every case, by both folds

    scores = in_tmp_dir / "scores.csv"
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(predictions), str(tiny_phantom), "--out", str(scores)])
    assert exit_info.value.code == 0, capsys.readouterr().err
    with scores.open() as handle:
        cases = list(csv.DictReader(handle))
    assert len(cases) == 8
    for case in cases:
        for region in ("tc", "wt", "et"):
            assert 0.0 <= float(case[f"lesion_dice_{region}"]) <= 1.0
            assert 0.0 <= float(case[f"dice_{region}"]) <= 1.0
