"""The module's DDP path for test metrics: 2 gloo processes, each holding half the outputs, gather the strings and
log exactly the single-process numbers (computed on all items)."""

import json
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_modules.qg.metrics import QGScorer
from lightning_modules.qg.module import gather_objects, qg_test_metrics

PREDS = [
    "when was the castle built ?",
    "who built it ?",
    "what is the river called ?",
    "where is the bridge ?",
    "why did it flood ?",
]
REFS = [
    ["When was the castle built?", "In which year was the castle built?"],
    ["Who built the bridge?", "Who?"],
    ["What is the name of the river?", "Name the river."],
    ["Where is the bridge?", "Where's it?"],
    ["Why did the river flood?", "What caused the flood?"],
]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        mine = [
            {"prediction": p, "references": r}
            for i, (p, r) in enumerate(zip(PREDS, REFS, strict=True))
            if i % world == rank
        ]  # uneven shares, as the unrepeated sampler gives
        rows = gather_objects(mine)
        scores = qg_test_metrics(
            QGScorer(["bleu4", "rougeL"], verbose=False),
            [r["prediction"] for r in rows],
            [r["references"] for r in rows],
            ("max", "mean", "native"),
        )
        with open(f"{out_dir}/rank{rank}.json", "w") as fh:
            json.dump({"n": len(rows), "scores": scores}, fh)
    finally:
        dist.destroy_process_group()


def test_two_process_gather_gives_the_single_process_metrics(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    expected = qg_test_metrics(
        QGScorer(["bleu4", "rougeL"], verbose=False), PREDS, REFS, ("max", "mean", "native")
    )
    assert not (dist.is_available() and dist.is_initialized())
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["n"] == len(PREDS)
        assert set(got["scores"]) == set(expected)
        for key, value in expected.items():
            assert torch.isclose(torch.tensor(got["scores"][key]), torch.tensor(value), atol=1e-9), key
