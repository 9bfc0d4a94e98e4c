"""The path heuristic is a pure function of the sizes; force_path overrides it."""

from __future__ import annotations

import pytest
import torch

from fused_rnn.dispatch import choose_path, force_path


def test_heuristic():
    cpu = torch.device("cpu")
    assert choose_path("LSTM", 512, 0, 64, torch.float32, cpu) == "sequence"
    assert choose_path("GRU", 2048, 0, 1, torch.bfloat16, cpu) == "sequence"
    assert choose_path("LSTM", 512, 128, 64, torch.float32, cpu) == "stepwise"


def test_force_path():
    cpu = torch.device("cpu")
    with force_path("stepwise"):
        assert choose_path("GRU", 64, 0, 8, torch.float32, cpu) == "stepwise"
    assert choose_path("GRU", 64, 0, 8, torch.float32, cpu) == "sequence"
    with force_path("sequence"):
        assert choose_path("LSTM", 64, 16, 8, torch.float32, cpu) == "stepwise", "proj_size needs the stepwise path"
    with pytest.raises(ValueError):
        with force_path("persistent"):
            pass
