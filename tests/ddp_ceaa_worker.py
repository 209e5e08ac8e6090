"""DDP worker for the CEAA loss: 2 gloo processes, each with half of a global batch, vs 1 process on all of it.

Called by tests/test_ceaa_ddp.py through tests.ddp_runner.run_worker as ``python tests/ddp_ceaa_worker.py OUT``.
Rank 0 holds ARC fixture rows [0, 2, 3], rank 1 rows [1, 4, 5]: the tags "food chain" and "weather" are gold on both
ranks, so the gathered batch must deduplicate them and mask them as the other rank's gold. Each rank computes the
loss with `global_batch(..., gather=True)` and backpropagates; gradients are then averaged as DDP does. Rank 0 saves
the DDP loss and averaged gradients next to the loss and gradients of one process on the six rows.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.ceaa import ArcTaggingDataModule  # noqa: E402
from lightning_modules.ceaa.losses import multilabel_info_nce  # noqa: E402
from lightning_modules.ceaa.module import BiEncoderTagger, global_batch  # noqa: E402
from tests.test_ceaa_data import write_arc  # noqa: E402
from tests.test_ceaa_module import TINY_BERT  # noqa: E402

ROWS = {0: [0, 2, 3], 1: [1, 4, 5]}


def loss_and_grads(model: BiEncoderTagger, dm, rows: list[int], gather: bool):
    batch = dm.collate_train([{**dm.splits["train"][i], "index": i} for i in rows])
    q = model.encode_queries(batch["query"])
    t = model.encode_tags(batch["tags"])
    q, t, labels = global_batch(q, t, batch["gold"], batch["tag_ids"], gather)
    loss = multilabel_info_nce(q @ t.T / model.hparams.temperature, labels)
    model.zero_grad()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, labels


def worker(rank: int, world: int, data: str, out: str, port: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    dm = ArcTaggingDataModule(root=data)
    cfg = {**TINY_BERT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    torch.manual_seed(0)
    model = BiEncoderTagger(model_config=cfg)
    loss, grads, labels = loss_and_grads(model, dm, ROWS[rank], gather=True)
    for g in grads.values():  # what DDP's gradient all-reduce does
        dist.all_reduce(g)
        g /= world
    if rank == 0:
        torch.manual_seed(0)
        single = BiEncoderTagger(model_config=cfg)
        s_loss, s_grads, s_labels = loss_and_grads(single, dm, ROWS[0] + ROWS[1], gather=False)
        torch.save(
            {
                "ddp_loss": loss,
                "ddp_grads": grads,
                "ddp_labels": labels,
                "loss": s_loss,
                "grads": s_grads,
                "labels": s_labels,
            },
            out,
        )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        data = str(write_arc(Path(tmp) / "arc"))
        port = str(29500 + os.getpid() % 2000)
        # fork: the children inherit the imported libraries instead of importing them again (faster on 2 cores)
        mp.start_processes(
            worker, args=(2, data, sys.argv[1], port), nprocs=2, join=True, start_method="fork"
        )
