import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

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


def test_macs_of_resnext50_match_the_paper_and_torch_forward_flops():
    with torch.device("meta"):
        model = resnext3d.create_model("resnext50_32x4d", spatial_dims=2)
        macs = count_macs(model, (1, 3, 224, 224))
    assert macs / 1e9 == pytest.approx(4.2, abs=0.05)  # Table 1: 4.2 x 10^9 FLOPs

    tiny = resnext3d.create_model("resnext14_tiny", in_channels=4).eval()
    x = torch.randn(1, 4, 32, 32, 32)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        tiny(x)
    assert count_macs(tiny, x.shape) == counter.get_total_flops() // 2


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
