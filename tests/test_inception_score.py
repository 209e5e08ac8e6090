"""Inception Score: the formula, its two bounds, the classifier and Inception extractors, clear errors, no download,
and the DDP sync when ranks made different numbers of updates.

The file is also a DDP worker: ``python tests/test_inception_score.py OUT`` runs 2 gloo processes on CPU where rank
0 updates the metric three times and rank 1 never (then once), and saves what each rank computes to OUT.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_modules.classifier import ImageClassifier  # noqa: E402
from lightning_modules.diffusion.inception_score import build_inception_score  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def hand_is(logits: torch.Tensor) -> float:
    """exp(E_x KL(p(y|x) || p(y))), p(y) the mean of p(y|x) over the images."""
    p = logits.double().softmax(1)
    marginal = p.mean(0, keepdim=True)
    return float(torch.exp((p * (p.log() - marginal.log())).sum(1).mean()))


class TinyLogits(nn.Module):
    """A random linear classifier of uint8 8x8 images into 5 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(64, 5)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images.float().flatten(1) / 64)


class FixedLogits(nn.Module):
    """Returns the logits stored for image i, where i is written in the image's first pixel."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", logits)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.table[images[:, 0, 0, 0].long()]


def indexed_images(n: int) -> torch.Tensor:
    images = torch.zeros(n, 1, 8, 8, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return images


def test_is_equals_the_hand_computed_formula_on_a_random_classifier():
    torch.manual_seed(0)
    net = TinyLogits()
    images = torch.randint(0, 256, (24, 1, 8, 8), dtype=torch.uint8)
    metric = build_inception_score(net, splits=1)
    metric.update(images[:10])
    metric.update(images[10:])  # batches accumulate
    mean, _ = metric.compute()
    expected = hand_is(net(images).detach())
    assert expected > 1.01  # the random classifier is not uniform: the check can fail
    assert float(mean) == pytest.approx(expected, rel=1e-5)


def test_uniform_predictions_give_one_and_confident_distinct_classes_give_the_class_count():
    k = 7
    uniform = build_inception_score(FixedLogits(torch.zeros(2 * k, k)), splits=1)
    uniform.update(indexed_images(2 * k))
    assert float(uniform.compute()[0]) == pytest.approx(1.0, abs=1e-6)

    confident = 50.0 * torch.eye(k).repeat(2, 1)  # image i -> class i mod k, each class twice
    score = build_inception_score(FixedLogits(confident), splits=1)
    score.update(indexed_images(2 * k))
    assert float(score.compute()[0]) == pytest.approx(k, rel=1e-4)

    # all images confident in the SAME class: p(y|x) = p(y), no information -> 1
    same = build_inception_score(FixedLogits(50.0 * torch.eye(k)[[0] * 2 * k]), splits=1)
    same.update(indexed_images(2 * k))
    assert float(same.compute()[0]) == pytest.approx(1.0, abs=1e-4)


def test_splits_average_the_per_split_scores():
    k = 4
    logits = 50.0 * torch.eye(k).repeat(4, 1)  # 16 images, 4 classes
    score = build_inception_score(FixedLogits(logits), splits=2)
    score.update(indexed_images(16))
    torch.manual_seed(0)
    mean, std = score.compute()
    torch.manual_seed(0)
    order = torch.randperm(16)  # torchmetrics shuffles with the global RNG, then chunks
    halves = [hand_is(logits[order[:8]]), hand_is(logits[order[8:]])]
    assert float(mean) == pytest.approx(sum(halves) / 2, rel=1e-4)
    assert float(std) == pytest.approx(float(torch.tensor(halves).std()), abs=1e-4)


def test_classifier_feature_uses_the_checkpoint_logits(tmp_path):
    torch.manual_seed(0)
    clf = ImageClassifier(backbone="small_cnn", num_classes=10, input_shape=(1, 8, 8))
    with torch.no_grad():
        clf.head.weight.mul_(20)  # sharper than the init, so IS is clearly above 1
    path = tmp_path / "judge.ckpt"
    torch.save(
        {
            "state_dict": clf.state_dict(),
            "hyper_parameters": dict(clf.hparams),
            "pytorch-lightning_version": "2.6.6",
        },
        path,
    )
    images = torch.randint(0, 256, (12, 1, 8, 8), dtype=torch.uint8)
    metric = build_inception_score("classifier", str(path), splits=1)
    metric.update(images)
    with torch.no_grad():
        expected = hand_is(clf.eval()(images.float() / 127.5 - 1))
    assert expected > 1.05
    assert float(metric.compute()[0]) == pytest.approx(expected, rel=1e-4)
    # RGB inputs are converted to the classifier's channel count, not rejected
    metric.update(torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8))


def test_inception_from_a_local_weights_file(tmp_path, monkeypatch):
    """torch-fidelity's Inception with random weights, saved and read back through the real path (no download)."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
    from torchmetrics.image.fid import NoTrainInceptionV3

    with monkeypatch.context() as m:  # build it without any weights file: random init
        m.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        random_net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["logits_unbiased"])
    torch.manual_seed(0)
    with torch.no_grad():  # torch-fidelity's own init gives ~0 logits: rescale so that IS is informative
        for module in random_net.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
        random_net.fc.weight.normal_(0, 0.5)
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(random_net.state_dict(), path)

    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    metric = build_inception_score("inception", str(path), splits=1)
    torch.testing.assert_close(metric.inception.fc.weight, random_net.fc.weight)
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    metric.update(images)
    logits = random_net(images)
    assert logits.shape == (3, 1008)
    expected = hand_is(logits)
    assert expected > 1.01
    assert float(metric.compute()[0]) == pytest.approx(expected, rel=1e-4)


def test_missing_weights_give_clear_errors_and_no_download(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05"):
        build_inception_score("inception", None)
    with pytest.raises(FileNotFoundError, match="Inception weights file .*missing.pth"):
        build_inception_score("inception", str(tmp_path / "missing.pth"))
    with pytest.raises(FileNotFoundError, match="configs/fid/digits_classifier.yaml"):
        build_inception_score("classifier", str(tmp_path / "missing.ckpt"))
    with pytest.raises(FileNotFoundError, match="is_weights_path"):
        build_inception_score("classifier", None)
    with pytest.raises(ValueError, match="IS feature"):
        build_inception_score("clip")
    with pytest.raises(ValueError, match="splits"):
        build_inception_score(TinyLogits(), splits=0)


def ddp_images() -> torch.Tensor:
    return torch.randint(0, 256, (9, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def ddp_rank(rank: int, out: str, port: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    net = TinyLogits()  # the same weights on both ranks
    images = ddp_images()
    results = {}
    for case, shares in {"one_rank_empty": ([0, 3, 6, 9], [0]), "uneven": ([0, 2, 5, 7], [7, 9])}.items():
        metric = build_inception_score(net, splits=1)
        bounds = shares[rank]
        for lo, hi in zip(bounds, bounds[1:], strict=False):
            metric.update(images[lo:hi])
        results[case] = float(metric.compute()[0])
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    torch.distributed.destroy_process_group()


def test_ddp_ranks_with_different_update_counts_agree_with_one_process(tmp_path):
    """torchmetrics gathers IS's feature list element by element: unequal update counts would hang the job."""
    port = 29500 + os.getpid() % 1000
    proc = subprocess.run(
        [sys.executable, __file__, str(tmp_path), str(port)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    torch.manual_seed(0)
    net = TinyLogits()
    expected = {
        "one_rank_empty": hand_is(net(ddp_images()).detach()),
        "uneven": hand_is(net(ddp_images()).detach()),
    }
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got == pytest.approx(expected, rel=1e-5)


if __name__ == "__main__":
    torch.multiprocessing.spawn(ddp_rank, args=(sys.argv[1], int(sys.argv[2])), nprocs=2)
