"""Judging folders of guided samples through the real CLI (`cli.py test`): accuracy, FID, IS, data errors, DDP.

The fixtures are what `cli.py predict -c configs/ppap/digits_sample.yaml` writes (8x8 ``<i:06d>_y<class>.png``, RGB
as torchvision's save_image writes them) and a tiny random judge checkpoint; half of the samples are named with the
class the judge predicts and half with another, so the judged accuracy is exactly 0.5.

The file is also the DDP worker: ``python tests/test_ppap_evaluate.py OUT_DIR ROOT DEVICES`` runs the evaluation
on the fixtures under ROOT with DEVICES CPU processes and writes one JSON of metrics per rank.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cli import LitCLI  # noqa: E402
from datamodules.errors import CorruptImageError, DataLayoutError  # noqa: E402
from datamodules.ppap import GuidedSamplesDataModule, PPAPDataModule  # noqa: E402
from lightning_modules.classifier import ImageClassifier  # noqa: E402
from lightning_modules.diffusion.fid import build_fid  # noqa: E402
from lightning_modules.ppap.evaluate import GuidedSampleEvaluator  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
NUM_SAMPLES = 7  # odd: a padding DistributedSampler would count one sample twice on 2 ranks


def hand_is(logits: torch.Tensor) -> float:
    p = logits.double().softmax(1)
    return float(torch.exp((p * (p.log() - p.mean(0, keepdim=True).log())).sum(1).mean()))


def save_image_u8(image: torch.Tensor, path: Path) -> None:
    """Write a uint8 (C, H, W) image as `PPAPGuidedSampling` does (save_image of floats; exact for uint8 / 255)."""
    from torchvision.utils import save_image

    save_image(image.float() / 255, path, format="png")


def make_fixtures(root: Path) -> dict:
    """Guided samples, real images (flat and ImageFolder) and a judge checkpoint under ``root``."""
    torch.manual_seed(0)
    judge = ImageClassifier(
        backbone="small_cnn", num_classes=10, input_shape=(1, 8, 8), pretrained=False
    ).eval()
    with torch.no_grad():
        judge.head.weight.mul_(30)  # spread the random judge's predictions over several classes
    ckpt = root / "judge.ckpt"
    torch.save(
        {
            "state_dict": judge.state_dict(),
            "hyper_parameters": dict(judge.hparams),
            "pytorch-lightning_version": "2.6.6",
        },
        ckpt,
    )
    images = torch.randint(0, 256, (NUM_SAMPLES, 1, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        logits = judge(images.float() / 127.5 - 1)
    predicted = logits.argmax(1)
    targets = torch.where(torch.arange(NUM_SAMPLES) % 2 == 0, predicted, (predicted + 1) % 10)
    samples = root / "samples"
    samples.mkdir()
    for i, (image, y) in enumerate(zip(images, targets.tolist(), strict=True)):
        save_image_u8(image, samples / f"{i:06d}_y{y}.png")
    (samples / ".000099.png.tmp").write_bytes(b"an interrupted write")  # ignored
    flat, folders = root / "real_flat", root / "real_folders"
    flat.mkdir()
    real = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    for i, image in enumerate(real):
        save_image_u8(image, flat / f"{i}.png")
        (folders / f"n0{i % 2}").mkdir(parents=True, exist_ok=True)
        save_image_u8(image, folders / f"n0{i % 2}" / f"{i}.png")
    return {
        "ckpt": str(ckpt),
        "samples": str(samples),
        "flat": str(flat),
        "folders": str(folders),
        "images": images,
        "targets": targets,
        "real": real,
        "judge": judge,
    }


def evaluate_args(fx: dict, *extra: str) -> list[str]:
    return [
        "test",
        "-c",
        str(ROOT / "configs/ppap/digits_evaluate.yaml"),
        f"--model.init_args.judge_ckpt={fx['ckpt']}",
        f"--model.init_args.fid_weights_path={fx['ckpt']}",
        f"--model.init_args.is_weights_path={fx['ckpt']}",
        f"--data.init_args.samples_root={fx['samples']}",
        "--data.init_args.batch_size=3",  # several batches mixing samples and real images; on 2 ranks, 2 and 1 IS updates
        *QUIET,
        *extra,
    ]


def run_test(fx: dict, tmp_path: Path, *extra: str) -> dict[str, float]:
    cli = LitCLI(args=[*evaluate_args(fx, *extra), f"--trainer.default_root_dir={tmp_path}"])
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items()}


def expected_fid(fx: dict, real: torch.Tensor) -> float:
    fid = build_fid("classifier", fx["ckpt"])
    fid.update(real, real=True)
    fid.update(fx["images"], real=False)
    return float(fid.compute())


@pytest.fixture
def fx(tmp_path):
    return make_fixtures(tmp_path)


def test_digits_config_judges_the_samples_against_the_held_out_digits(fx, tmp_path):
    metrics = run_test(fx, tmp_path)
    assert metrics["test/num_samples"] == NUM_SAMPLES and metrics["test/num_real"] == 400
    assert metrics["test/accuracy"] == pytest.approx(4 / 7)  # samples 0, 2, 4, 6 carry the judge's class
    digits = PPAPDataModule(train="labelled", labelled="digits", image_size=8)
    digits.setup("test")
    x = torch.stack([digits.eval_set[i][0] for i in range(400)])
    y = torch.tensor([int(digits.eval_set[i][1]) for i in range(400)])
    real = ((x + 1) * 127.5).round().to(torch.uint8)
    with torch.no_grad():
        real_acc = (fx["judge"](real.float() / 127.5 - 1).argmax(1) == y).float().mean()
        sample_logits = fx["judge"](fx["images"].float() / 127.5 - 1)
    assert metrics["test/real_accuracy"] == pytest.approx(float(real_acc))
    assert metrics["test/fid"] == pytest.approx(expected_fid(fx, real), rel=1e-4)
    assert metrics["test/is"] == pytest.approx(hand_is(sample_logits), rel=1e-4)
    assert metrics["test/is"] > 1.05  # not the trivial value
    assert "test/is_std" not in metrics  # one split


def test_real_folders_flat_and_imagefolder_and_the_judge_as_is_classifier(fx, tmp_path):
    common = ["--data.init_args.real=folder", "--data.init_args.image_size=null"]
    flat = run_test(fx, tmp_path, *common, f"--data.init_args.real_root={fx['flat']}")
    assert flat["test/num_real"] == 6 and "test/real_accuracy" not in flat  # a flat folder has no classes
    assert flat["test/fid"] == pytest.approx(expected_fid(fx, fx["real"]), rel=1e-4)
    folders = run_test(
        fx,
        tmp_path,
        *common,
        f"--data.init_args.real_root={fx['folders']}",
        "--model.init_args.is_feature=judge",
        "--model.init_args.is_splits=2",
    )
    with torch.no_grad():
        real_pred = fx["judge"](fx["real"].float() / 127.5 - 1).argmax(1)
    classes = torch.arange(6) % 2  # n00 -> 0, n01 -> 1
    assert folders["test/real_accuracy"] == pytest.approx(float((real_pred == classes).float().mean()))
    assert folders["test/fid"] == pytest.approx(flat["test/fid"], rel=1e-4)  # the same images
    assert folders["test/accuracy"] == pytest.approx(4 / 7)
    assert folders["test/is"] > 1 and folders["test/is_std"] >= 0  # two splits: a spread is reported


def test_data_errors_are_clear(fx, tmp_path):
    def setup(**kwargs):
        args = {
            "samples_root": fx["samples"],
            "real": "folder",
            "real_root": fx["flat"],
            "channels": 1,
            **kwargs,
        }
        dm = GuidedSamplesDataModule(**args)
        dm.setup("test")
        return dm

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataLayoutError, match="no PNG images"):
        setup(samples_root=str(empty))
    with pytest.raises(DataLayoutError, match="does not exist"):
        setup(samples_root=str(tmp_path / "missing"))
    with pytest.raises(DataLayoutError, match="no images"):
        setup(real_root=str(empty))
    with pytest.raises(DataLayoutError, match=r"000050_y10\.png' has target class 10, but num_classes is 10"):
        (Path(fx["samples"]) / "000050_y10.png").write_bytes(Path(fx["flat"], "0.png").read_bytes())
        setup(num_classes=10)
    (Path(fx["samples"]) / "000050_y10.png").unlink()
    with pytest.raises(DataLayoutError, match=r"000007\.png.*no target class"):
        (Path(fx["samples"]) / "000007.png").write_bytes(Path(fx["flat"], "0.png").read_bytes())
        setup()
    (Path(fx["samples"]) / "000007.png").unlink()
    many = tmp_path / "eleven_classes"
    for c in range(11):
        (many / f"c{c:02d}").mkdir(parents=True)
        (many / f"c{c:02d}" / "0.png").write_bytes(Path(fx["flat"], "0.png").read_bytes())
    with pytest.raises(DataLayoutError, match="11 class folders, more than num_classes 10"):
        setup(real_root=str(many))
    # a real image of another size: named, with the fix
    from torchvision.utils import save_image

    save_image(torch.rand(1, 10, 10), Path(fx["flat"]) / "big.png")
    dm = setup()
    with pytest.raises(DataLayoutError, match=r"big\.png.*10x10.*8x8.*image_size"):
        [dm.test_set[i] for i in range(len(dm.test_set))]
    (Path(fx["flat"]) / "big.png").unlink()
    # a corrupt sample, through the CLI: the error names the file
    (Path(fx["samples"]) / "000008_y1.png").write_bytes(b"not a png")
    with pytest.raises(CorruptImageError, match="000008_y1.png"):
        run_test(fx, tmp_path)
    with pytest.raises(
        FileNotFoundError, match="judge checkpoint .*missing.ckpt.*configs/fid/digits_classifier"
    ):
        GuidedSampleEvaluator(judge_ckpt=str(tmp_path / "missing.ckpt"))
    with pytest.raises(ValueError, match="exactly one of judge"):
        GuidedSampleEvaluator(judge="resnet18", judge_ckpt=fx["ckpt"])
    with pytest.raises(ValueError, match="judge checkpoint .* has 10 classes, data has 3"):
        GuidedSampleEvaluator(judge_ckpt=fx["ckpt"], num_classes=3, fid_feature="none", is_feature="none")


def test_imagenet_config_builds(fx, tmp_path):
    """Paper-scale config: a timm judge with its ImageNet input statistics, 1000 classes (random weights)."""
    cli = LitCLI(
        args=[
            "-c",
            str(ROOT / "configs/ppap/imagenet_evaluate.yaml"),
            "--trainer.accelerator=cpu",
            "--model.init_args.judge=resnet18",  # the configured ConvNeXt-B is slow to build on this CPU
            "--model.init_args.judge_pretrained=false",
            "--model.init_args.fid_feature=none",  # no Inception weights file here
            "--model.init_args.is_feature=none",
            f"--data.init_args.samples_root={fx['samples']}",
            f"--data.init_args.real_root={fx['folders']}",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        run=False,
    )
    assert cli.model.hparams.num_classes == 1000  # linked from the datamodule
    judge = cli.model.judge
    assert judge.image_size == 224 and judge.in_chans == 3
    torch.testing.assert_close(judge.backbone.adapter.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    logits = judge(torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8))
    assert logits.shape == (1, 1000)
    assert cli.datamodule.image_size == 256 and cli.model.hparams.is_splits == 10
    # no Inception weights file: the CLI reports the builder's error (jsonargparse wraps it in a ValueError)
    with pytest.raises(ValueError, match="Inception weights file '/path/to/pt_inception-2015-12-05"):
        LitCLI(
            args=[
                "-c",
                str(ROOT / "configs/ppap/imagenet_evaluate.yaml"),
                "--model.init_args.judge=resnet18",
                "--model.init_args.judge_pretrained=false",
                f"--data.init_args.samples_root={fx['samples']}",
                f"--trainer.default_root_dir={tmp_path}",
            ],
            run=False,
        )


def test_two_ddp_processes_count_every_image_once_and_agree_with_one(fx, tmp_path):
    single = run_test(fx, tmp_path, "--model.init_args.is_splits=1")
    out = tmp_path / "ddp"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, __file__, str(out), str(tmp_path), "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # every rank logs the same global values
    ddp = ranks[0]
    assert ddp["test/num_samples"] == NUM_SAMPLES and ddp["test/num_real"] == 400
    for name in ("test/accuracy", "test/real_accuracy", "test/fid", "test/is"):
        assert ddp[name] == pytest.approx(single[name], rel=1e-4), name


def worker(out_dir: str, root: str, devices: int) -> None:
    fx = {
        "ckpt": str(Path(root) / "judge.ckpt"),
        "samples": str(Path(root) / "samples"),
    }
    torch.set_num_threads(1)
    cli = LitCLI(
        args=[
            *evaluate_args(fx),
            "--trainer.accelerator=cpu",
            f"--trainer.devices={devices}",
            "--trainer.strategy=ddp",
            f"--trainer.default_root_dir={out_dir}",
        ]
    )
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    Path(out_dir, f"rank{cli.trainer.global_rank}.json").write_text(json.dumps(metrics, sort_keys=True))


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2], int(sys.argv[3]))
