"""A PackedSequence's layout in the padded time-major (T, B) grid, as torch.library custom ops.

The batch size B = batch_sizes[0] is data (batch_sizes is a CPU tensor), so
torch.compile cannot read it without a graph break. ``fused_rnn::packed_batch``
returns it as an unbacked SymInt, one that no guard specializes, so a model
taking packed input compiles once for all batch sizes and lengths.
``fused_rnn::packed_layout`` checks batch_sizes (against a batch size the
caller knows, too) and gives the lengths and the grid position of every
packed row.
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.library.custom_op("fused_rnn::packed_batch", mutates_args=())
def packed_batch(batch_sizes: Tensor, token: Tensor) -> int:
    """batch_sizes[0]: the batch size of a PackedSequence, batch_sizes (T,) int64 on the CPU.

    ``token`` is unused: a fresh ``torch.empty(0)`` per call, so that no two calls have equal arguments. AOTAutograd's
    CSE (torch 2.13 ``fx_graph_cse``) would otherwise merge two calls on one batch_sizes and leave the second
    call's unbacked SymInt, still named by its users, without a definition (Inductor then fails on it). It must
    be ``torch.empty``: that CSE never merges ``aten.empty`` (it does merge ``zeros``).
    """
    return int(batch_sizes[0])


@packed_batch.register_fake
def _(batch_sizes: Tensor, token: Tensor) -> int:
    return torch.library.get_ctx().new_dynamic_size()


@torch.library.custom_op("fused_rnn::packed_layout", mutates_args=())
def packed_layout(batch_sizes: Tensor, rows: int, batch: int) -> tuple[Tensor, Tensor]:
    """batch_sizes (T,) int64 on the CPU, non-increasing from ``batch`` and summing to ``rows`` (the packed
    data's row count; both checked) -> lengths (B,) and positions (rows,), int64 on the CPU: packed row n sits
    at positions[n] = t * B + b of the flattened (T, B) grid."""
    if batch_sizes.numel() > 1 and bool((batch_sizes[1:] > batch_sizes[:-1]).any()):
        raise RuntimeError(
            f"PackedSequence batch_sizes must be non-increasing (sequences sorted by decreasing length), "
            f"got {batch_sizes.tolist()}"
        )
    if int(batch_sizes[0]) != batch:
        raise RuntimeError(f"Expected hidden batch size {int(batch_sizes[0])} (the PackedSequence's), got {batch}")
    valid = torch.arange(batch)[None, :] < batch_sizes[:, None]
    positions = valid.flatten().nonzero().squeeze(1)
    if positions.numel() != rows:
        raise IndexError(f"PackedSequence data has {rows} rows but its batch_sizes sum to {positions.numel()}")
    return valid.sum(0), positions


@packed_layout.register_fake
def _(batch_sizes: Tensor, rows: int, batch: int) -> tuple[Tensor, Tensor]:
    return batch_sizes.new_empty(batch), batch_sizes.new_empty(rows)


def unpack(data: Tensor, batch_sizes: Tensor, batch: int) -> tuple[Tensor, Tensor, Tensor]:
    """Packed data (N, I) -> padded (T, B, I), lengths (B,) and positions (N,) (``packed_layout``), on data's
    device; differentiable in data. ``batch`` is B: ``packed_batch``'s, or one the caller knows it equals
    (``packed_layout`` checks it)."""
    N, I = data.shape
    lengths, positions = packed_layout(batch_sizes, N, batch)
    lengths, positions = lengths.to(data.device), positions.to(data.device)
    T = batch_sizes.shape[0]
    padded = data.new_zeros(T * batch, I).index_copy(0, positions, data)
    return padded.view(T, batch, I), lengths, positions


def pack(padded: Tensor, positions: Tensor) -> Tensor:
    """Padded (T, B, F) -> packed data (N, F): the rows at ``positions`` (from ``unpack``)."""
    return padded.reshape(-1, padded.shape[-1]).index_select(0, positions)
