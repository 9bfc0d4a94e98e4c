"""The benchmark cases: the issue's default case and sweep ranges, and the interpreter scaling."""

from __future__ import annotations

from fused_rnn.bench.cases import DEFAULT, SWEEPS, Case, expand, point, scaled_for_interpreter, standard_cases, unique


def test_default_case_is_the_fastrnns_one():
    assert (DEFAULT.seq_len, DEFAULT.batch, DEFAULT.input_size, DEFAULT.hidden_size) == (100, 64, 512, 512)
    assert (DEFAULT.num_layers, DEFAULT.bidirectional, DEFAULT.packed) == (1, False, False)
    assert DEFAULT.tokens == 6400


def test_sweeps_cover_the_issue_ranges():
    def values(name, field):
        return [p[field] for p in SWEEPS[name].points]

    assert values("batch", "batch")[0] == 1 and values("batch", "batch")[-1] == 256
    assert values("hidden", "hidden_size") == [64, 128, 256, 512, 1024, 2048] == values("hidden", "input_size")
    assert values("seq", "seq_len") == [16, 64, 256, 1024, 4096]
    layers = {(p["num_layers"], p["bidirectional"]) for p in SWEEPS["layers"].points}
    assert layers >= {(1, True), (2, False), (2, True), (4, False)}
    assert values("packed", "packed") == [False, True]


def test_expand_crosses_cells_modes_dtypes_and_points():
    cases = expand(DEFAULT, ("lstm", "gru"), ("forward",), ("fp16",), ("seq",))
    assert len(cases) == 2 * 5
    assert [c.seq_len for c in cases[:5]] == [16, 64, 256, 1024, 4096]
    assert all(c.sweep == "seq" and c.hidden_size == 512 for c in cases)
    assert [point(c) for c in cases[:2]] == ["16", "64"]
    assert point(DEFAULT) == ""
    assert expand(DEFAULT, ("gru",), ("forward",), ("fp32",)) == [Case(cell="gru", mode="forward")]


def test_interpreter_scaling_divides_the_sizes_by_eight():
    small = scaled_for_interpreter(DEFAULT)
    assert (small.seq_len, small.batch, small.input_size, small.hidden_size) == (13, 8, 64, 64)
    assert small.num_layers == DEFAULT.num_layers
    # Batch points 1..8 all scale to 1: one case remains of them.
    sweep = expand(DEFAULT, ("lstm",), ("forward",), ("fp32",), ("batch",))
    batches = unique([scaled_for_interpreter(c) for c in sweep])
    assert [c.batch for c in batches] == [1, 2, 4, 8, 16, 32]


def test_standard_cases():
    full = standard_cases()
    assert len(full) == 3 * 2 * 3 and {c.cell for c in full} == {"lstm", "gru", "rnn_tanh"}
    assert all(c.seq_len == 100 for c in full)
    assert all(c.seq_len == 13 for c in standard_cases(interpreter=True))
    assert str(full[0]) == "lstm-forward-fp32-T100-B64-I512-H512-L1"
