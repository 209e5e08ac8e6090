"""The paper-scale PPAP configs build through the CLI (random weights, one expert: the structure is the test)."""

from pathlib import Path

import pytest

from cli import LitCLI

ROOT = Path(__file__).resolve().parents[1]
CPU = ["--trainer.accelerator=cpu", "--trainer.precision=32-true", "--trainer.logger=false"]


@pytest.mark.parametrize(
    ("config", "lora_layers", "frozen_bias"),
    [("resnet50_imagenet.yaml", 33, "fc."), ("deit_s_imagenet.yaml", 24, None)],
)
def test_paper_config_builds_the_spec_experts(config, lora_layers, frozen_bias, tmp_path):
    cli = LitCLI(
        args=[
            "-c",
            str(ROOT / "configs/ppap" / config),
            "--model.init_args.pretrained=false",
            "--model.init_args.num_experts=1",
            "--model.init_args.steps_per_expert=null",
            "--model.init_args.expert_schedule=parallel",
            f"--trainer.default_root_dir={tmp_path}",
            *CPU,
        ],
        run=False,
    )
    model = cli.model
    assert (
        model.hparams.lora_rank == 16 and model.hparams.lora_alpha == 8 and model.hparams.temperature == 0.25
    )
    expert = model.experts[0]
    names = {n for n, _ in expert.named_parameters()}
    assert len({n.split(".lora_A")[0] for n in names if ".lora_A." in n}) == lora_layers
    trainable = {n for n, p in expert.named_parameters() if p.requires_grad}
    assert all(
        "lora_" in n or n.endswith("bias") or ".bn" in n or n.startswith("classifier.bn1.") for n in trainable
    )
    if frozen_bias:
        assert not any(n.startswith(f"classifier.{frozen_bias}") for n in trainable)
    else:
        assert "classifier.head.bias" in trainable  # DeiT: all biases (official code)
    assert 0 < model.trainable_per_expert < 0.2 * model.base_parameters
