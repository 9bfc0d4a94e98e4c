"""fused_rnn.explain and the debug log name the implementation a call runs, and why."""

from __future__ import annotations

import logging

import torch

import fused_rnn
from fused_rnn import path_report


def test_sequence_kernel_and_the_cost_model(device):
    lstm = fused_rnn.LSTM(4, 8, num_layers=2).to(device)
    text = fused_rnn.explain(lstm, torch.randn(3, 2, 4, device=device))
    lines = text.splitlines()
    assert len(lines) == 2 and all("Triton sequence kernel" in line for line in lines)
    assert all("batch-tiled" in line and "stepwise" in line and "unmeasured" in line for line in lines)


def test_the_prediction_of_each_path_and_the_plan(device):
    """At the classic size: the predicted time of the weight-stationary and hidden-split forms next to the
    batch-tiled kernel's and the stepwise path's, and the plan (4 batch tiles of 16 rows, 32 slices of 16 units
    keeping W_hh on chip; TF32 on, as torch's default)."""
    lstm = fused_rnn.LSTM(4, 512, device="meta")
    text = fused_rnn.explain(lstm, torch.randn(3, 64, 4, device=device))
    assert "hidden-split (4 x " in text and "batch-tiled (4 x 1 programs)" in text
    assert "weight-stationary (4 x 32 programs)" in text
    assert "4 batch tiles of 16 rows x 32 hidden slices of 16 units, W_hh on chip" in text


def test_stepwise_when_forced(device):
    gru = fused_rnn.GRU(4, 8).to(device)
    with fused_rnn.force_path("stepwise"):
        assert "forced by fused_rnn.force_path('stepwise')" in fused_rnn.explain(gru, torch.randn(3, 2, 4, device=device))


def test_cells_and_the_torch_fallback(device, monkeypatch):
    cell = fused_rnn.GRUCell(4, 8).to(device)
    assert "Triton cell kernel" in fused_rnn.explain(cell, torch.randn(2, 4, device=device))
    monkeypatch.setattr(path_report, "interpreting", lambda: False)
    text = fused_rnn.explain(cell, torch.randn(2, 4))
    assert "torch fallback" in text and "TRITON_INTERPRET" in text


def test_debug_log_at_each_call(device, caplog):
    rnn = fused_rnn.RNN(4, 8).to(device)
    with caplog.at_level(logging.DEBUG, logger="fused_rnn"):
        rnn(torch.randn(3, 2, 4, device=device))
    assert any("Triton sequence kernel" in r.getMessage() for r in caplog.records)


def test_no_log_when_the_level_is_off(device, caplog):
    rnn = fused_rnn.RNN(4, 8).to(device)
    with caplog.at_level(logging.WARNING, logger="fused_rnn"):
        rnn(torch.randn(3, 2, 4, device=device))
    assert not caplog.records


def test_heads_and_the_slstm(device, monkeypatch):
    """A layer with heads explains the plan for its heads (heads of 16: no program waits for another); where no
    kernel runs, the multi-head layers and the sLSTM run a plain-torch loop, not torch.nn."""
    layer = fused_rnn.sLSTM(4, 768, num_heads=48, device="meta")
    text = fused_rnn.explain(layer, torch.randn(3, 16, 4, device=device))
    assert "heads of 16 units, no program waits for another" in text, text
    assert "1 batch tiles of 16 rows x 48 hidden slices of 16 units, W_hh on chip" in text, text
    split = fused_rnn.MultiHeadLSTM(4, 768, num_heads=6, device="meta")
    assert "8 programs meet per head" in fused_rnn.explain(split, torch.randn(3, 16, 4, device=device))
    monkeypatch.setattr(path_report, "interpreting", lambda: False)
    assert "plain-torch loop" in fused_rnn.explain(layer, torch.randn(3, 16, 4))


def test_layer_norm_layers(device, monkeypatch):
    """haste's LayerNorm layers explain their plan with their barriers a step (three for the LSTM where programs
    meet, none with one program a row), never the stepwise path; where no kernel runs, a plain-torch loop."""
    lstm = fused_rnn.LayerNormLSTM(4, 768, device="meta")
    text = fused_rnn.explain(lstm, torch.randn(3, 16, 4, device=device))
    assert "Triton sequence kernel" in text and "layer normalisation: 3 barriers a step" in text, text
    assert "stepwise" not in text, text
    gru = fused_rnn.LayerNormGRU(4, 768, device="meta")
    with fused_rnn.force_path(None, slices=1):
        assert "no barrier (one program a row)" in fused_rnn.explain(gru, torch.randn(3, 16, 4, device=device))
    monkeypatch.setattr(path_report, "interpreting", lambda: False)
    assert "plain-torch loop" in fused_rnn.explain(gru, torch.randn(3, 16, 4))
