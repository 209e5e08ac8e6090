"""PPAP guidance experts: what trains under LoRA, merged == unmerged, the KD loss, routing, checkpoints."""

import math
from types import SimpleNamespace

import pytest
import timm
import torch
from torch import nn

from lightning_modules.diffusion.router import IntervalRouter
from lightning_modules.ppap.module import PPAPExpertModule, kd_loss
from lightning_modules.ppap.nets import RESNET_LORA_TARGETS, add_lora, merged_copy


class TinyClassifier(nn.Module):
    """conv -> BN -> ReLU -> pool -> fc: a LoRA target, a BatchNorm, biases and a head."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn1(self.conv1(x))).mean(dim=(2, 3)))


def test_kd_loss_on_hand_written_logits():
    student = [[0.5, 0.1, 0.0], [1.0, -1.0, 2.0]]
    teacher = [[2.0, 0.0, -1.0], [0.0, 0.3, 0.1]]
    tau, total = 0.25, 0.0
    for s_row, t_row in zip(student, teacher, strict=True):
        p = [math.exp(v / tau) for v in t_row]
        p = [v / sum(p) for v in p]
        log_q = [v - math.log(sum(math.exp(u) for u in s_row)) for v in s_row]
        total += sum(pi * (math.log(pi) - lq) for pi, lq in zip(p, log_q, strict=True))
    s, t = torch.tensor(student), torch.tensor(teacher)
    assert kd_loss(s, t, tau, "batchmean").item() == pytest.approx(total / 2, rel=1e-5)
    assert kd_loss(s, t, tau, "mean").item() == pytest.approx(total / 6, rel=1e-5)  # batch x classes
    assert kd_loss(t / tau, t, tau, "batchmean").item() == pytest.approx(0.0, abs=1e-6)  # matched: zero


def test_resnet50_lora_targets_and_trainable_set():
    """The spec's ResNet-50 layers get LoRA; only LoRA, the block BNs and non-fc biases train."""
    model = add_lora(
        timm.create_model("resnet50", pretrained=False),
        RESNET_LORA_TARGETS,
        rank=16,
        alpha=8,
        frozen_patterns=[r"downsample", r"^fc\."],
    )
    lora_layers = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A." in n}
    assert len(lora_layers) == 1 + 16 * 2  # the stem conv1 + conv1 and conv2 of 16 bottlenecks
    assert "conv1" in lora_layers and "layer4.2.conv2" in lora_layers and "layer4.2.conv3" not in lora_layers
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for name in trainable:
        assert "lora_" in name or ".bn" in name or name.startswith("bn1."), name
    assert "layer1.0.bn1.weight" in trainable and "bn1.bias" in trainable
    assert not any("downsample" in n or n.startswith("fc.") for n in trainable)
    assert not any(n.endswith("base_layer.weight") for n in trainable)
    scale = {m.scaling["default"] for m in model.modules() if hasattr(m, "scaling")}
    assert scale == {0.5}  # alpha / r, the same for training and merging


def test_lora_merged_equals_unmerged():
    torch.manual_seed(0)
    model = add_lora(TinyClassifier(), [r"conv1", r"fc"], rank=2, alpha=8).eval()
    x = torch.randn(5, 1, 6, 6)
    base = model(x)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(param, std=0.5)  # B = 0 at init would make any merge look right
    unmerged = model(x)
    assert not torch.allclose(unmerged, base, atol=1e-3)
    merged = merged_copy(model)
    # the update now lives in the base weight
    assert not torch.equal(merged.conv1.base_layer.weight, model.conv1.base_layer.weight)
    torch.testing.assert_close(merged(x), unmerged, atol=1e-5, rtol=1e-5)


def _module(tmp_path, **kw):
    """A PPAPExpertModule around a tiny timm-free classifier saved as an ImageClassifier checkpoint."""
    from lightning_modules.classifier import ImageClassifier

    ckpt = tmp_path / "teacher.ckpt"
    if not ckpt.exists():
        torch.manual_seed(0)
        teacher = ImageClassifier(
            backbone="small_cnn", num_classes=3, input_shape=(1, 8, 8), pretrained=False
        )
        torch.save(
            {
                "state_dict": teacher.state_dict(),
                "hyper_parameters": dict(teacher.hparams),
                "pytorch-lightning_version": "2.6.6",
            },
            ckpt,
        )
    args = dict(
        classifier_ckpt=str(ckpt),
        num_classes=3,
        in_chans=1,
        num_experts=5,
        lora_rank=4,
        lora_alpha=8,
        lora_targets=[r"backbone\.features\.\d+"],
        frozen_patterns=[r"^head\."],
        lr=1e-2,
        lr_decay="constant",
    )
    args.update(kw)
    return PPAPExpertModule(**args)


def _train_steps(module, steps: int = 2, batch=None):
    batch = batch or (torch.rand(8, 1, 8, 8) * 2 - 1, torch.randint(0, 3, (8,)))
    optimizer = module.configure_optimizers()
    module.train()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        module.training_step(batch, 0).backward()
        optimizer.step()


def test_only_lora_and_bias_train_and_teacher_is_frozen(tmp_path, monkeypatch):
    module = _module(tmp_path)
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    _train_steps(module)
    assert not module.teacher.training  # eval mode even after module.train()
    changed = {n for n, p in module.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "nothing trained"
    for name in changed:
        assert name.startswith("experts.") and ("lora_" in name or name.endswith("bias")), name
        assert ".head." not in name
    assert all(not p.requires_grad for p in module.teacher.parameters())
    # every expert trained (parallel schedule), each its own LoRA
    assert {n.split(".")[1] for n in changed if "lora_B" in n} == {"0", "1", "2", "3", "4"}
    assert 0 < module.trainable_per_expert < module.base_parameters


def test_expert_index_trains_one_expert_and_checkpoint_holds_only_it(tmp_path, monkeypatch):
    module = _module(tmp_path, expert_index=2)
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    seen = []
    original = module.router.draw
    monkeypatch.setattr(module.router, "draw", lambda e, *a, **k: seen.append(e) or original(e, *a, **k))
    _train_steps(module, steps=1)
    assert seen == [2]
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["state_dict"] and all(k.startswith("experts.2.") for k in checkpoint["state_dict"])
    # a fresh module loads the small checkpoint (frozen weights from the teacher) and reproduces the expert
    other = _module(tmp_path, expert_index=2)
    other.load_state_dict(checkpoint["state_dict"])
    x = torch.randn(3, 1, 8, 8)
    module.eval(), other.eval()
    torch.testing.assert_close(other.experts[2](x), module.experts[2](x))


def test_sequential_chain_copies_the_previous_expert(tmp_path, monkeypatch):
    module = _module(tmp_path, expert_schedule="sequential", expert_init="chain", steps_per_expert=1)
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    step = {"n": 0}
    monkeypatch.setattr(type(module), "global_step", property(lambda self: step["n"]))
    optimizer = module.configure_optimizers()
    monkeypatch.setattr(module, "optimizers", lambda: SimpleNamespace(optimizer=optimizer))
    batch = (torch.rand(8, 1, 8, 8) * 2 - 1, torch.zeros(8, dtype=torch.long))
    for n in range(2):
        step["n"] = n
        module.on_train_batch_start(batch, n)
        assert module.trained_experts() == [n]
        if n == 1:  # expert 1 starts where expert 0 ended, AdamW state included
            for (_, a), (_, b) in zip(
                module.experts[0].named_parameters(), module.experts[1].named_parameters(), strict=True
            ):
                assert torch.equal(a, b)
                if a.requires_grad:
                    assert torch.equal(optimizer.state[a]["exp_avg"], optimizer.state[b]["exp_avg"])
        optimizer.zero_grad(set_to_none=True)
        module.training_step(batch, n).backward()
        optimizer.step()


def test_training_timesteps_follow_the_router_intervals(tmp_path):
    module = _module(tmp_path)
    router = module.router
    assert router.boundaries == [0, 200, 400, 600, 800, 1000]
    for e in range(5):
        t = router.draw(e, 4000, generator=torch.Generator().manual_seed(e))
        lo, hi = router.interval(e)
        assert int(t.min()) == lo and int(t.max()) == hi - 1  # half-open: lo in, hi out
        assert torch.equal(router.expert_of(t), torch.full_like(t, e))
    # the boundary steps DDIM-25 visits belong to the expert whose interval starts there
    assert router.expert_of(torch.tensor([0, 199, 200, 399, 400, 800, 999])).tolist() == [0, 0, 1, 1, 2, 4, 4]
    assert isinstance(router, IntervalRouter)
