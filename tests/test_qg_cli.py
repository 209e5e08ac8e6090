"""A few QG training steps through the real CLI with a tiny random T5; test-time beam search and metrics."""

import json
from pathlib import Path

import torch

from cli import LitCLI
from tests.qg_fixtures import write_qg_squad

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "qg" / "tiny_demo.yaml")


def test_fit_then_test_single_and_multi_reference(tmp_path):
    data = write_qg_squad(tmp_path / "qg")
    cache = tmp_path / "para.jsonl"
    with cache.open("w") as fh:
        for i, row in enumerate(json.loads(x) for x in (data / "test.jsonl").read_text().splitlines()):
            paras = [row["question"].replace("When", "In which year"), f"What year saw {row['answer']}?"]
            fh.write(
                json.dumps({"item_id": f"test-{i}", "reference": row["question"], "paraphrases": paras})
                + "\n"
            )
    cli = LitCLI(
        args=[
            "fit",
            "-c",
            CONFIG,
            f"--data.root={data}",
            f"--data.paraphrase_cache={cache}",
            "--trainer.max_steps=4",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
            "--trainer.enable_progress_bar=false",
            "--model.init_args.eval_metrics=[bleu4, rougeL, meteor, bertscore]",
            "--test_after_fit=true",
        ]
    )
    assert cli.trainer.global_step == 4
    model = cli.model
    # the tiny T5 was built from the config, with the <hl> token in its vocabulary
    assert model.model.config.d_model == 32 and model.model.config.num_layers == 2
    assert model.model.get_input_embeddings().num_embeddings == len(model.tokenizer)
    results = cli.test_results["last"]
    expected = {"test/loss", "test/bleu4", "test/rougeL", "test/bertscore"}
    expected |= {
        f"test/multi_{a}/{m}" for a in ("max", "mean", "native") for m in ("bleu4", "rougeL", "bertscore")
    }
    if model.scorer().wordnet is not None:  # METEOR is computed exactly when WordNet is available
        expected |= {"test/meteor", "test/multi_max/meteor"}
    else:
        assert "meteor" in model.scorer().skipped and "test/meteor" not in results
    assert expected <= set(results)
    assert all(torch.isfinite(torch.tensor(v)) for v in results.values())
    # max over [gold] + paraphrases can only raise a per-item score; mean sits between
    assert results["test/multi_max/rougeL"] >= results["test/rougeL"]
    assert results["test/multi_max/bertscore"] >= results["test/multi_mean/bertscore"]
    preds = [
        json.loads(x) for x in (Path(cli.trainer.log_dir) / "predictions_test.jsonl").read_text().splitlines()
    ]
    assert len(preds) == 6 and all(isinstance(p["prediction"], str) for p in preds)
    assert len(preds[0]["references"]) == 3

    # generation returns strings, through predict and directly
    out = cli.trainer.predict(model, datamodule=cli.datamodule)
    flat = [s for batch in out for s in batch]
    assert len(flat) == 6 and all(isinstance(s, str) for s in flat)
    batch = next(iter(cli.datamodule.test_dataloader()))
    texts = model.generate(batch["input_ids"], batch["attention_mask"])
    assert texts == flat[: len(texts)]  # beam search is deterministic

    # `test --ckpt_path` honours generation/scoring settings given on the command line (not checkpoint hparams)
    ckpt = sorted((tmp_path / "logs").rglob("*.ckpt"))[-1]
    retest = LitCLI(
        args=[
            "test",
            "-c",
            CONFIG,
            f"--data.root={data}",
            f"--ckpt_path={ckpt}",
            "--model.init_args.eval_metrics=[rougeL]",
            "--model.init_args.num_beams=1",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'logs_test'}",
            "--trainer.enable_progress_bar=false",
        ]
    )
    assert retest.model.eval_args.num_beams == 1
    logged = set(retest.trainer.callback_metrics)
    assert "test/rougeL" in logged and "test/bleu4" not in logged and "test/bertscore" not in logged


def test_paper_config_instantiates_with_the_lmqg_recipe(tmp_path):
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

    from lightning_modules.qg.metrics import PACKAGED_MINILM, resolve_model_path

    # a stand-in "t5-large" folder: a tiny random T5 saved with the packaged WordPiece tokenizer
    tok = AutoTokenizer.from_pretrained(resolve_model_path(PACKAGED_MINILM))
    config = AutoConfig.for_model(
        "t5", vocab_size=len(tok), d_model=16, d_ff=32, d_kv=4, num_heads=2, num_layers=1, pad_token_id=0
    )
    AutoModelForSeq2SeqLM.from_config(config).save_pretrained(tmp_path / "t5")
    tok.save_pretrained(tmp_path / "t5")
    data = write_qg_squad(tmp_path / "qg")
    cli = LitCLI(
        args=[
            "-c",
            str(ROOT / "configs" / "qg" / "t5_squad.yaml"),
            f"--data.root={data}",
            f"--model.init_args.model_path={tmp_path / 't5'}",
            f"--data.init_args.tokenizer={tmp_path / 't5'}",
            "--trainer.accelerator=cpu",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        ],
        run=False,
    )
    hp, gen = cli.model.hparams, cli.model.eval_args
    assert (hp.lr, hp.label_smoothing, gen.num_beams, gen.max_new_tokens) == (5e-5, 0.15, 4, 32)
    assert cli.trainer.accumulate_grad_batches == 4 and cli.trainer.max_epochs == 6
    assert cli.datamodule.batch_size == 16 and cli.datamodule.hparams.max_source_length == 512
    assert len(cli.model.tokenizer) == len(cli.datamodule.tokenizer)  # model_path's tokenizer = the data's
