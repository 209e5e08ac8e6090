"""PRS under real DDP (2 CPU processes, gloo): every rank switches the same layers at the same epoch and the
weights stay identical across ranks through the switches.

The file is also the worker: `python tests/test_prs_ddp.py OUT_DIR DEVICES` trains the digits model for 3 epochs
(schedule prs, start 1, end 2, ramp 1 epoch) with Lightning's `ddp_find_unused_parameters_true` strategy (before its switch a
layer's attention parameters get no gradient) and writes one JSON per rank.
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(out_dir: str, devices: int) -> None:
    sys.path.insert(0, str(ROOT))
    import lightning as L
    import torch

    from callbacks.reparam import ReparameterizationSchedule
    from datamodules.prs import DigitsClassificationDataModule
    from lightning_modules.prs.module import PRSClassifier

    L.seed_everything(0)
    module = PRSClassifier(backbone="prs_vit_digits", num_classes=10, input_shape=(1, 8, 8), warmup_epochs=0)
    schedule = ReparameterizationSchedule(mode="prs", start=1, end=2, ramp_epochs=1)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_find_unused_parameters_true" if devices > 1 else "auto",
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[schedule],
    )
    dm = DigitsClassificationDataModule(image_size=8, batch_size=8, steps_per_epoch=2, eval_batch_size=200)
    trainer.fit(module, datamodule=dm)
    flat = torch.cat([p.detach().flatten() for p in module.parameters()])
    result = {
        "rank": trainer.global_rank,
        "switched_at": {str(k): v for k, v in schedule.switched_at.items()},
        "forms": [layer.is_attention for layer in module.reparam_layers()],
        "gates": [layer.gate.detach().tolist() for layer in module.reparam_layers()],
        "gate_scales": [float(layer.gate_scale) for layer in module.reparam_layers()],
        "weights_sum": float(flat.double().sum()),
        "weights_abs_sum": float(flat.double().abs().sum()),
        "val_acc": float(trainer.callback_metrics["val/acc"]),
    }
    Path(out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


def test_ranks_switch_together_and_stay_in_sync(tmp_path):
    proc = subprocess.run(
        [sys.executable, __file__, str(tmp_path), "2"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert r["switched_at"] == {"0": 2, "1": 2, "2": 1, "3": 1}
        assert r["forms"] == [True, True, True, True]
    assert ranks[0]["gates"] == ranks[1]["gates"]
    assert ranks[0]["gate_scales"] == ranks[1]["gate_scales"] == [0.5, 0.5, 0.0, 0.0]  # last batch: epoch 2.5
    assert any(g != 1.0 for gates in ranks[0]["gates"] for g in gates)  # gates trained after the switch
    assert ranks[0]["weights_sum"] == ranks[1]["weights_sum"]
    assert ranks[0]["weights_abs_sum"] == ranks[1]["weights_abs_sum"]
    assert ranks[0]["val_acc"] == ranks[1]["val_acc"]  # synced metric


if __name__ == "__main__":
    worker(sys.argv[1], int(sys.argv[2]))
