"""Throughput benchmark of fused_rnn against torch.nn (cuDNN and native) and torch.compile.

Run it with ``python -m fused_rnn.bench`` (``fused-rnn-bench``); ``docs/benchmarks.md``
explains the options, the methodology and how to read the results.

- ``cases``: the cases (default, sweeps, interpreter scaling), shared with ``benchmarks/``.
- ``problem``: one case's module, inputs, output gradient, float64 reference and tolerance.
- ``loop``: the reference cell loop that torch.compile compiles.
- ``candidates``: the implementations under test.
- ``timing``: GPU-event or wall-clock timing, peak memory, kernel counts, the compile cap.
- ``run``: check each candidate, then time it; one result row per candidate.
- ``report``: terminal table, JSON, CSV, markdown, plot, environment.
- ``cli``, ``summary``: the command lines.

Nothing here is imported by ``fused_rnn`` itself.
"""
