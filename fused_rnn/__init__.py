"""fused-rnn: Triton kernels for recurrent networks, as drop-in torch.nn modules."""

from . import autocast
from .cells import GRUCell, LSTMCell, RNNCell
from .convert import convert
from .dispatch import choose_path, force_path
from .flashrnn_compat import flashrnn
from .path_report import explain
from .kernels.launch import count_launches
from .layer_norm import LayerNormGRU, LayerNormIndRNN, LayerNormLSTM
from .layers import GRU, LSTM, RNN
from .multihead import IndRNN, MultiHeadGRU, MultiHeadLSTM, MultiHeadRNN, sLSTM

__all__ = [
    "LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "convert", "count_launches", "choose_path", "force_path",
    "explain", "flashrnn", "MultiHeadLSTM", "MultiHeadGRU", "MultiHeadRNN", "sLSTM", "IndRNN",
    "LayerNormLSTM", "LayerNormGRU", "LayerNormIndRNN",
]
__version__ = "0.1.0"

autocast.register_all()
