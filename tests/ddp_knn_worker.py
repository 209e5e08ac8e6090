"""Validate the digits SimCLR config (random init) with N CPU processes and save the k-NN accuracies.

Usage: python tests/ddp_knn_worker.py OUT.pt DEVICES
The bank (1,200) and query (597) sets do not split evenly over 2 ranks, which is the case that padding gets wrong.
"""

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cli import LitCLI  # noqa: E402


def main() -> None:
    out, devices = sys.argv[1], int(sys.argv[2])
    cli = LitCLI(
        args=[
            "-c", str(ROOT / "configs" / "scorecl" / "simclr_digits.yaml"),
            "--trainer.accelerator=cpu", f"--trainer.devices={devices}",
            f"--trainer.strategy={'ddp' if devices > 1 else 'auto'}",
            "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            f"--trainer.default_root_dir={Path(out).parent}",  # the saved config goes there, not into the repo
        ],
        run=False,
    )  # fmt: skip
    cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    if cli.trainer.global_rank == 0:
        metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if "/knn" in k}
        torch.save(metrics, out)


if __name__ == "__main__":
    main()
