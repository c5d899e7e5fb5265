import pytest
import torch
import torch.nn as nn

import resnext3d
from resnext3d.cli import main
from resnext3d.models import count_macs
from resnext3d.models.complexity import bottleneck_parameters, complexity_table


def test_paper_table2_conv2_block_parameters_in_2d():
    assert [row["parameters"] for row in complexity_table(2)] == [
        69_632,
        69_760,
        69_888,
        71_456,
        70_144,
    ]


def test_3d_template_is_not_equal_complexity_and_derived_widths_are():
    rows = complexity_table(3)
    assert rows[0]["reference"] == 143_360
    assert rows[-1]["parameters"] == 79_360  # 32x4d with 3x3x3 kernels
    for row in rows:
        assert row["equal_parameters"] == pytest.approx(143_360, rel=0.1)
        for other_width in (row["equal_width"] - 1, row["equal_width"] + 1):
            other = bottleneck_parameters(row["cardinality"], other_width, 3)
            assert abs(other - 143_360) >= abs(row["equal_parameters"] - 143_360)


def test_bottleneck_formula_counts_the_real_block():
    block = resnext3d.models.Bottleneck(256, 64, cardinality=8, base_width=14, spatial_dims=3)
    convs = sum(m.weight.numel() for m in block.modules() if isinstance(m, torch.nn.Conv3d))
    assert convs == bottleneck_parameters(8, 14, 3)


def test_macs_of_resnext50_match_the_paper():
    with torch.device("meta"):
        model = resnext3d.create_model("resnext50_32x4d", spatial_dims=2)
        macs = count_macs(model, (1, 3, 224, 224))
    assert macs / 1e9 == pytest.approx(4.2, abs=0.05)  # Table 1: 4.2 x 10^9 FLOPs


def test_macs_of_grouped_and_transposed_convolutions_and_linear_layers():
    grouped = nn.Conv3d(8, 16, 3, padding=1, groups=4)
    # Each output value sums its group's 8 / 4 input channels over 3×3×3 taps.
    assert count_macs(grouped, (2, 8, 4, 4, 4)) == 2 * 16 * 4**3 * (8 // 4) * 27
    upsample = nn.ConvTranspose3d(8, 4, kernel_size=2, stride=2)
    # Kernel = stride: every input value meets every tap once; each output value takes one tap.
    assert count_macs(upsample, (1, 8, 4, 4, 4)) == 4**3 * 8 * 4 * 2**3
    linear = nn.Linear(10, 3).train()
    assert count_macs(linear, (5, 10)) == 5 * 10 * 3
    assert linear.training  # counted in eval mode, handed back as it was


@pytest.mark.slow  # a fit or a full-size network: seconds each, run by make test-slow
def test_models_and_complexity_commands_print_their_tables(capsys):
    main(["models", "--input-size", "64"])
    listing = capsys.readouterr().out
    assert all(name in listing for name in resnext3d.list_models())
    assert "25.89" in listing  # resnext50_32x4d, 3D, 4 in, 2 classes
    main(["models", "--input-size", "32", "128", "128", "--spacing", "4", "1", "1"])
    planned = capsys.readouterr().out
    for name in resnext3d.models.UNET_PRESETS:
        (row,) = [line for line in planned.splitlines() if line.startswith(f"{name} ")]
        assert "1 (1, 2, 2) (1, 4, 4) (2, 8, 8) (4, 16, 16) (8, 32, 32)" in row
    with pytest.raises(SystemExit):
        main(["models", "--spacing", "1", "2"])
    assert "--spacing needs 1 or 3 values, got 2" in capsys.readouterr().err
    main(["complexity"])
    table = capsys.readouterr().out
    assert "69,632" in table and "143,360" in table and "79,360" in table
