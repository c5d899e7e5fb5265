"""Checkpoints are written whole or not at all, load without running code, and a checkpoint that
does not fit the run is refused before anything starts, with the file and the reason named."""

import subprocess
import sys
import textwrap

import pytest
import torch

from resnext3d.training import AtomicCheckpointIO, CheckpointError, read_checkpoint


@pytest.mark.slow  # a process of its own, killed
def test_a_process_killed_while_saving_leaves_the_previous_checkpoint_whole(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        from resnext3d.training import AtomicCheckpointIO
        io = AtomicCheckpointIO()
        io.save_checkpoint({{"state_dict": {{"w": torch.zeros(3)}}, "epoch": 1}}, {str(path)!r})

        def killed_half_way(checkpoint, file):
            file.write(b"PK" + bytes(1000))
            file.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        torch.save = killed_half_way
        io.save_checkpoint({{"state_dict": {{"w": torch.ones(3)}}, "epoch": 2}}, {str(path)!r})
        """
    )
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    assert read_checkpoint(path)["epoch"] == 1  # the old one, intact
    (partial,) = [p.name for p in path.parent.iterdir() if p.name != "last.ckpt"]
    assert partial.startswith(".last.ckpt.") and partial.endswith(".partial")  # the killed write

    AtomicCheckpointIO().save_checkpoint({"state_dict": {}, "epoch": 3}, path)
    assert read_checkpoint(path)["epoch"] == 3
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # the leftover is gone


def test_unusable_checkpoints_are_named_with_the_reason(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        read_checkpoint(tmp_path / "absent.ckpt")
    empty = tmp_path / "empty.ckpt"
    empty.touch()
    with pytest.raises(CheckpointError, match=r"empty.ckpt: the checkpoint is empty \(0 bytes\)"):
        read_checkpoint(empty)
    truncated = tmp_path / "truncated.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="truncated.ckpt: not a readable PyTorch checkpoint"):
        read_checkpoint(truncated)
    code = tmp_path / "code.ckpt"
    torch.save({"state_dict": {}, "callback": CheckpointError("pickled object")}, code)
    with pytest.raises(CheckpointError, match="objects other than tensors and plain Python"):
        read_checkpoint(code)
    weights = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(1)}, weights)
    with pytest.raises(CheckpointError, match="not a Lightning checkpoint"):
        read_checkpoint(weights)
