"""What a compiled sequence kernel reads inside its time loop, from its TTGIR (Triton's GPU-level IR).

The weight-stationary design rests on the compiler keeping W_hh's slice on chip:
loaded once before the loop over steps, never again inside it. ``w_placement``
reads that from the compiled code instead of assuming it: it finds the time loop
(the ``scf.for`` from ``S_BEGIN``), follows every global load in it (``tt.load``,
the pipeliner's ``ttg.async_copy_global_to_local``, AMD's ``amdg.buffer_load``) back through the SSA
definitions to the kernel arguments it addresses, and says whether any reaches
the W_hh argument ``w``; and, for a W loaded before the loop, whether the loop
reads it from shared memory (a ``ttg.local_alloc`` before the loop, a
``ttg.local_load`` of it inside) or holds it in registers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

_DEF = re.compile(r"^\s*(%[\w.$-]+)(?::\d+)?\s*=\s*(.*)$")
_NAME = re.compile(r"%[\w.$-]+")
_ITER_ARG = re.compile(r"(%[\w.$-]+)\s*=\s*(%[\w.$-]+)")
_GLOBAL_LOADS = ("tt.load ", "ttg.async_copy_global_to_local ", "amdg.buffer_load ")


@dataclass(frozen=True)
class Placement:
    """Where a kernel's W_hh lives: ``loads_in_loop`` global loads of W inside the time loop (0: resident),
    ``loads_before`` before it, and ``shared`` whether the loop reads W from shared memory it was put in."""

    loads_in_loop: int
    loads_before: int
    shared: bool

    @property
    def resident(self) -> bool:
        return self.loads_in_loop == 0 and self.loads_before > 0

    def __str__(self) -> str:
        if self.resident:
            return "resident (" + ("shared memory" if self.shared else "registers") + ")"
        if self.loads_in_loop == self.loads_before == 0:
            return "not read"  # a phase without the recurrent product (one launch per step and phase)
        return f"streamed ({self.loads_in_loop} loads a step)"


def _definitions(lines: list[str]) -> dict[str, list[str]]:
    """SSA value -> the values its defining operation uses (loop iteration arguments -> their initial values)."""
    defs: dict[str, list[str]] = {}
    for line in lines:
        match = _DEF.match(line)
        if match:
            name, rhs = match.groups()
            defs[name] = _NAME.findall(rhs.split(" loc(")[0])
        if "scf.for" in line and "iter_args(" in line:
            for arg, init in _ITER_ARG.findall(line.split("iter_args(", 1)[1]):
                defs.setdefault(arg, []).append(init)
    return defs


def _reaches(value: str, target: str, defs: dict[str, list[str]]) -> bool:
    seen, todo = set(), [value]
    while todo:
        v = todo.pop()
        if v == target:
            return True
        if v not in seen:
            seen.add(v)
            todo += defs.get(v, [])
    return False


def _time_loop(lines: list[str]) -> range:
    """Line numbers of the body of the loop over steps: the first scf.for starting at %S_BEGIN."""
    start = next(i for i, line in enumerate(lines) if "scf.for" in line and "= %S_BEGIN to" in line)
    depth = 0
    for end in range(start, len(lines)):
        depth += lines[end].count("{") - lines[end].count("}")
        if depth == 0:
            return range(start + 1, end)
    raise ValueError("unbalanced time loop")


def w_placement(ttgir: str, weights: str = "%w") -> Placement:
    """Where the kernel argument ``weights`` (W_hh) is read: inside the time loop or once before it."""
    lines = ttgir.splitlines()
    defs = _definitions(lines)
    loop = _time_loop(lines)
    in_loop = before = 0
    loaded: list[str] = []
    for i, line in enumerate(lines):
        op = next((op for op in _GLOBAL_LOADS if op in line), None)
        if op is None:
            continue
        pointer = _NAME.findall(line.split(op, 1)[1])[0]
        if _reaches(pointer, weights, defs):
            if i in loop:
                in_loop += 1
            elif i < loop.start:
                before += 1
                loaded.append(_DEF.match(line).group(1))
    # W staged in shared memory before the loop: resident there when the loop reads it with local_load each
    # step; in registers when the operand is loaded out of shared memory before the loop too (or never staged).
    allocs = {_DEF.match(line).group(1) for line in lines[: loop.start] if "ttg.local_alloc" in line
              and any(_reaches(v, w, defs) for v in _NAME.findall(line.split("ttg.local_alloc", 1)[1].split(" loc(")[0])
                      for w in loaded)}
    shared = any("ttg.local_load" in lines[i] and _NAME.findall(lines[i].split("ttg.local_load", 1)[1])[0] in allocs
                 for i in loop)
    return Placement(in_loop, before, shared)


# Global stores, with the position of their address among the operands (AMD's buffer store: value, base[offsets]).
_GLOBAL_STORES = {"tt.store ": 0, "amdg.buffer_store ": 1}


def loop_accesses(ttgir: str, argument: str) -> int:
    """Global loads and stores inside the time loop whose address derives from the kernel ``argument`` (for a
    state kept in registers across steps: 0)."""
    lines = ttgir.splitlines()
    defs = _definitions(lines)
    operand = {op: 0 for op in _GLOBAL_LOADS} | _GLOBAL_STORES
    found = 0
    for i in _time_loop(lines):
        op = next((op for op in operand if op in lines[i]), None)
        if op is not None and _reaches(_NAME.findall(lines[i].split(op, 1)[1])[operand[op]], argument, defs):
            found += 1
    return found


def _compiled_sequence_kernels(case, target: str) -> Iterator[tuple[object, str]]:
    """(configuration, TTGIR) of every sequence-kernel configuration the launchers pick for ``case`` (a compile
    report Case) on ``target``. Compiles for real: call it without Triton's interpreter (in the compile report's
    workers)."""
    import triton

    from . import compile_report as cr

    for config, _ in cr.capture(case, [target]):
        if config.kernel.startswith("sequence"):
            compiled = triton.compile(cr.source(config), target=cr.TARGETS[target].gpu, options=dict(config.options))
            yield config, compiled.asm["ttgir"]


def placements(case, target: str) -> dict[tuple[str, bool], str]:
    """(kernel, weight-stationary plan?) -> where W_hh lives (``str(Placement)``, " / " between configurations that
    differ) for every sequence-kernel configuration the launchers pick for ``case`` on ``target``."""
    found: dict[tuple[str, bool], set[str]] = {}
    for config, ttgir in _compiled_sequence_kernels(case, target):
        found.setdefault((config.kernel, dict(config.constexprs)["KP"] > 0), set()).add(str(w_placement(ttgir)))
    return {k: " / ".join(sorted(v)) for k, v in found.items()}


def state_accesses(case, target: str) -> dict[tuple[str, bool], set[tuple[int, ...]]]:
    """(kernel, weight-stationary plan?) -> the global loads and stores in the time loop (``loop_accesses``) of
    the state buffers a program owns (forward: cbuf; backward: dhbuf, dcbuf), one tuple per configuration the
    launchers pick for ``case`` on ``target``."""
    found: dict[tuple[str, bool], set[tuple[int, ...]]] = {}
    for config, ttgir in _compiled_sequence_kernels(case, target):
        states = ("%cbuf",) if config.kernel == "sequence_fwd_kernel" else ("%dhbuf", "%dcbuf")
        key = (config.kernel, dict(config.constexprs)["KP"] > 0)
        found.setdefault(key, set()).add(tuple(loop_accesses(ttgir, s) for s in states))
    return found
