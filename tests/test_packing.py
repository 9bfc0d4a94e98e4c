"""fused_rnn.packing: a PackedSequence's padded layout, its checks, and its custom ops' fake implementations."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fused_rnn import packing

LENGTHS = [5, 3, 3, 1]


def packed(lengths: list[int] = LENGTHS, features: int = 2):
    torch.manual_seed(0)
    x = torch.randn(max(lengths), len(lengths), features, dtype=torch.float64)
    return pack_padded_sequence(x, torch.tensor(lengths))


def test_unpack_is_pad_packed_sequence_and_pack_inverts_it():
    p = packed()
    batch = packing.packed_batch(p.batch_sizes, torch.empty(0))
    padded, lengths, positions = packing.unpack(p.data, p.batch_sizes, batch)
    expected, expected_lengths = pad_packed_sequence(p)
    assert batch == len(LENGTHS)
    assert torch.equal(padded, expected) and torch.equal(lengths, expected_lengths)
    assert torch.equal(packing.pack(padded, positions), p.data)


def test_unpack_is_differentiable():
    p = packed()
    data = p.data.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda d: packing.unpack(d, p.batch_sizes, len(LENGTHS))[0], (data,))


@pytest.mark.parametrize(
    "batch_sizes,rows,batch,error,match",
    [
        ([2, 3], 5, 2, RuntimeError, r"batch_sizes must be non-increasing .* got \[2, 3\]"),
        ([3, 2], 5, 4, RuntimeError, r"Expected hidden batch size 3 \(the PackedSequence's\), got 4"),
        ([3, 2], 4, 3, IndexError, r"data has 4 rows but its batch_sizes sum to 5"),
    ],
    ids=["increasing", "batch", "rows"],
)
def test_packed_layout_rejects_inconsistent_input(batch_sizes, rows, batch, error, match):
    with pytest.raises(error, match=match):
        packing.packed_layout(torch.tensor(batch_sizes), rows, batch)


def test_fake_implementations_agree_with_the_ops():
    p = packed()
    torch.library.opcheck(packing.packed_batch, (p.batch_sizes, torch.empty(0)))
    torch.library.opcheck(packing.packed_layout, (p.batch_sizes, p.data.shape[0], len(LENGTHS)))
