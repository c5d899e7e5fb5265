"""`make bench-seg` in its quick mode: every network trains and validates, and the table has a
row per network with its ratios to the best other."""

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
    assert len(table) == 2 + len(bench_seg.NETWORKS)
    for name in bench_seg.NETWORKS:
        assert any(line.startswith(f"| {name} |") for line in table)
