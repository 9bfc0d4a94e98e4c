"""Triton code of fused-rnn: device functions, kernels, their launchers and block choices.

Installed as ``fused_rnn.kernels``; import it under that name.
"""
