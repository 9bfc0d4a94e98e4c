"""FSDP2 (fully_shard) over fused layers: 2 processes (gloo, CPU) equal one torch.nn process on the whole batch.

Each recurrent layer and the root module are sharded; the full parameters are gathered (DTensor.full_tensor)
after training and compared by name with a torch.nn model trained in one process.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import assert_close, errors
from test_layers_ddp import B, DEVICE, Net, exit_worker, train
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

import fused_rnn


def _worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        net = Net(fused=True)
        fully_shard(net.lstm)
        fully_shard(net.gru)
        fully_shard(net)
        sharded = dict(net.named_parameters())
        if not all(isinstance(p, DTensor) for p in sharded.values()):
            raise AssertionError(f"not sharded: {[n for n, p in sharded.items() if not isinstance(p, DTensor)]}")
        half = B // world
        with fused_rnn.count_launches() as launches:
            train(net, slice(rank * half, (rank + 1) * half))
        if launches.total == 0:
            raise AssertionError("the fused kernels did not run")
        full = {name: p.full_tensor() for name, p in net.state_dict().items()}  # a collective: every rank gathers
        dist.barrier()  # no rank tears the group down while the other may still be in a collective with it
        if rank == 0:
            torch.save(full, out_file)
    finally:
        dist.destroy_process_group()
    exit_worker()


@pytest.mark.skipif(not dist.is_gloo_available(), reason="torch built without gloo")
def test_fsdp2_two_processes_equal_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    out_file = str(tmp_path / "params.pt")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), out_file), nprocs=2, join=True)
    reference = Net(fused=False)
    train(reference, slice(0, B))
    got = torch.load(out_file, map_location=DEVICE)
    expected = reference.state_dict()
    assert got.keys() == expected.keys()
    initial = Net(fused=False).state_dict()
    for name, want in expected.items():
        assert_close(got[name], want, torch.float64, name)
        assert errors(got[name], initial[name]).norm > 1e-6, f"{name} did not change"
