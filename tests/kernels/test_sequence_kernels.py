"""The sequence kernels' launch options: blocks follow the TF32 switch, register and pipeline options the backend.

The kernels themselves are tested through their op (tests/test_sequence_ops.py) and the layers.
"""

from __future__ import annotations

import pytest
import torch

from fused_rnn.dispatch import make_plan
from fused_rnn.kernels import sequence_kernels as K


def _meta(cell: int, dtype: torch.dtype) -> dict:
    return K._meta(cell, False, dtype, make_plan(64, 512, dtype, 4, 132, concurrent=True))


def test_fp32_blocks_narrow_when_products_leave_tensor_cores(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    meta = _meta(K.LSTM, torch.float32)
    assert (meta["DOT_PREC"], meta["BLOCK_H"], meta["BLOCK_K"]) == ("tf32", 32, 32)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    meta = _meta(K.LSTM, torch.float32)
    assert (meta["DOT_PREC"], meta["BLOCK_H"], meta["BLOCK_K"]) == ("ieee", 16, 16)


@pytest.mark.parametrize(("hip", "present", "absent"), [(None, {"maxnreg": 255}, "num_stages"),
                                                        ("6.0", {"num_stages": 1}, "maxnreg")], ids=["cuda", "rocm"])
def test_register_and_pipeline_options_follow_the_backend(monkeypatch, hip, present, absent):
    """NVIDIA: every register a thread can have (ptxas would cap at 128 and spill); AMD: one pipeline stage
    (SGPRs), and no maxnreg, which Triton's AMD backend rejects."""
    monkeypatch.setattr(torch.version, "hip", hip)
    meta = _meta(K.GRU, torch.bfloat16)
    assert present.items() <= meta.items() and absent not in meta
