"""DDP on CPU (gloo, 2 processes) makes the same update as one process with the combined batch."""

from __future__ import annotations

import os
import socket

import torch

WORLD, STEPS = 2, 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    from safetensors.torch import save_file

    from mddose.train.distributed import cleanup_distributed, init_distributed
    from mddose.train.trainer import Trainer
    from tests.train.test_trainer import DictDataset, tiny_config, tiny_model

    info = init_distributed("cpu")
    try:
        tr = Trainer(tiny_config(max_steps=STEPS, batch_size=4), tiny_model(), DictDataset(n=12), out,
                     progress=False, dist=info)
        tr.fit()
        if rank == 0:
            save_file({k: v.contiguous() for k, v in tr.model.state_dict().items()}, os.path.join(out, "w.safetensors"))
    finally:
        cleanup_distributed(info)


def test_two_processes_equal_one_process_with_combined_batch(tmp_path):
    from safetensors.torch import load_file

    from mddose.train.trainer import Trainer
    from tests.train.test_trainer import DictDataset, tiny_config, tiny_model

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        assert k not in os.environ or os.environ[k] in ("0", "1")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = Trainer(tiny_config(max_steps=STEPS, batch_size=4), tiny_model(), DictDataset(n=12),
                         tmp_path / "single", progress=False)
        single.fit()
    finally:
        torch.set_num_threads(n)
    init = tiny_model().state_dict()
    out = tmp_path / "ddp"
    out.mkdir()
    torch.multiprocessing.spawn(_worker, args=(WORLD, _free_port(), str(out)), nprocs=WORLD, join=True)
    ddp = load_file(str(out / "w.safetensors"))
    assert not (out / "best").exists() and (out / "last" / "model.safetensors").is_file()
    moved = 0
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(ddp[k], v, atol=1e-6, rtol=1e-5)
        moved += int(not torch.allclose(v, init[k]))
    assert moved >= 4  # the comparison is not trivially between untrained weights
