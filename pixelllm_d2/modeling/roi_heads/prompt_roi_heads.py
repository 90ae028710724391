"""The ROIAlign-free ROI head: every proposal is a box prompt for the prompt feature extractor; its visual tokens
feed (a) a box-refinement + objectness head (here) and (b) the T5 captioner (the meta-architecture). No RoIAlign /
RoIPool: region features come only from the prompt extractor, as the paper claims."""
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes

from ...config import configurable
from ..build import ROI_HEADS_REGISTRY

__all__ = ["PromptROIHeads"]

# (image index (K,), boxes (K, 4) resized pixels) -> visual tokens (K, V, D)
EncodeFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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
    ):
        super().__init__()
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
        )

    def predict(self, visual: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(K, V, D) visual tokens -> objectness logits (K,) and box deltas (K, 4)."""
        if self.box_tokens:
            visual = visual[:, : self.box_tokens]
        h = self.box_head(visual.mean(dim=1))
        return self.objectness(h)[:, 0], self.deltas(h)

    def forward_train(
        self,
        proposals: List[torch.Tensor],
        gt_boxes: List[torch.Tensor],
        image_index: List[int],
        encode: EncodeFn,
    ) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
        """
        Args:
            proposals: per image (P_i, 4) proposals, resized pixels. gt_boxes: per image (N_i, 4).
            image_index: the batch index of each image. encode: box prompts -> visual tokens.
        Returns:
            losses: {"loss_cls", "loss_box_reg"}.
            captioned: the proposals to caption, foreground only: {"image_index" (K,), "boxes" (K, 4),
                "gt_index" (K,) index into that image's GT, "visual" (K, V, D)}.
        """
        sampled, labels, matched, img = [], [], [], []
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
        boxes = torch.cat(sampled)
        labels_t = torch.cat(labels)
        img_t = torch.cat(img)
        visual = encode(img_t, boxes)
        logits, deltas = self.predict(visual)
        loss_cls = F.binary_cross_entropy_with_logits(logits, labels_t.float())
        fg = labels_t > 0
        targets = self.box_coder.encode_single(torch.cat([g[m] for g, m in zip(gt_boxes, matched)])[fg], boxes[fg]) if fg.any() else None
        loss_box = F.smooth_l1_loss(deltas[fg], targets, beta=0.0, reduction="sum") / max(len(labels_t), 1) if fg.any() else deltas.sum() * 0.0
        # Captioning: the first num_text_proposals sampled per image, foreground only (unmatched get no text loss).
        cap_rows, offset = [], 0
        for lab in labels:
            first = torch.arange(offset, offset + min(len(lab), self.num_text_proposals), device=lab.device)
            cap_rows.append(first[lab[: len(first)] > 0])
            offset += len(lab)
        rows = torch.cat(cap_rows)
        gt_index = torch.cat(matched)[rows]
        captioned = dict(image_index=img_t[rows], boxes=boxes[rows], gt_index=gt_index, visual=visual[rows])
        return {"loss_cls": loss_cls, "loss_box_reg": loss_box}, captioned

    @torch.no_grad()
    def detect(
        self, proposals: List[torch.Tensor], image_sizes: List[Tuple[int, int]], image_index: List[int], encode: EncodeFn
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Refine, score, threshold and NMS the proposals of each image.

        Returns per image (boxes (D_i, 4) resized pixels, scores (D_i,)), at most detections_per_image, best first.
        """
        counts = [len(p) for p in proposals]
        device = proposals[0].device if proposals else torch.device("cpu")
        if sum(counts) == 0:
            return [(torch.zeros(0, 4, device=device), torch.zeros(0, device=device)) for _ in proposals]
        boxes = torch.cat(proposals)
        img_t = torch.cat([torch.full((n,), image_index[i], dtype=torch.long, device=device) for i, n in enumerate(counts)])
        logits, deltas = self.predict(encode(img_t, boxes))
        refined = self.box_coder.decode_single(deltas, boxes)
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
