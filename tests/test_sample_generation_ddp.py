"""Sample generation (`cli.py predict` + `PendingSamplesDataModule`) with 2 DDP processes: the pending indices are
sharded across the ranks, every missing sample is written once, existing ones are kept, and the PNGs are the same
bytes as a single-process run (sample i's noise is seeded by i, whatever rank draws it)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli import LitCLI
from lightning_modules.diffusion.module import DiffusionModule

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]
NUM_SAMPLES = 7


def predict_args(out: str, root: str) -> list[str]:
    return [
        "-c",
        str(ROOT / "configs/ppap/digits_generate.yaml"),
        "--model.init_args.sample_steps=2",
        f"--model.init_args.output_dir={out}",
        f"--data.init_args.num_samples={NUM_SAMPLES}",
        "--data.init_args.batch_size=2",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={root}",
    ]


def test_two_processes_generate_the_missing_samples_as_one_does(tmp_path):
    torch.manual_seed(0)
    # the config's own model (tiny preset): the worker builds it without --ckpt_path's hyperparameter reading
    module = DiffusionModule(input_shape=(1, 8, 8))
    ckpt = tmp_path / "diffusion.ckpt"
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": {
                **dict(module.hparams),
                "_class_path": "lightning_modules.diffusion.module.DiffusionModule",
            },
            "pytorch-lightning_version": "2.6.6",
        },
        ckpt,
    )
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    LitCLI(args=["predict", *predict_args(str(single), str(tmp_path / "root1")), f"--ckpt_path={ckpt}"])
    ddp.mkdir()
    (ddp / "000002.png").write_bytes((single / "000002.png").read_bytes())
    kept = (ddp / "000002.png").stat().st_mtime_ns
    proc = subprocess.run(
        [sys.executable, __file__, str(ckpt), str(ddp), str(tmp_path / "root2")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    written = [json.loads((tmp_path / "root2" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sorted(written[0] + written[1]) == [0, 1, 3, 4, 5, 6]  # sharded: each pending index on one rank
    assert set(written[0]).isdisjoint(written[1])
    assert (ddp / "000002.png").stat().st_mtime_ns == kept  # an existing sample is not redone
    names = sorted(p.name for p in single.glob("*.png"))
    assert names == sorted(p.name for p in ddp.glob("*.png")) and len(names) == NUM_SAMPLES
    for name in names:
        assert (single / name).read_bytes() == (ddp / name).read_bytes(), name


def worker(ckpt: str, out: str, root: str) -> None:
    torch.set_num_threads(1)
    cli = LitCLI(
        args=[
            *predict_args(out, root),
            "--trainer.accelerator=cpu",
            "--trainer.devices=2",
            "--trainer.strategy=ddp",
        ],
        run=False,
    )
    predictions = cli.trainer.predict(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt)
    indices = sorted(int(i) for batch in predictions for i in batch)
    Path(root).mkdir(parents=True, exist_ok=True)
    Path(root, f"rank{cli.trainer.global_rank}.json").write_text(json.dumps(indices))


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2], sys.argv[3])
