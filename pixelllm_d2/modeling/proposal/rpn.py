"""Class-agnostic region proposals for dense captioning: torchvision's RPN (anchors, objectness, box deltas, NMS,
top-k and its losses) on a simple feature pyramid built from the fused backbone map."""
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

from ...config import configurable
from ..build import PROPOSAL_GENERATOR_REGISTRY
from .pyramid import SimpleFeaturePyramid

__all__ = ["RPN"]


@PROPOSAL_GENERATOR_REGISTRY.register()
class RPN(nn.Module):
    """
    Args:
        pyramid: SimpleFeaturePyramid over the fused map.
        image_size: side of the padded square input, pixels (anchor strides = image_size / level size).
        in_features: pyramid levels the RPN reads.
        anchor_sizes: one tuple of anchor sizes (pixels) per level; aspect_ratios: shared ratios (h / w).
        num_convs: conv layers of the RPN head. iou_thresholds: (negative below, positive at or above).
        batch_size_per_image, positive_fraction: anchor sampling for the loss.
        pre_nms_topk, post_nms_topk: {"training": int, "testing": int}. nms_thresh, score_thresh: proposal NMS and
        objectness threshold. loss_weight (MODEL.RPN.LOSS_WEIGHT x LOSS.DET_WEIGHT), bbox_reg_loss_weight: loss
        multipliers.
    """

    @configurable
    def __init__(
        self,
        *,
        pyramid: SimpleFeaturePyramid,
        image_size: int,
        in_features: List[str],
        anchor_sizes: List[Tuple[int, ...]],
        aspect_ratios: Tuple[float, ...] = (0.5, 1.0, 2.0),
        num_convs: int = 1,
        iou_thresholds: Tuple[float, float] = (0.3, 0.7),
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        pre_nms_topk: Dict[str, int] = None,
        post_nms_topk: Dict[str, int] = None,
        nms_thresh: float = 0.7,
        score_thresh: float = 0.0,
        loss_weight: float = 1.0,
        bbox_reg_loss_weight: float = 1.0,
    ):
        super().__init__()
        if len(anchor_sizes) != len(in_features):
            raise ValueError(f"{len(anchor_sizes)} anchor-size tuples for {len(in_features)} RPN levels {in_features}")
        missing = [f for f in in_features if f not in pyramid.names]
        if missing:
            raise ValueError(f"RPN levels {missing} are not pyramid levels {pyramid.names}")
        self.pyramid = pyramid
        self.image_size = image_size
        self.in_features = list(in_features)
        anchors = AnchorGenerator(tuple(tuple(s) for s in anchor_sizes), (tuple(aspect_ratios),) * len(anchor_sizes))
        head = RPNHead(pyramid.out_channels, anchors.num_anchors_per_location()[0], conv_depth=num_convs)
        self.rpn = RegionProposalNetwork(
            anchors,
            head,
            fg_iou_thresh=iou_thresholds[1],
            bg_iou_thresh=iou_thresholds[0],
            batch_size_per_image=batch_size_per_image,
            positive_fraction=positive_fraction,
            pre_nms_top_n=pre_nms_topk or dict(training=2000, testing=1000),
            post_nms_top_n=post_nms_topk or dict(training=1000, testing=256),
            nms_thresh=nms_thresh,
            score_thresh=score_thresh,
        )
        self.loss_weight = loss_weight
        self.bbox_reg_loss_weight = bbox_reg_loss_weight

    @classmethod
    def from_config(cls, cfg, in_channels: int):
        r = cfg.MODEL.RPN
        sizes = [tuple(s) for s in cfg.MODEL.ANCHOR_GENERATOR.SIZES]
        return dict(
            pyramid=SimpleFeaturePyramid(
                in_channels, cfg.MODEL.PIXELLLM.PYRAMID.OUT_CHANNELS, cfg.MODEL.PIXELLLM.PYRAMID.SCALES,
                cfg.MODEL.PIXELLLM.PYRAMID.NUM_TOP_BLOCKS, cfg.MODEL.PIXELLLM.PYRAMID.NAMES,
            ),
            image_size=cfg.INPUT.IMAGE_SIZE,
            in_features=r.IN_FEATURES,
            anchor_sizes=sizes,
            aspect_ratios=tuple(cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS[0]),
            num_convs=r.NUM_CONVS,
            iou_thresholds=tuple(r.IOU_THRESHOLDS),
            batch_size_per_image=r.BATCH_SIZE_PER_IMAGE,
            positive_fraction=r.POSITIVE_FRACTION,
            pre_nms_topk=dict(training=r.PRE_NMS_TOPK_TRAIN, testing=r.PRE_NMS_TOPK_TEST),
            post_nms_topk=dict(training=r.POST_NMS_TOPK_TRAIN, testing=r.POST_NMS_TOPK_TEST),
            nms_thresh=r.NMS_THRESH,
            score_thresh=r.SCORE_THRESH,
            loss_weight=r.LOSS_WEIGHT * cfg.MODEL.PIXELLLM.LOSS.DET_WEIGHT,
            bbox_reg_loss_weight=r.BBOX_REG_LOSS_WEIGHT,
        )

    def forward(
        self, fused: torch.Tensor, image_sizes: List[Tuple[int, int]], gt_boxes: Optional[List[torch.Tensor]] = None
    ) -> Tuple[List[torch.Tensor], Dict[str, torch.Tensor]]:
        """
        Args:
            fused: (B, C, G, G) fused map of a padded (B, 3, S, S) batch, S = image_size.
            image_sizes: unpadded (h, w) per image (proposals are clipped to it).
            gt_boxes: training only: per image (N_i, 4) XYXY GT boxes, resized pixels.
        Returns:
            proposals: per image (P_i, 4) XYXY boxes, resized pixels, best first.
            losses: {"loss_rpn_cls", "loss_rpn_loc"} in training, else {}.
        """
        feats = self.pyramid(fused)
        feats = {k: feats[k] for k in self.in_features}
        # torchvision's anchor generator only reads the padded batch's size (an empty tensor of that shape).
        s = self.image_size
        images = ImageList(fused.new_empty(fused.shape[0], 0, s, s), list(image_sizes))
        targets = None if gt_boxes is None else [{"boxes": b} for b in gt_boxes]
        proposals, losses = self.rpn(images, feats, targets)
        if losses:
            losses = {
                "loss_rpn_cls": losses["loss_objectness"] * self.loss_weight,
                "loss_rpn_loc": losses["loss_rpn_box_reg"] * self.loss_weight * self.bbox_reg_loss_weight,
            }
        return proposals, losses
