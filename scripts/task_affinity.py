"""Task affinity between diffusion timesteps (ANT): cosine similarity of per-timestep loss gradients.

    python scripts/task_affinity.py -c configs/ant/digits.yaml \
        --ckpt logs/ant_digits/version_0/checkpoints/last.ckpt --stride 100 --num_images 1000 --out affinity.pt

For each checkpoint and each timestep t on the grid ``0, stride, 2*stride, ...`` (or ``--timesteps``), g_t is the
gradient (w.r.t. the denoiser's parameters) of the mean loss over the first ``num_images`` training images, with
the same images and the same seeded noise at every t. ``TAS[i, j] = cos(g_i, g_j)``, averaged over the
checkpoints (official ANT code). The output file holds ``timesteps``, ``affinity`` (n x n) and ``checkpoints``;
``TimestepMTL(clustering="gradient", affinity_path=...)`` clusters with it. The script also prints the mean
affinity against the timestep gap (the paper's observation O1: affinity falls as the gap grows).

Memory: n_timesteps x n_parameters floats (CPU), e.g. 10 x 100M = 4 GB for an ADM-size U-Net.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli import LitCLI  # noqa: E402
from lightning_modules.diffusion.module import images_of  # noqa: E402


def timestep_gradients(module, images: torch.Tensor, timesteps: list[int], batch_size: int, seed: int = 0):
    """(n, P) gradients of the mean loss over ``images`` at each timestep (same noise for every t)."""
    params = [p for p in module.net.parameters() if p.requires_grad]
    rows = []
    for t in timesteps:
        grads = [torch.zeros_like(p) for p in params]
        for start in range(0, len(images), batch_size):
            x0 = images[start : start + batch_size].to(module.device)
            z0 = module.encode(x0)
            g = torch.Generator().manual_seed(seed * 1_000_003 + start)
            noise = torch.randn(z0.shape, generator=g).to(z0)
            tt = torch.full((len(z0),), t, device=module.device, dtype=torch.long)
            loss = module.per_sample_losses(z0, tt, noise).sum() / len(images)
            for acc, grad in zip(grads, torch.autograd.grad(loss, params), strict=True):
                acc += grad
        rows.append(torch.cat([g.flatten() for g in grads]).cpu())
    return torch.stack(rows)


def cosine_matrix(grads: torch.Tensor) -> torch.Tensor:
    unit = grads / grads.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return unit @ unit.T


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "-c", "--config", required=True, action="append", help="config(s) of the trained model"
    )
    parser.add_argument("--ckpt", required=True, action="append", help="checkpoint(s); the TAS is averaged")
    parser.add_argument("--stride", type=int, default=100)
    parser.add_argument("--timesteps", type=int, nargs="*", help="explicit grid (overrides --stride)")
    parser.add_argument("--num_images", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="affinity.pt")
    parser.add_argument("cli_args", nargs="*", help="extra CLI overrides after --, e.g. -- --data.root /data")
    args = parser.parse_args(argv)

    cli_args = [a for c in args.config for a in ("-c", c)] + args.cli_args + ["--trainer.logger=false"]
    cli = LitCLI(args=cli_args, run=False)
    module, datamodule = cli.model, cli.datamodule
    datamodule.setup("fit")
    images = []
    for batch in torch.utils.data.DataLoader(datamodule.train_set, batch_size=args.batch_size, shuffle=False):
        images.append(images_of(batch))
        if sum(len(b) for b in images) >= args.num_images:
            break
    images = torch.cat(images)[: args.num_images]
    timesteps = args.timesteps or list(range(0, module.num_train_timesteps, args.stride))
    total = torch.zeros(len(timesteps), len(timesteps), dtype=torch.float64)
    for path in args.ckpt:
        state = torch.load(path, map_location="cpu", weights_only=False)
        module.on_load_checkpoint(state)
        module.load_state_dict(state["state_dict"], strict=False)
        module.eval()
        total += cosine_matrix(
            timestep_gradients(module, images, timesteps, args.batch_size, args.seed)
        ).double()
    affinity = (total / len(args.ckpt)).float()
    result = {"timesteps": torch.tensor(timesteps), "affinity": affinity, "checkpoints": list(args.ckpt)}
    torch.save(result, args.out)
    print(
        f"task affinity over {len(timesteps)} timesteps, {len(images)} images, {len(args.ckpt)} checkpoint(s)"
    )
    print("gap  mean cosine")
    for gap in range(1, len(timesteps)):
        mean = torch.diagonal(affinity, offset=gap).mean().item()
        print(f"{gap * (timesteps[1] - timesteps[0]) if len(timesteps) > 1 else 0:>4}  {mean:.3f}")
    print(f"saved to {args.out}")
    return result


if __name__ == "__main__":
    main()
