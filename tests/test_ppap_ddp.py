"""PPAP's expert module under real 2-process DDP (Lightning ``ddp``, gloo, CPU), on `PPAPDataModule`.

One worker run (tests/ddp_ppap_worker.py, ~20 s) trains two scenarios and the tests below check what it saved.

Why the single-process comparison replays the ranks' draws: every rank draws its own timesteps and noise
(`PPAPExpertModule.on_train_start` reseeds rank r with ``seed + r``, so the two halves of the global batch get
independent noise), and ``randint``/``randn`` for 8 images from one generator is not the concatenation of two
4-image draws from two generators. A one-process run cannot draw the same t and eps by itself, so the reference
run is given the ranks' own (t, eps) (`Recorder.replay`) together with the union of their batches. That check is
exact up to float summation order, and stronger than averaging per-rank gradients by hand: it compares every
step's all-reduced gradient, the loss and the final experts after AdamW and the learning-rate schedule, against
Lightning in one process on the global batch. It needs a BatchNorm-free teacher (small_cnn): BatchNorm in train
mode normalises each rank's half batch by its own statistics (SyncBatchNorm is GPU-only), which no single pass over
the global batch reproduces. The BatchNorm case (timm's test_resnet, sequential chained experts) is checked for what
DDP does promise: one set of parameters on every rank at every step; BatchNorm statistics equal once DDP broadcasts
rank 0's buffers (before each training forward, and at the first validation forward after training, which is why
the validation at the last step leaves the ranks identical); a checkpoint that reproduces the validated experts.
"""

from pathlib import Path

import pytest
import torch

from tests.ddp_runner import run_worker

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORKER = Path(__file__).resolve().parent / "ddp_ppap_worker.py"


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return run_worker(WORKER, tmp_path_factory.mktemp("ppap_ddp") / "out.pt", timeout=300)


def assert_same(a: dict, b: dict, **tol) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if tol:
            torch.testing.assert_close(a[k], b[k], msg=k, **tol)
        else:
            assert torch.equal(a[k], b[k]), k


def test_parallel_ranks_stay_in_sync_on_different_data_and_noise(result):
    ranks = result["parallel"]["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world_size"] for r in ranks} == {2}
    assert {r["global_step"] for r in ranks} == {4}
    recs = [r["rec"] for r in ranks]
    assert [e for _, e in recs[0]["experts"]] == [[0, 1]] * 4  # both experts train every step
    # each rank got its own images (DistributedSampler over the generated PNGs) and its own t and noise
    for a, b in zip(recs[0]["x0"], recs[1]["x0"], strict=True):
        assert a.shape == b.shape == (4, 1, 8, 8) and not torch.equal(a, b)
    assert len(recs[0]["draws"]) == len(recs[1]["draws"]) == 4 * 2
    for (t0, n0), (t1, n1) in zip(recs[0]["draws"], recs[1]["draws"], strict=True):
        assert not torch.equal(n0, n1) and not torch.equal(t0, t1)
    # the gradients the optimizer sees are all-reduced: identical on both ranks at every step ...
    for g0, g1 in zip(recs[0]["grads"], recs[1]["grads"], strict=True):
        assert_same(g0, g1)
        assert any(g.abs().max() > 0 for g in g0.values())
    # ... only for LoRA and biases (the head and the base weights are frozen), so both ranks end identical
    assert all("lora_" in k or k.endswith("bias") for k in recs[0]["grads"][0])
    assert not any(".head." in k for k in recs[0]["grads"][0])
    assert_same(ranks[0]["final"], ranks[1]["final"])
    assert any(not torch.equal(ranks[0]["final"][k], ranks[0]["init"][k]) for k in ranks[0]["final"])
    # the frozen teacher stays in eval mode and unchanged
    for r in ranks:
        assert r["teacher_training"] is False
        assert_same(r["teacher_init"], r["teacher_final"])


def test_parallel_ddp_equals_one_process_on_the_global_batch(result):
    ranks, single = result["parallel"]["ranks"], result["parallel"]["single"]
    recs = [r["rec"] for r in ranks]
    # per step: the all-reduced gradient is the gradient of the loss on the union of the two half batches
    assert len(single["rec"]["grads"]) == 4
    for g_ddp, g_one in zip(recs[0]["grads"], single["rec"]["grads"], strict=True):
        assert_same(g_ddp, g_one, rtol=1e-4, atol=1e-8)
    # the global loss (kd "mean" over batch x classes, summed over experts) is the mean of the ranks' losses
    for l0, l1, l_one in zip(recs[0]["losses"], recs[1]["losses"], single["rec"]["losses"], strict=True):
        torch.testing.assert_close((l0 + l1) / 2, l_one, rtol=1e-5, atol=1e-7)
    # after 4 AdamW steps with the linear schedule the experts are the single process's experts
    assert_same(ranks[0]["final"], single["final"], rtol=1e-4, atol=1e-6)


def test_parallel_validation_counts_every_image_once(result):
    ranks, expected = result["parallel"]["ranks"], result["parallel"]["single"]["val"]
    assert expected["count"].tolist() == [16.0, 16.0]  # the 16 held-out digits per expert, none twice
    for r in ranks:
        torch.testing.assert_close(r["rec"]["eval"][-1]["loss"], expected["loss"], rtol=1e-5, atol=1e-6)
        m = r["metrics"]
        torch.testing.assert_close(m["val/teacher_clean_acc"].double(), expected["teacher_clean_acc"])
        for name, acc in zip(("val/acc_t0000-0500", "val/acc_t0500-1000"), expected["acc"], strict=True):
            torch.testing.assert_close(m[name].double(), acc, msg=name)


def test_sequential_experts_switch_together_and_the_checkpoint_reloads(result):
    ranks, reload = result["sequential"]["ranks"], result["sequential"]["reload"]
    recs = [r["rec"] for r in ranks]
    schedule = [(s, [s // 2]) for s in range(6)]  # steps_per_expert 2, 3 experts
    assert recs[0]["experts"] == recs[1]["experts"] == schedule
    # the parameters agree on both ranks before every step and at the end (ddp_find_unused_parameters_true)
    for s0, s1 in zip(recs[0]["snapshots"], recs[1]["snapshots"], strict=True):
        assert_same(*({k: v for k, v in s.items() if "running" not in k} for s in (s0, s1)))
    # ... and at the end so do the BatchNorm running statistics (each rank's last batch moved its own; DDP's buffer
    # broadcast at the first validation forward gave both rank 0's, the ones the checkpoint holds)
    assert_same(ranks[0]["final"], ranks[1]["final"])
    final, snaps = ranks[0]["final"], recs[0]["snapshots"]
    for e in range(3):
        mine = [k for k in final if k.startswith(f"experts.{e}.")]
        assert any("running_mean" in k for k in mine) and any(".bn1.weight" in k for k in mine)
        # expert e trained in steps 2e, 2e+1 and never moved afterwards (idle experts get no gradient, not a zero
        # one: AdamW's weight decay and momentum would still move them)
        after = snaps[2 * e + 2] if e < 2 else final
        assert any(not torch.equal(after[k], snaps[2 * e][k]) for k in mine), e
        for k in mine:
            assert torch.equal(final[k], after[k]), k
        if e:  # chain: at its first step expert e starts from expert e-1's trained weights
            for k in mine:
                src = k.replace(f"experts.{e}.", f"experts.{e - 1}.", 1)
                assert torch.equal(snaps[2 * e][k], snaps[2 * e][src]), k
    # the teacher (with BatchNorm) stayed in eval mode: its running statistics never moved
    for r in ranks:
        assert r["teacher_training"] is False
        assert_same(r["teacher_init"], r["teacher_final"])
    # the checkpoint holds the trainable keys and the trained experts' buffers (the frozen shortcut BN's running
    # statistics moved in train mode too) and reloads to the very experts of the run (frozen weights rebuilt from
    # the teacher ckpt)
    assert reload["keys"] == reload["trainable_keys"] == sorted(final)
    assert not any(k.startswith("teacher.") or k.endswith("base_layer.weight") for k in reload["keys"])
    shortcut = [k for k in reload["keys"] if ".downsample." in k]
    assert shortcut and all(k.rsplit(".", 1)[1].startswith(("running_", "num_batches")) for k in shortcut)
    assert_same(reload["state"], ranks[0]["final_all"])
    for a, b in zip(reload["outputs"], result["sequential"]["rank0_outputs"], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the synced validation during fit judged exactly the checkpointed experts, on both ranks' shards
    for r in ranks:
        torch.testing.assert_close(r["rec"]["eval"][-1]["loss"], reload["val"]["loss"], rtol=1e-5, atol=1e-6)
