"""A test-only way to run one launch's programs concurrently in Triton's interpreter: one thread per program.

Triton's interpreter runs a grid's programs one after another from one loop
(``GridExecutor.__call__``), reading the program id from one shared builder, so a
barrier across programs never returns there. ``concurrent_programs`` changes
three things for the duration of a ``with`` block:

- the builder's ``grid_idx`` becomes thread-local (a property on a subclass);
- each ``GridExecutor`` calls, in place of the kernel, a starter with the
  kernel's signature and globals (the interpreter patches ``triton.language``
  through the kernel's globals) that runs the program in a new thread with its
  own program id;
- the last program's starter joins every thread with a timeout, inside the
  executor's loop (before it restores the language patch), and raises
  ``TimeoutError`` when a program is still running (a barrier that never
  opens) or re-raises a program's error;
- with ``straggler_s``, every store of the last program on grid axis 1 (the
  last hidden slice of each batch tile) first sleeps that long, so that program
  always arrives last: a barrier that lets the others go before it arrives
  makes them read state it has not written yet.

It depends on those three interpreter internals of triton 3.6 to 3.9; a Triton
that changes them makes the tests that use it fail, not pass. It tests the
protocol (arrival counts, ping-pong parity, phases), not GPU memory ordering.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
import threading
import time
import types
from collections.abc import Iterator

from triton.runtime import interpreter


class _Programs:
    """The threads of one launch."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def start(self, fn, args: dict, idx: tuple[int, int, int], last: bool) -> None:
        def run() -> None:
            interpreter.interpreter_builder.grid_idx = idx
            try:
                fn(**args)
            except BaseException as error:  # handed to the joining thread
                self.errors.append(error)

        thread = threading.Thread(target=run, name=f"program {idx}", daemon=True)
        self.threads.append(thread)
        thread.start()
        if last:
            self.join()

    def join(self) -> None:
        deadline = time.monotonic() + self.timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        running = [t.name for t in self.threads if t.is_alive()]
        if running:
            raise TimeoutError(f"{len(running)} programs still running after {self.timeout} s: {running[:4]}")
        if self.errors:
            raise self.errors[0]


def _starter(fn, grid_dim: tuple[int, int, int], timeout: float, started: list[int]):
    """A function with ``fn``'s signature and globals that starts one program of the launch in a thread; the
    launch's entry of ``started`` counts the threads it started."""
    programs = _Programs(timeout)
    started.append(0)
    launch = len(started) - 1
    last = tuple(n - 1 for n in grid_dim)
    builder = interpreter.interpreter_builder

    def start(**args):  # runs with the kernel's globals: only closure variables here
        idx = builder.grid_idx
        started[launch] += 1
        programs.start(fn, args, idx, idx == last)

    starter = types.FunctionType(start.__code__, fn.__globals__, fn.__name__, None, start.__closure__)
    starter.__signature__ = inspect.signature(fn)
    return starter


@contextlib.contextmanager
def concurrent_programs(timeout: float = 60.0, straggler_s: float = 0.0) -> Iterator[list[int]]:
    """Run every interpreted launch in the block with one thread per program (module docstring). Yields the
    number of programs each launch ran in its own thread, launch by launch."""
    builder = interpreter.interpreter_builder
    local = threading.local()

    def straggle(self) -> None:
        idx = getattr(local, "idx", None)
        if straggler_s and idx is not None and idx[1] == self.grid_dim[1] - 1:
            time.sleep(straggler_s)

    class ThreadLocalGrid(type(builder)):
        grid_idx = property(lambda self: getattr(local, "idx", None), lambda self, v: setattr(local, "idx", v))

        def create_store(self, *args, **kwargs):
            straggle(self)
            return super().create_store(*args, **kwargs)

        def create_masked_store(self, *args, **kwargs):
            straggle(self)
            return super().create_masked_store(*args, **kwargs)

    class ConcurrentExecutor(interpreter.GridExecutor):
        def __call__(self, *args, **kwargs):
            fn = self.fn
            grid = self.grid + (1,) * (3 - len(self.grid))
            self.fn = _starter(fn, grid, timeout, started)
            try:
                return super().__call__(*args, **kwargs)
            finally:
                self.fn = fn

    started: list[int] = []
    original_class, original_executor = type(builder), interpreter.GridExecutor
    switch = sys.getswitchinterval()
    builder.__class__ = ThreadLocalGrid
    interpreter.GridExecutor = ConcurrentExecutor
    sys.setswitchinterval(1e-5)  # interleave the programs finely
    try:
        yield started
    finally:
        sys.setswitchinterval(switch)
        interpreter.GridExecutor = original_executor
        builder.__class__ = original_class


@contextlib.contextmanager
def bytes_loaded_from(tensor) -> Iterator[list[int]]:
    """Count the bytes interpreted kernels load from ``tensor``'s storage inside the block (by address range;
    masked-off elements are not loaded). Yields a one-element list holding the running total."""
    builder = interpreter.interpreter_builder
    storage = tensor.untyped_storage()
    lo, hi = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
    total, lock = [0], threading.Lock()
    load = builder.create_masked_load  # bound to the builder whatever class it has inside the block

    def counted(ptrs, mask, *rest):  # the rest (other, cache and volatile options) differs between Triton releases
        hits = int(((ptrs.data >= lo) & (ptrs.data < hi) & mask.data).sum())
        size = ptrs.get_element_ty().primitive_bitwidth // 8
        with lock:
            total[0] += hits * size
        return load(ptrs, mask, *rest)

    builder.create_masked_load = counted
    try:
        yield total
    finally:
        del builder.create_masked_load
