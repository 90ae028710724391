"""The ROIAlign-free ROI head: every proposal is a box prompt for the prompt feature extractor; its visual tokens
feed (a) a box-refinement + objectness head (here) and (b) the T5 captioner (the meta-architecture). No RoIAlign /
RoIPool: region features come only from the prompt extractor, as the paper claims."""
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes

from ...config import configurable
from ..build import ROI_HEADS_REGISTRY

__all__ = ["PromptROIHeads"]


@ROI_HEADS_REGISTRY.register()
class PromptROIHeads(nn.Module):
    """
    Args:
        token_dim: width of the prompt extractor's visual tokens. hidden_dim: box-head MLP width.
        iou_threshold: proposal-to-GT IoU for foreground (official: 0.6), also the caption-matching threshold.
        batch_size_per_image, positive_fraction: proposals sampled per image to train the box head.
        num_text_proposals: of the sampled proposals (foreground first), how many are captioned (official: 32).
        append_gt: add the GT boxes to the proposals in training.
        score_thresh, nms_thresh, detections_per_image: test-time filtering (official: 0.05, 0.5, 100).
        bbox_reg_weights: (wx, wy, ww, wh) of the box coder.
        box_tokens: the box head averages the first `box_tokens` visual tokens of a proposal (0: all of them), e.g.
            only the query tokens, not the projected map's dense tokens that follow them and are the same for every
            proposal of an image (`ROI_HEADS.BOX_HEAD_TOKENS query`).
        loss_weight: multiplies both losses (LOSS.DET_WEIGHT).
        score_mode: the final score of a captioned detection (`rescore`): "det" (official: the detection score) or
            "det_x_caption" (sqrt(det * exp(mean caption log-prob)), detections re-ranked by it).

    The head never calls back into the model: the caller encodes the boxes `sample` returns (or the proposals)
    into visual tokens and passes them to `losses` / `detect`.
    """

    @configurable
    def __init__(
        self,
        *,
        token_dim: int,
        hidden_dim: int = 256,
        iou_threshold: float = 0.6,
        batch_size_per_image: int = 128,
        positive_fraction: float = 0.25,
        num_text_proposals: int = 32,
        append_gt: bool = True,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_image: int = 100,
        bbox_reg_weights: Tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        box_tokens: int = 0,
        loss_weight: float = 1.0,
        score_mode: str = "det",
    ):
        super().__init__()
        if score_mode not in ("det", "det_x_caption"):
            raise ValueError(f"dense-caption score mode must be 'det' or 'det_x_caption', got {score_mode!r}")
        self.score_mode = score_mode
        self.loss_weight = loss_weight
        self.box_head = nn.Sequential(
            nn.LayerNorm(token_dim), nn.Linear(token_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim), nn.ReLU()
        )
        self.objectness = nn.Linear(hidden_dim, 1)
        self.deltas = nn.Linear(hidden_dim, 4)
        nn.init.normal_(self.deltas.weight, std=0.001)
        nn.init.zeros_(self.deltas.bias)
        self.box_coder = det_utils.BoxCoder(tuple(bbox_reg_weights))
        self.matcher = det_utils.Matcher(iou_threshold, iou_threshold, allow_low_quality_matches=False)
        self.sampler = det_utils.BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.num_text_proposals = num_text_proposals
        self.append_gt = append_gt
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_image = detections_per_image
        if box_tokens < 0:
            raise ValueError(f"box_tokens must be >= 0 (0 = all), got {box_tokens}")
        self.box_tokens = box_tokens

    @classmethod
    def from_config(cls, cfg):
        r = cfg.MODEL.ROI_HEADS
        if r.BOX_HEAD_TOKENS not in ("all", "query"):
            raise ValueError(f"MODEL.ROI_HEADS.BOX_HEAD_TOKENS must be 'all' or 'query', got {r.BOX_HEAD_TOKENS!r}")
        p = cfg.MODEL.PIXELLLM.PROMPT_EXTRACTOR
        if r.BOX_HEAD_TOKENS == "query" and p.FUSE == "dense":
            raise ValueError("MODEL.ROI_HEADS.BOX_HEAD_TOKENS 'query' needs query tokens (PROMPT_EXTRACTOR.FUSE sparse "
                             "or sparse+dense)")
        return dict(
            token_dim=cfg.MODEL.PIXELLLM.PROMPT_EXTRACTOR.OUT_DIM,
            hidden_dim=r.BOX_HEAD_DIM,
            iou_threshold=r.IOU_THRESHOLDS[0],
            batch_size_per_image=r.BATCH_SIZE_PER_IMAGE,
            positive_fraction=r.POSITIVE_FRACTION,
            num_text_proposals=r.NUM_TEXT_PROPOSALS,
            append_gt=r.PROPOSAL_APPEND_GT,
            score_thresh=r.SCORE_THRESH_TEST,
            nms_thresh=r.NMS_THRESH_TEST,
            detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            bbox_reg_weights=tuple(r.BBOX_REG_WEIGHTS),
            box_tokens=p.NUM_QUERIES if r.BOX_HEAD_TOKENS == "query" else 0,
            loss_weight=cfg.MODEL.PIXELLLM.LOSS.DET_WEIGHT,
            score_mode=r.SCORE_MODE,
        )

    def predict(self, visual: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(K, V, D) visual tokens -> objectness logits (K,) and box deltas (K, 4)."""
        if self.box_tokens:
            visual = visual[:, : self.box_tokens]
        h = self.box_head(visual.mean(dim=1))
        return self.objectness(h)[:, 0], self.deltas(h)

    def sample(self, proposals: List[torch.Tensor], gt_boxes: List[torch.Tensor], image_index: List[int]) -> Dict[str, torch.Tensor]:
        """Label and sample the proposals of each image to train on (GT boxes appended; foreground first).

        Args:
            proposals: per image (P_i, 4) proposals, resized pixels. gt_boxes: per image (N_i, 4).
            image_index: the batch index of each image.
        Returns:
            {"boxes" (K, 4), "labels" (K,) 1 foreground / 0 background, "matched" (K,) index of the matched GT in its
            image (0 for background), "image_index" (K,), "caption" (K,) bool: the first `num_text_proposals` sampled
            of each image that are foreground (unmatched proposals get no caption)}.
        """
        sampled, labels, matched, img, caption = [], [], [], [], []
        for i, (props, gt) in enumerate(zip(proposals, gt_boxes)):
            if self.append_gt:
                props = torch.cat([props, gt])
            if gt.numel():
                m = self.matcher(box_iou(gt, props))
            else:
                m = torch.full((props.shape[0],), -1, dtype=torch.long, device=props.device)
            lab = (m >= 0).to(torch.int64)
            pos, neg = self.sampler([lab])
            pos_idx, neg_idx = pos[0].nonzero(as_tuple=True)[0], neg[0].nonzero(as_tuple=True)[0]
            keep = torch.cat([pos_idx, neg_idx])  # foreground first: captioning takes the first ones
            sampled.append(props[keep])
            labels.append(lab[keep])
            matched.append(m[keep].clamp(min=0))
            img.append(torch.full((len(keep),), image_index[i], dtype=torch.long, device=props.device))
            first = torch.arange(len(keep), device=props.device) < self.num_text_proposals
            caption.append(first & (lab[keep] > 0))
        return dict(boxes=torch.cat(sampled), labels=torch.cat(labels), matched=torch.cat(matched),
                    image_index=torch.cat(img), caption=torch.cat(caption), counts=[len(x) for x in labels])

    def losses(self, visual: torch.Tensor, sampled: Dict[str, torch.Tensor], gt_boxes: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """{"loss_cls", "loss_box_reg"} of the sampled proposals (`sample`) from their (K, V, D) visual tokens."""
        logits, deltas = self.predict(visual)
        labels, boxes = sampled["labels"], sampled["boxes"]
        loss_cls = F.binary_cross_entropy_with_logits(logits, labels.float())
        fg = labels > 0
        if fg.any():
            per_image = zip(gt_boxes, sampled["matched"].split(sampled["counts"]))
            targets = self.box_coder.encode_single(torch.cat([g[m] for g, m in per_image])[fg], boxes[fg])
            loss_box = F.smooth_l1_loss(deltas[fg], targets, beta=0.0, reduction="sum") / max(len(labels), 1)
        else:
            loss_box = deltas.sum() * 0.0
        return {"loss_cls": loss_cls * self.loss_weight, "loss_box_reg": loss_box * self.loss_weight}

    @torch.no_grad()
    def detect(self, visual: torch.Tensor, proposals: List[torch.Tensor], image_sizes: List[Tuple[int, int]]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Refine, score, threshold and NMS the proposals of each image.

        Args:
            visual: (sum P_i, V, D) visual tokens of all proposals, image by image.
            proposals: per image (P_i, 4) resized pixels. image_sizes: per image (h, w).
        Returns:
            per image (boxes (D_i, 4) resized pixels, scores (D_i,)), at most detections_per_image, best first.
        """
        counts = [len(p) for p in proposals]
        logits, deltas = self.predict(visual)
        refined = self.box_coder.decode_single(deltas, torch.cat(proposals))
        scores = logits.sigmoid()
        out = []
        for b, s, size in zip(refined.split(counts), scores.split(counts), image_sizes):
            b = clip_boxes_to_image(b, size)
            keep = remove_small_boxes(b, 1.0)  # degenerate (zero-area) boxes carry no region to caption
            b, s = b[keep], s[keep]
            keep = s > self.score_thresh
            b, s = b[keep], s[keep]
            keep = batched_nms(b, s, torch.zeros_like(s, dtype=torch.long), self.nms_thresh)[: self.detections_per_image]
            out.append((b[keep], s[keep]))
        return out

    def rescore(self, scores: torch.Tensor, caption_log_prob: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The final scores of one image's (D,) captioned detections from their (D,) mean caption log-probs
        (`score_mode`). Returns (order (D,): the detections best first, scores in that order)."""
        if self.score_mode == "det":
            return torch.arange(len(scores), device=scores.device), scores
        combined = (scores * caption_log_prob.exp()).sqrt()
        order = combined.argsort(descending=True)
        return order, combined[order]
