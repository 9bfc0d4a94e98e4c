"""fused-rnn: Triton kernels for recurrent networks, as drop-in torch.nn modules."""

from .cells import GRUCell, LSTMCell, RNNCell
from .kernels.launch import count_launches

__all__ = ["LSTMCell", "GRUCell", "RNNCell", "count_launches"]
__version__ = "0.1.0"
