"""CEAA through the real CLI with a tiny random BERT: fit (loss falls), test metrics, predict JSONL, QA transfer."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from cli import LitCLI
from tests.test_ceaa_data import write_arc, write_qa

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "ceaa"


def common(tmp_path: Path, name: str) -> list[str]:
    return [
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        f"--trainer.logger.init_args.name={name}",
        "--trainer.enable_progress_bar=false",
        "--trainer.log_every_n_steps=1",
    ]


def losses(log_dir: str) -> list[float]:
    with (Path(log_dir) / "metrics.csv").open() as fh:
        return [float(r["train/info_nce"]) for r in csv.DictReader(fh) if r.get("train/info_nce")]


def test_qa_transfer_then_tagging_fit_test_predict(tmp_path):
    # stage 1: QA transfer on question -> answer pairs; in-batch loss falls over a few steps on one full batch
    qa = LitCLI(
        args=[
            "fit",
            "-c",
            str(CONFIGS / "qa_transfer.yaml"),
            "-c",
            str(CONFIGS / "tiny_random.yaml"),
            f"--data.init_args.path={write_qa(tmp_path / 'qa.jsonl', n=14)}",
            "--data.init_args.val_size=4",
            "--data.init_args.batch_size=10",
            "--trainer.max_steps=6",
            "--trainer.max_epochs=null",
            *common(tmp_path, "qa"),
        ]
    )
    qa_losses = losses(qa.trainer.log_dir)
    assert len(qa_losses) == 6 and qa_losses[-1] < qa_losses[0]
    qa_ckpt = sorted(Path(qa.trainer.log_dir).rglob("*.ckpt"))[-1]

    # stage 2: tagging from the QA checkpoint, with H2 augmentation; test after fit
    arc = write_arc(tmp_path / "arc")
    fit = LitCLI(
        args=[
            "fit",
            "-c",
            str(CONFIGS / "arc_minilm.yaml"),
            "-c",
            str(CONFIGS / "tiny_random.yaml"),
            f"--data.init_args.root={arc}",
            "--data.init_args.batch_size=6",
            "--data.init_args.augmentation=h2",
            f"--model.init_args.init_from={qa_ckpt}",
            "--trainer.max_steps=6",
            "--trainer.max_epochs=null",
            "--test_after_fit=true",
            *common(tmp_path, "arc"),
        ]
    )
    model = fit.model
    assert fit.trainer.global_step == 6
    tag_losses = losses(fit.trainer.log_dir)
    assert tag_losses[-1] < tag_losses[0]
    with (Path(fit.trainer.log_dir) / "metrics.csv").open() as fh:
        assert any(r.get("train/cross_bce") for r in csv.DictReader(fh))  # the H2 head was trained
    results = fit.test_results["last"]
    for k in (1, 3, 5, 10):
        assert 0.0 <= results[f"test/R@{k}"] <= 1.0 and f"test/P@{k}" in results
    assert results["test/R@10"] == 1.0  # 4 candidates: every gold tag is in the top 10
    assert results["test/P@10"] == pytest.approx(1.0 / 10)
    assert results["test/pairs/unseen"] == 1  # SPACE_stars is never a training label
    assert model.tag_cache is not None and model.tag_cache.shape[0] == 4

    # predict from the tagging checkpoint: top-k tags with scores, as JSONL
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        json.dumps({"id": "x1", "text": "Which animal eats grass?"}) + "\n" + '{"text": "Stars?"}\n'
    )
    out = tmp_path / "pred.jsonl"
    ckpt = sorted(Path(fit.trainer.log_dir).rglob("*.ckpt"))[-1]
    LitCLI(
        args=[
            "predict",
            "-c",
            str(CONFIGS / "arc_minilm.yaml"),
            "-c",
            str(CONFIGS / "tiny_random.yaml"),
            f"--data.init_args.root={arc}",
            f"--data.init_args.predict_file={questions}",
            "--model.init_args.predict_top_k=3",
            f"--model.init_args.predict_output={out}",
            f"--ckpt_path={ckpt}",
            *common(tmp_path, "pred"),
        ]
    )
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["x1", "1"]
    assert all(len(r["tags"]) == 3 for r in rows)
    scores = [t["score"] for t in rows[0]["tags"]]
    assert scores == sorted(scores, reverse=True)
    assert {t["tag"] for r in rows for t in r["tags"]} <= set(model.trainer.datamodule.tag_names[:4])
    # the scores are the fitted model's cosine / temperature
    assert all(abs(s) <= 1 / model.hparams.temperature + 1e-4 for s in scores)
    assert torch.isfinite(torch.tensor(scores)).all()
