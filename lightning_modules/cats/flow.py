"""Keypoint <-> flow helpers for CATs: ground-truth flow from sparse keypoints, keypoint transfer, PCK thresholds.

Keypoints are `(B, K, 2)` pixel (x, y) tensors padded to K with `n_pts` `(B,)` valid ones; flows are `(B, 2, h, w)`
target -> source in cell units (see `nets.py`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F


def valid_mask(n_pts: torch.Tensor, k: int) -> torch.Tensor:
    """`(B, K)` bool: True for the first `n_pts[b]` keypoints of each pair."""
    return torch.arange(k, device=n_pts.device)[None, :] < n_pts[:, None]


def keypoints_to_flow(
    src_kps: torch.Tensor,
    trg_kps: torch.Tensor,
    n_pts: torch.Tensor,
    image_size: int,
    feature_size: int,
    receptive_field: float = 35.0 / 256.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse ground-truth flow on the target grid and its validity mask, `(B, 2, h, w)` and `(B, h, w)`.

    Cell (i, j) owns a box of side `receptive_field * image_size` (35 px at 256, the official value) centred on the
    cell centre. A cell whose box holds target keypoints gets the mean of their displacements (source - target),
    in cell units; other cells are invalid. The mask is explicit, so a true zero displacement is kept (the official
    code drops flows that are exactly (0, 0)).
    """
    cell = image_size / feature_size
    half = receptive_field * image_size / 2.0
    centres = (torch.arange(feature_size, device=trg_kps.device, dtype=trg_kps.dtype) + 0.5) * cell
    valid = valid_mask(n_pts, trg_kps.shape[1])  # (B, K)
    in_x = (trg_kps[..., 0, None] - centres).abs() <= half  # (B, K, w)
    in_y = (trg_kps[..., 1, None] - centres).abs() <= half  # (B, K, h)
    inside = in_y[:, :, :, None] & in_x[:, :, None, :] & valid[:, :, None, None]  # (B, K, h, w)
    weights = inside.to(trg_kps.dtype)
    count = weights.sum(dim=1)  # (B, h, w)
    disp = (src_kps - trg_kps) / cell  # (B, K, 2)
    flow = torch.einsum("bkhw,bkc->bchw", weights, disp) / count.clamp_min(1)[:, None]
    return flow, count > 0


def epe_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean end-point error `||pred - target||_2` over the cells where `mask` is True."""
    if not bool(mask.any()):
        raise ValueError("no valid ground-truth flow cell in this batch (every pair has zero keypoints?)")
    epe = torch.linalg.vector_norm(pred - target, dim=1)  # (B, h, w)
    return epe[mask].mean()


def transfer_keypoints(
    flow: torch.Tensor,
    kps: torch.Tensor,
    image_size: int,
    sampling: Literal["official_int", "bilinear"] = "official_int",
) -> torch.Tensor:
    """Move `kps` (on the flow's grid image, pixels) by the flow: returns the matched keypoints, `(B, K, 2)`.

    The flow is converted to pixels (x cell size). `official_int` upsamples it to the full image with bilinear
    interpolation and reads it at the truncated integer keypoint (the official evaluation); `bilinear` samples
    the cell-grid flow at the exact keypoint position.
    """
    b, _, h, w = flow.shape
    cell = image_size / w
    if sampling == "official_int":
        dense = F.interpolate(flow, size=(image_size, image_size), mode="bilinear") * cell
        idx = kps.long().clamp(0, image_size - 1)  # (B, K, 2)
        flat = idx[..., 1] * image_size + idx[..., 0]  # (B, K)
        disp = torch.gather(dense.flatten(2), 2, flat[:, None, :].expand(-1, 2, -1))  # (B, 2, K)
        return kps + disp.transpose(1, 2)
    if sampling == "bilinear":
        grid = kps / image_size * 2.0 - 1.0  # pixel-area convention: cell centres at (j + 0.5) * cell
        disp = F.grid_sample(
            flow, grid[:, :, None, :], mode="bilinear", padding_mode="border", align_corners=False
        )
        return kps + disp[..., 0].transpose(1, 2) * cell
    raise ValueError(f"kp_sampling must be 'official_int' or 'bilinear', got {sampling!r}")


def pck_threshold(
    mode: Literal["bbox", "image", "kps"],
    bbox: torch.Tensor | None = None,
    kps: torch.Tensor | None = None,
    n_pts: torch.Tensor | None = None,
    image_size: int | None = None,
) -> torch.Tensor:
    """Per-pair PCK threshold before alpha, `(B,)`.

    `bbox`: max(w, h) of the reference box `(B, 4)` x1 y1 x2 y2 (SPair, alpha_bbox); `image`: the image side
    (PF-PASCAL, alpha_img); `kps`: max extent of the valid reference keypoints (PF-WILLOW, "bbox-kp").
    """
    if mode == "bbox":
        if bbox is None:
            raise ValueError("threshold mode 'bbox' needs the reference bbox")
        return torch.maximum(bbox[:, 2] - bbox[:, 0], bbox[:, 3] - bbox[:, 1])
    if mode == "image":
        if image_size is None or kps is None:
            raise ValueError("threshold mode 'image' needs image_size and the keypoints (for the batch size)")
        return torch.full((kps.shape[0],), float(image_size), device=kps.device)
    if mode == "kps":
        if kps is None or n_pts is None:
            raise ValueError("threshold mode 'kps' needs the reference keypoints and n_pts")
        valid = valid_mask(n_pts, kps.shape[1])[..., None]
        big = torch.finfo(kps.dtype).max
        lo = torch.where(valid, kps, torch.full_like(kps, big)).amin(dim=1)
        hi = torch.where(valid, kps, torch.full_like(kps, -big)).amax(dim=1)
        return (hi - lo).amax(dim=1)
    raise ValueError(f"threshold mode must be 'bbox', 'image' or 'kps', got {mode!r}")
