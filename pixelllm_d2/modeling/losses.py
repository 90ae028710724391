"""PixelLLM's losses (official weights live in the config: MODEL.PIXELLLM.LOSS)."""
import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from ..structures import points_to_boxes

__all__ = ["text_loss", "corner_l1_loss", "cell_loss", "giou_loss", "mask_losses"]


def text_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, smoothing: float = 0.1, pad_id: int = 0, eos_id: int = 1) -> torch.Tensor:
    """GRiT-style label-smoothed cross-entropy: (1 - s) on the target and s / (V - 1) on every other token,
    averaged over non-pad targets of the valid rows. Rows whose first target is EOS (empty text) are skipped.

    Args:
        logits: (Q, T, V); targets: (Q, T) int64 (padded with pad_id); valid: (Q,) bool rows that carry a text loss.
    Returns:
        scalar (0 with a graph when no row is valid).
    """
    valid = valid & (targets[:, 0] != eos_id)
    token_mask = (targets != pad_id) & valid[:, None]
    if not token_mask.any():
        return logits.sum() * 0.0
    logp = F.log_softmax(logits[token_mask].float(), dim=-1)  # (N, V)
    tgt = targets[token_mask]
    v = logp.shape[-1]
    target_logp = logp.gather(1, tgt[:, None])[:, 0]
    other = logp.sum(dim=-1) - target_logp
    loss = -((1.0 - smoothing) * target_logp + smoothing / (v - 1) * other)
    return loss.mean()


def corner_l1_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean L1 (pixels) over the 4 corner coordinates of the valid entries (official `l1_nonzero`).

    Args:
        pred: (..., 4) predicted (x0, y0, x1, y1) corner points; target: (..., 4); valid: (...) bool.
    """
    if not valid.any():
        return pred.sum() * 0.0
    return (pred[valid].float() - target[valid].float()).abs().mean()


def cell_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (N, K) logits (-inf allowed where the target is 0) against (N, K) target
    distributions."""
    if logits.numel() == 0:
        return logits.sum() * 0.0
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -torch.where(target > 0, target * logp, torch.zeros_like(logp)).sum(-1).mean()


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean GIoU loss of (N, 4) XYXY boxes (the predicted corners ordered into a valid box first)."""
    if pred.numel() == 0:
        return pred.sum() * 0.0
    ordered = points_to_boxes(pred.unflatten(-1, (2, 2)))
    return generalized_box_iou_loss(ordered.float(), target.float(), reduction="mean")


def mask_losses(logits: torch.Tensor, iou_pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, alpha: float = 0.5):
    """SAM-style mask losses inside the unpadded image area.

    Args:
        logits: (Q, S, S) mask logits at the padded input size; iou_pred: (Q,) predicted IoU.
        gt: (Q, S, S) bool GT masks (zero in the padding); valid: (Q, S, S) bool, True inside the image.
    Returns:
        dict with "focal" (sigmoid focal, `alpha`, gamma 2, mean over valid pixels), "dice", "iou" (MSE between
        the predicted and the actual IoU of logits > 0).
    """
    gt_f = gt.float()
    vf = valid.float()
    n_valid = vf.sum(dim=(1, 2)).clamp(min=1.0)
    focal = sigmoid_focal_loss(logits.float(), gt_f, alpha=alpha, gamma=2.0, reduction="none")
    focal = ((focal * vf).sum(dim=(1, 2)) / n_valid).mean()
    prob = logits.float().sigmoid() * vf
    inter = (prob * gt_f).sum(dim=(1, 2))
    dice = 1 - (2 * inter + 1) / (prob.sum(dim=(1, 2)) + gt_f.sum(dim=(1, 2)) + 1)
    with torch.no_grad():
        hard = (logits > 0) & valid
        i = (hard & gt).sum(dim=(1, 2)).float()
        u = (hard | gt).sum(dim=(1, 2)).float()
        actual = i / u.clamp(min=1.0)
    iou = F.mse_loss(iou_pred.float(), actual)
    return {"focal": focal, "dice": dice.mean(), "iou": iou}
