"""The ahead-of-time compile report on the quick grid: every kernel compiles for every target without spilling;
a failing configuration is named and makes the command exit with status 1.

The report compiles for real GPU targets even here, where conftest runs the
kernels in Triton's interpreter: its workers start without TRITON_INTERPRET.
"""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest

from fused_rnn import compile_report as R

TARGETS = list(R.TARGETS)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A fresh Triton cache: the first run compiles everything, later runs in this module reuse it."""
    return tmp_path_factory.mktemp("triton-cache")


@pytest.fixture(scope="module")
def report(cache_dir) -> R.Report:
    return R.run(R.QUICK, "quick", TARGETS, jobs=2, cache_dir=cache_dir)


def _failures(report: R.Report, results: list[R.Result]) -> str:
    """One line per result: target, kernel, the case that picked it, what is wrong."""
    return "\n".join(f"{r.config.target} {r.config.kernel} [{report.examples[r.config]}]: {r.problems()}"
                     for r in results)


def test_quick_grid_reaches_every_kernel_on_every_target(report):
    assert not report.uncovered
    kernels = {r.config.kernel for r in report.results}
    assert {(r.config.kernel, r.config.target) for r in report.results} == {(k, t) for k in kernels for t in TARGETS}
    assert {"sequence_fwd_kernel", "sequence_bwd_kernel", "lstm_cell_fwd_kernel", "rnn_cell_bwd_kernel"} <= kernels


def test_configurations_are_captured_as_on_a_gpu(report):
    """Interpreter-only choices do not leak: bf16 sequence kernels multiply in bf16 even though this process
    interprets (when it has no GPU)."""
    bf16 = [r.config for r in report.results if r.config.kernel == "sequence_fwd_kernel"
            and dict(r.config.signature)["xp"] == "*bf16"]
    assert bf16 and all(dict(c.constexprs)["DOT_FP32"] is False for c in bf16)


def test_amd_gets_the_sequence_kernels_of_every_cell(report):
    """Every cell and dtype takes the sequence kernels on AMD GPUs too (LSTM and fp64 included: with no stride
    arguments their scalar registers no longer spill to memory), without NVIDIA's register option and with one
    pipeline stage; a one-launch grid (with barriers) is launched cooperatively."""
    amd = [r.config for r in report.results if r.config.target == "gfx942" and r.config.kernel.startswith("sequence")]
    cells = {(dict(c.constexprs)["CELL"], dict(c.constexprs)["ACC"].primitive_bitwidth) for c in amd}
    assert {(0, 32), (0, 64), (1, 32), (3, 32)} <= cells, cells
    for c in amd:
        cooperative = {"launch_cooperative_grid": True} if dict(c.constexprs)["BARRIER"] else {}
        assert dict(c.options) == {"num_stages": 1, "num_warps": 8} | cooperative, c.label


def test_nvidia_sequence_kernels_may_use_every_register(report):
    """ptxas caps 256-thread kernels at 128 registers unless told otherwise; the sequence kernels need more."""
    nvidia = [r.config for r in report.results if r.config.target != "gfx942" and r.config.kernel.startswith("sequence")]
    assert nvidia and all(dict(c.options)["maxnreg"] == 255 for c in nvidia)


def test_every_configuration_compiles(report):
    errors = [r for r in report.results if r.error is not None]
    assert not errors, _failures(report, errors)
    assert all(r.usage.regs > 0 for r in report.results)


def test_no_configuration_spills_or_overflows_shared_memory(report):
    failing = [r for r in report.results if r.problems()]
    assert not failing, _failures(report, failing)


def _config(target: str) -> R.Config:
    return R.Config("k", target, (), (), (), (), label="")


@pytest.mark.parametrize(
    ("usage", "error", "problems"),
    [
        (R.Usage(regs=40, spills=0, local=0, shared=1024, detail=""), None, []),
        (R.Usage(regs=255, spills=632, local=0, shared=0, detail=""), None, ["spills 632 B"]),
        (R.Usage(regs=96, spills=0, local=16, shared=0, detail=""), None, ["local memory 16 B"]),
        (R.Usage(regs=161, spills=0, local=0, shared=0, detail="", lane_spills=49), None, []),
        (R.Usage(regs=96, spills=0, local=0, shared=65537, detail=""), None, ["shared 65537 B > 65536 B"]),
        (None, "CompilationError: boom", ["compile error: CompilationError: boom"]),
    ],
    ids=["ok", "spills", "local", "sgprs-in-vgpr-lanes", "shared-over-limit", "compile-error"],
)
def test_what_fails_a_configuration(usage, error, problems):
    assert R.Result(_config("gfx942"), usage, error, 0.0).problems() == problems


def test_amd_sgpr_spills_are_lane_spills_and_vgpr_spills_bytes():
    """The amdgcn metadata: SGPR spills go to VGPR lanes (counted apart), VGPR spills to scratch (4 B each)."""
    fields = dict(vgpr_count=161, sgpr_count=106, vgpr_spill_count=3, sgpr_spill_count=49,
                  private_segment_fixed_size=12, group_segment_fixed_size=1024)
    amdgcn = "".join(f"    .{k}:     {v}\n" for k, v in fields.items())
    compiled = SimpleNamespace(asm={"amdgcn": amdgcn}, metadata=SimpleNamespace(shared=0))
    usage = R._amd_usage(compiled)
    assert (usage.regs, usage.spills, usage.local, usage.shared, usage.lane_spills) == (161, 12, 12, 1024, 49)


def test_a_one_launch_grid_must_fit_the_target_at_once():
    """sm_90: 255 registers x 8 warps -> one program per SM, 132 SMs; 4 warps of 64 registers -> 8 per SM."""
    heavy = R.Config("k", "sm_90", (), (), (), (("num_warps", 8),), label="")
    usage = R.Usage(regs=255, spills=0, local=0, shared=1024, detail="")
    assert R.Result(heavy, usage, None, 0.0, one_launch=132).problems() == []
    assert R.Result(heavy, usage, None, 0.0, one_launch=133).problems() == [
        "one-launch grid of 133 programs > 132 held at once"]
    light = R.Config("k", "sm_90", (), (), (), (("num_warps", 4),), label="")
    assert R.Result(light, R.Usage(64, 0, 0, 0, ""), None, 0.0).programs_per_sm() == 8
    amd = R.Config("k", "gfx942", (), (), (), (("num_warps", 8),), label="")
    assert R.Result(amd, R.Usage(256, 0, 0, 0, ""), None, 0.0).held() == 304  # 2 waves per SIMD x 4 / 8


@pytest.mark.parametrize("target", ["sm_80", "sm_90"])
def test_a_one_launch_grid_larger_than_an_nvidia_target_holds_fails(report, target):
    """The quick grid's NVIDIA plans fit their targets (the dispatcher counts on dispatch.PROGRAMS_PER_SM), so the
    rule is shown on their real binaries: a one-launch grid one program larger than the target holds at once
    (programs per SM x SMs) adds that problem to the configuration's."""
    grids = [r for r in report.results if r.one_launch and r.config.target == target and r.usage is not None]
    assert grids
    for r in grids:
        held = r.programs_per_sm() * R.TARGETS[target].sms
        too_many = dataclasses.replace(r, one_launch=held + 1)
        assert too_many.problems() == r.problems() + [f"one-launch grid of {held + 1} programs > {held} held at once"]


def test_the_dispatchers_one_launch_grids_fit_every_target(report):
    """The quick grid's large layers get hidden-split plans with barriers on every target (and their one
    launch per step and phase form); each one-launch grid fits the target at once."""
    grids = [r for r in report.results if r.one_launch]
    assert {r.config.target for r in grids} == set(TARGETS)
    assert all(dict(r.config.constexprs)["BARRIER"] for r in grids)
    assert all(r.one_launch <= r.held() for r in grids), [(r.one_launch, r.held()) for r in grids]
    stepped = {dict(r.config.constexprs)["PHASES"] for r in report.results
               if r.config.kernel == "sequence_bwd_kernel" and not dict(r.config.constexprs)["BARRIER"]}
    assert {2, 4} <= stepped  # backward's gate and carry phases, launched one at a time


def test_command_line_writes_the_table_and_exits_non_zero_on_failures(report, cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(cache_dir))  # the fixture's binaries: nothing recompiles
    md, js = tmp_path / "report.md", tmp_path / "report.json"
    status = R.main(["--quick", "--jobs", "2", "--markdown", str(md), "--json", str(js)])
    assert status == (1 if report.failed else 0)
    text = md.read_text()
    for kernel in {r.config.kernel for r in report.results}:
        for target in TARGETS:
            assert f"| {kernel} | {target} |" in text
    rows = json.loads(js.read_text())
    assert len(rows) == len(report.results)
    assert {row["target"] for row in rows} == set(TARGETS)


def _result(target: str, usage: R.Usage | None, error: str | None = None, warps: int = 8, one_launch: int = 0,
            kernel: str = "sequence_fwd_kernel") -> R.Result:
    config = R.Config(kernel, target, (), (("BARRIER", bool(one_launch)),), (), (("num_warps", warps),),
                      label=f"BARRIER={bool(one_launch)} num_warps={warps}")
    return R.Result(config, usage, error, 0.0, one_launch=one_launch)


def _fake_run(monkeypatch, results: list[R.Result], uncovered: tuple[str, ...] = ()) -> None:
    """``main`` gets a report of ``results`` (each picked by the first quick case) instead of compiling."""
    def run(cases, grid, targets, jobs) -> R.Report:
        assert targets == TARGETS
        return R.Report(grid, tuple(targets), results, {r.config: R.QUICK[0] for r in results}, len(cases),
                        list(uncovered), 0.0, jobs)

    monkeypatch.setattr(R, "run", run)


CLEAN = _result("sm_90", R.Usage(regs=200, spills=0, local=0, shared=4096, detail=""), one_launch=128)
FAILING = [
    (_result("sm_80", R.Usage(255, 632, 0, 0, ""), kernel="lstm_cell_fwd_kernel"), "spills 632 B"),
    (_result("gfx942", None, "CompilationError: boom"), "compile error: CompilationError: boom"),
    # 255 registers x 8 warps: one program per SM, 132 held at once; a plan counting on two per SM.
    (_result("sm_90", R.Usage(255, 0, 0, 4096, ""), one_launch=264), "one-launch grid of 264 programs > 132 held"),
    # 16 warps of 255 registers: no SM holds even one program.
    (_result("sm_90", R.Usage(255, 0, 0, 4096, ""), warps=16, one_launch=8), "one-launch grid of 8 programs > 0 held"),
]


@pytest.mark.parametrize(("failing", "problem"), FAILING, ids=["spills", "compile-error", "grid-over", "grid-none"])
def test_command_line_names_a_failing_configuration_and_exits_1(monkeypatch, capsys, tmp_path, failing, problem):
    _fake_run(monkeypatch, [CLEAN, failing])
    md = tmp_path / "report.md"
    assert R.main(["--quick", "--markdown", str(md)]) == 1
    line = f"- FAILING: {failing.config.kernel} on {failing.config.target} ({R.QUICK[0]}: {failing.config.label}): "
    out = capsys.readouterr().out
    assert line + problem in out, out
    assert line + problem in md.read_text()
    assert out.count("- FAILING:") == 1, "the passing configuration is not named"


def test_command_line_exits_0_only_when_nothing_fails(monkeypatch, capsys):
    _fake_run(monkeypatch, [CLEAN])
    assert R.main(["--quick"]) == 0
    assert "FAILING" not in capsys.readouterr().out
    _fake_run(monkeypatch, [CLEAN], uncovered=("rnn_cell_bwd_kernel on gfx942",))
    assert R.main(["--quick"]) == 1
    assert "- NOT COVERED by any case: rnn_cell_bwd_kernel on gfx942" in capsys.readouterr().out
