"""fused_rnn.convert: swap every torch.nn recurrent layer and cell of a model for its fused twin."""

from __future__ import annotations

import warnings

from torch import nn

from .cells import GRUCell, LSTMCell, RNNCell
from .layers import GRU, LSTM, RNN, let_dynamo_trace_fused_layers

# Exact torch.nn class -> fused class (a subclass of it, adding no state).
FUSED = {nn.LSTM: LSTM, nn.GRU: GRU, nn.RNN: RNN, nn.LSTMCell: LSTMCell, nn.GRUCell: GRUCell, nn.RNNCell: RNNCell}
_RECURRENT_BASES = (nn.RNNBase, nn.RNNCellBase)


def _convert_one(module: nn.Module) -> None:
    cls = type(module)
    if cls in FUSED.values():
        return
    if cls in FUSED:
        # The fused class subclasses cls and adds no state, so switching the class keeps the very
        # same Parameter objects, buffers, hooks, training mode, device, dtype and user attributes.
        module.__class__ = FUSED[cls]
        if isinstance(module, nn.RNNBase):  # no __init__ ran: let torch.compile trace it (layers.py)
            let_dynamo_trace_fused_layers()
    elif isinstance(module, _RECURRENT_BASES):
        warnings.warn(
            f"fused_rnn.convert left {cls.__module__}.{cls.__qualname__} unconverted: it subclasses a torch.nn "
            f"recurrent module with its own code, which a fused class could not keep",
            stacklevel=3,
        )


def convert(model: nn.Module) -> nn.Module:
    """Replace, in place and recursively, every torch.nn RNN/LSTM/GRU and RNNCell/LSTMCell/GRUCell.

    The model's Parameters are shared, not copied, so an optimizer built before
    the conversion keeps working. Returns the model.
    """
    for module in model.modules():
        _convert_one(module)
    return model
