"""PixelLLM: one model for per-word-grounded captioning, region captioning, referring localisation /
segmentation and dense captioning. Inputs and outputs are documented in docs/DESIGN.md (§2 and §3)."""
import logging
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...config import configurable
from ...structures import jitter_boxes
from ...tokenizer import build_tokenizer
from ..build import BACKBONE_REGISTRY, LANGUAGE_MODEL_REGISTRY, LOCATION_HEAD_REGISTRY, META_ARCH_REGISTRY, PROMPT_EXTRACTOR_REGISTRY
from ..language.decoding import generate
from ..language.location_head import cell_targets, points_to_boxes
from ..losses import cell_loss, corner_l1_loss, giou_loss, mask_losses, text_loss
from ..mask.mask_head import SAMMaskHead
from ..prompt.prompt_encoder import SAMPromptEncoder
from ..weights import load_eva02_checkpoint, load_sam_checkpoint
from .queries import TEXT_TASKS, Queries, gather_queries, pad_stack

__all__ = ["PixelLLM"]

logger = logging.getLogger(__name__)


def _vocab_size(cfg) -> int:
    lang = cfg.MODEL.PIXELLLM.LANGUAGE
    if lang.VOCAB_SIZE > 0:
        return lang.VOCAB_SIZE
    if lang.WEIGHTS:
        return 0  # taken from the folder's config.json
    if lang.TOKENIZER:
        n = len(build_tokenizer(lang.TOKENIZER))
        return (n + 127) // 128 * 128
    return 32128  # T5's SentencePiece vocabulary


@META_ARCH_REGISTRY.register()
class PixelLLM(nn.Module):
    """
    Args:
        backbone: image encoder returning {"fused": (B, C, H, W), "sam": (B, 256, Hs, Ws)} (DualViTBackbone).
        prompt_encoder: SAMPromptEncoder. prompt_extractor: TwoWayPromptExtractor (visual tokens per prompt).
        language: T5PrefixLM.
        location_head: MLPLocationHead, or MapAttentionLocationHead (reads the fused map; trained with "cell").
        mask_head: SAMMaskHead or None (no masks).
        proposal_generator, roi_heads: the dense-captioning detector, or None.
        tokenizer: tokenizer name / folder (see pixelllm_d2.tokenizer); built on first use.
        image_size: side of the padded square input.
        prompts: context prompt per task ({"trace": ..., "caption": ..., "region": ..., "refer": ..., "densecap": ...}).
        max_context_len, max_text_len: token limits.
        loss_weights: {"text", "label_smoothing", "point", "ref_box", "ref_giou", "cell", "mask_focal",
            "mask_dice", "mask_iou", "det"}.
        decode: {"method": "greedy"|"beam", "num_beams", "length_penalty", "max_len", "no_immediate_repeat"}.
        mask_train_prompt: "pred" (detached predicted box) or "gt".
        mask_train_box_noise: with mask_train_prompt "gt", Gaussian noise on each box corner with std this fraction
            of the box width / height, capped at 20 px (SAM's box-prompt noise is 0.1); drawn with torch's RNG.
        mask_train_max_queries: at most this many referring expressions per batch train the mask head, drawn at
            random with torch's RNG (0: all).
        densecap_score: final dense-caption score, "det" (official) or "det_x_caption" (sqrt(det * exp(mean
            caption log-prob)), detections re-ranked by it).
        region_points: supervise every token of a region / dense caption with the region's GT box (official).
        sam_checkpoint, eva02_checkpoint: component weights loaded by `load_component_weights()`.
        trainable_only: if given, only parameters whose names start with one of these prefixes train.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        prompt_encoder: SAMPromptEncoder,
        prompt_extractor: nn.Module,
        language: nn.Module,
        location_head: nn.Module,
        mask_head: Optional[SAMMaskHead] = None,
        proposal_generator: Optional[nn.Module] = None,
        roi_heads: Optional[nn.Module] = None,
        tokenizer: str = "",
        image_size: int = 384,
        prompts: Dict[str, str] = None,
        max_context_len: int = 32,
        max_text_len: int = 40,
        loss_weights: Dict[str, float] = None,
        decode: Dict = None,
        mask_train_prompt: str = "pred",
        mask_train_box_noise: float = 0.0,
        mask_train_max_queries: int = 0,
        densecap_score: str = "det",
        region_points: bool = True,
        sam_checkpoint: str = "",
        eva02_checkpoint: str = "",
        trainable_only: Tuple[str, ...] = (),
    ):
        super().__init__()
        self.backbone = backbone
        self.prompt_encoder = prompt_encoder
        self.prompt_extractor = prompt_extractor
        self.language = language
        self.location_head = location_head
        self.mask_head = mask_head
        self.proposal_generator = proposal_generator
        self.roi_heads = roi_heads
        self.tokenizer_name = tokenizer
        self.image_size = image_size
        self.prompts = dict(prompts or {})
        self.max_context_len = max_context_len
        self.max_text_len = max_text_len
        self.loss_weights = dict(
            text=1.0, label_smoothing=0.1, point=0.1, ref_box=0.1, ref_giou=0.0, cell=0.0, mask_focal=20.0, mask_dice=1.0, mask_iou=1.0, det=1.0
        )
        self.loss_weights.update(loss_weights or {})
        self.decode_cfg = dict(method="greedy", num_beams=4, length_penalty=0.6, max_len=40, no_immediate_repeat=True)
        self.decode_cfg.update(decode or {})
        if mask_train_prompt not in ("pred", "gt"):
            raise ValueError(f"mask_train_prompt must be 'pred' or 'gt', got {mask_train_prompt!r}")
        self.mask_train_prompt = mask_train_prompt
        if mask_train_box_noise < 0:
            raise ValueError(f"mask_train_box_noise must be >= 0, got {mask_train_box_noise}")
        self.mask_train_box_noise = mask_train_box_noise
        if mask_train_max_queries < 0:
            raise ValueError(f"mask_train_max_queries must be >= 0 (0 = all), got {mask_train_max_queries}")
        self.mask_train_max_queries = mask_train_max_queries
        if densecap_score not in ("det", "det_x_caption"):
            raise ValueError(f"dense-caption score must be 'det' or 'det_x_caption', got {densecap_score!r}")
        self.densecap_score = densecap_score
        self.region_points = region_points
        self.sam_checkpoint = sam_checkpoint
        self.eva02_checkpoint = eva02_checkpoint
        self._tokenizer = None
        if trainable_only:
            prefixes = tuple(trainable_only)
            for name, p in self.named_parameters():
                if not name.startswith(prefixes):
                    p.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg):
        p = cfg.MODEL.PIXELLLM
        backbone = BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME)(cfg)
        extractor = PROMPT_EXTRACTOR_REGISTRY.get(p.PROMPT_EXTRACTOR.NAME)(cfg, in_channels=backbone.out_channels)
        language = LANGUAGE_MODEL_REGISTRY.get(p.LANGUAGE.NAME)(cfg, visual_dim=p.PROMPT_EXTRACTOR.OUT_DIM, vocab_size=_vocab_size(cfg))
        mask_head = SAMMaskHead(cfg, visual_dim=p.PROMPT_EXTRACTOR.OUT_DIM, text_dim=language.d_model) if cfg.MODEL.MASK_ON else None
        proposal_generator = roi_heads = None
        if cfg.MODEL.DENSECAP_ON:
            from ..proposal import build_proposal_generator
            from ..roi_heads import build_roi_heads

            proposal_generator = build_proposal_generator(cfg, backbone.out_channels)
            roi_heads = build_roi_heads(cfg)
        return dict(
            backbone=backbone,
            prompt_encoder=SAMPromptEncoder(cfg),
            prompt_extractor=extractor,
            language=language,
            location_head=LOCATION_HEAD_REGISTRY.get(p.LOCATION_HEAD.NAME)(cfg, in_dim=language.d_model, map_dim=backbone.out_channels),
            mask_head=mask_head,
            proposal_generator=proposal_generator,
            roi_heads=roi_heads,
            tokenizer=p.LANGUAGE.TOKENIZER or p.LANGUAGE.WEIGHTS,
            image_size=cfg.INPUT.IMAGE_SIZE,
            prompts={k.lower(): v for k, v in p.PROMPTS.items()},
            max_context_len=p.LANGUAGE.MAX_CONTEXT_LEN,
            max_text_len=p.LANGUAGE.MAX_TEXT_LEN,
            loss_weights=dict(
                text=p.LOSS.TEXT_WEIGHT,
                label_smoothing=p.LOSS.LABEL_SMOOTHING,
                point=p.LOSS.POINT_WEIGHT,
                ref_box=p.LOSS.REF_BOX_WEIGHT,
                ref_giou=p.LOSS.REF_GIOU_WEIGHT,
                cell=p.LOSS.CELL_WEIGHT,
                mask_focal=p.LOSS.MASK_FOCAL_WEIGHT,
                mask_dice=p.LOSS.MASK_DICE_WEIGHT,
                mask_iou=p.LOSS.MASK_IOU_WEIGHT,
                det=p.LOSS.DET_WEIGHT,
            ),
            decode=dict(
                method=p.DECODE.METHOD,
                num_beams=p.DECODE.NUM_BEAMS,
                length_penalty=p.DECODE.LENGTH_PENALTY,
                max_len=p.DECODE.MAX_LEN,
                no_immediate_repeat=p.DECODE.NO_IMMEDIATE_REPEAT,
            ),
            mask_train_prompt=p.MASK_HEAD.TRAIN_PROMPT,
            mask_train_box_noise=p.MASK_HEAD.TRAIN_BOX_NOISE,
            mask_train_max_queries=p.MASK_HEAD.TRAIN_MAX_QUERIES,
            densecap_score=cfg.MODEL.ROI_HEADS.SCORE_MODE,
            region_points=p.LOSS.REGION_POINTS,
            sam_checkpoint=p.SAM.CHECKPOINT,
            eva02_checkpoint=p.EVA02.CHECKPOINT if p.EVA02.ENABLED else "",
            trainable_only=tuple(p.TRAINABLE_ONLY),
        )

    # ---------------------------------------------------------------------------------------------- set-up
    @property
    def device(self) -> torch.device:
        return self.location_head.mlp[-1].weight.device

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = build_tokenizer(self.tokenizer_name)
            if len(self._tokenizer) > self.language.vocab_size:
                raise ValueError(
                    f"tokenizer {self.tokenizer_name!r} has {len(self._tokenizer)} ids but the language model's "
                    f"vocabulary is {self.language.vocab_size}"
                )
        return self._tokenizer

    def load_component_weights(self) -> None:
        """Load the SAM / EVA02 / T5 / LoRA weights named in the config (each optional)."""
        if self.sam_checkpoint:
            load_sam_checkpoint(
                self.sam_checkpoint,
                image_encoder=self.backbone.sam,
                prompt_encoder=self.prompt_encoder.sam,
                mask_decoder=self.mask_head.decoder if self.mask_head is not None else None,
            )
        if self.eva02_checkpoint:
            load_eva02_checkpoint(self.eva02_checkpoint, self.backbone.eva02.model)
        self.language.load_weights()

    # ---------------------------------------------------------------------------------------------- helpers
    def preprocess_images(self, batched_inputs: List[Dict]) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
        """Pad the uint8 (3, h, w) images (longest side <= image_size) to one (B, 3, S, S) float batch."""
        s = self.image_size
        images = torch.zeros(len(batched_inputs), 3, s, s, device=self.device)
        sizes = []
        for i, x in enumerate(batched_inputs):
            img = x.get("image")
            where = f"input {i} ({x.get('file_name', 'no file_name')})"
            if not isinstance(img, torch.Tensor):
                raise TypeError(f"{where}: 'image' must be a torch.Tensor (3, h, w) uint8 RGB, got {type(img).__name__}")
            if img.dtype != torch.uint8:
                raise TypeError(f"{where}: 'image' must be uint8 RGB in 0-255, got dtype {img.dtype}")
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f"{where}: 'image' must have shape (3, h, w) (RGB, channels first), got {tuple(img.shape)}")
            h, w = img.shape[-2:]
            if max(h, w) > s or min(h, w) < 1:
                raise ValueError(f"{where}: image is {w}x{h}; resize it so the longest side is at most INPUT.IMAGE_SIZE={s}")
            images[i, :, :h, :w] = img.to(images.device, torch.float32)
            sizes.append((int(h), int(w)))
        return images, sizes

    def encode_boxes(self, fused: torch.Tensor, image_index: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Visual tokens (K, V, out_dim) (V: TwoWayPromptExtractor) for K box prompts (resized pixels) on `image_index`."""
        pe = self.prompt_encoder
        grid = tuple(fused.shape[-2:])
        return self.prompt_extractor(fused, image_index, pe(boxes=boxes), pe.dense(boxes, grid), pe.dense_pe(grid))

    def context_ids(self, task: str, n: int) -> torch.Tensor:
        """(n, C) the tokenised context prompt of `task`, repeated."""
        ids = self.tokenizer.encode(self.prompts[task], self.max_context_len)
        return torch.tensor(ids, dtype=torch.long, device=self.device).expand(n, -1)

    def encode_prompts(self, fused: torch.Tensor, q: Queries) -> torch.Tensor:
        """Visual tokens (Q, V, out_dim) for the queries' box / point prompts. Queries with the same prompt on the
        same image (e.g. the whole-image box of several referring expressions) share one extractor pass."""
        if not q.has_points.any():
            key = torch.cat([q.image_index[:, None].to(q.boxes.dtype), q.boxes], dim=1)
            uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
            if len(uniq) < len(q):
                return self.encode_boxes(fused, uniq[:, 0].long(), uniq[:, 1:])[inverse]
        pe = self.prompt_encoder
        n = len(q)
        tokens = None
        for rows, kwargs in (
            (~q.has_points, lambda idx: dict(boxes=q.boxes[idx])),
            (q.has_points, lambda idx: dict(points=q.points[idx], point_labels=q.point_labels[idx])),
        ):
            idx = rows.nonzero(as_tuple=True)[0]
            if idx.numel() == 0:
                continue
            t = pe(**kwargs(idx))
            if tokens is None:
                tokens = t.new_zeros(n, t.shape[1], t.shape[2])
            if t.shape[1] > tokens.shape[1]:
                tokens = torch.cat([tokens, pe.no_mask_embed.expand(n, t.shape[1] - tokens.shape[1], -1)], 1)
            elif t.shape[1] < tokens.shape[1]:
                t = torch.cat([t, pe.no_mask_embed.expand(len(idx), tokens.shape[1] - t.shape[1], -1)], 1)
            tokens = tokens.index_put((idx,), t)
        grid = tuple(fused.shape[-2:])
        boxes = q.boxes * (~q.has_points)[:, None].to(q.boxes.dtype)  # point prompts get no dense box
        return self.prompt_extractor(fused, q.image_index, tokens, pe.dense(boxes, grid), pe.dense_pe(grid))

    def _token_corners(self, hidden, image_wh, image_map, image_index, return_logits: bool = False):
        """(Q, T, d) decoder states -> (Q, T, 4) corner points (x0, y0, x1, y1), resized pixels; with
        `return_logits`, also the map-attention logits (Q, T, H * W) of a map-reading head (else None)."""
        out = self.location_head(hidden, image_wh, image_map, image_index, return_logits=return_logits)
        if return_logits:
            return out[0].flatten(-2), out[1]
        return out.flatten(-2)

    def _mask_logits(self, feats, q: Queries, boxes, visual, text_feats, text_mask) -> Tuple[torch.Tensor, torch.Tensor]:
        # Low-res logits (Q, 4h, 4w) -> padded-input resolution (Q, S, S).
        pe = self.prompt_encoder
        sam = feats["sam"]
        # The adapter attends to pad positions as zero vectors (SAM's transformer has no key mask), so the text is
        # always padded to MAX_TEXT_LEN: a query's mask never depends on the other texts of its batch.
        extra = self.max_text_len - text_feats.shape[1]
        if extra > 0:
            text_feats = F.pad(text_feats, (0, 0, 0, extra))
            text_mask = F.pad(text_mask, (0, extra), value=False)
        logits, iou = self.mask_head(
            sam, q.image_index, pe.embed_boxes(boxes), visual, text_feats, text_mask, pe.dense_pe(tuple(sam.shape[-2:])), pe.no_mask_embed
        )
        logits = F.interpolate(logits[:, None], size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)[:, 0]
        return logits, iou

    # ---------------------------------------------------------------------------------------------- forward
    def forward(self, batched_inputs: List[Dict]):
        """Training: dict of weighted scalar losses. Inference (eval mode): list of per-image outputs (DESIGN.md §3)."""
        if not self.training:
            return self.inference(batched_inputs)
        images, sizes = self.preprocess_images(batched_inputs)
        feats = self.backbone(images, sizes)
        num_images = len(batched_inputs)
        tasks = [x["task"] for x in batched_inputs]
        losses: Dict[str, torch.Tensor] = {}

        q = gather_queries(batched_inputs, self.device, require_targets=True)
        visual = self.encode_prompts(feats["fused"], q) if len(q) else None
        dense = [i for i, t in enumerate(tasks) if t == "densecap"]
        if dense:
            det_losses, det_q, det_visual = self._densecap_train(feats["fused"], batched_inputs, dense, sizes)
            frac_det = len(dense) / num_images
            losses.update({k: v * self.loss_weights["det"] * frac_det for k, v in det_losses.items()})
            if len(det_q):
                q = det_q if len(q) == 0 else _cat_queries(q, det_q)
                visual = det_visual if visual is None else torch.cat([visual, det_visual])
        if len(q) == 0:
            zero = sum(p.sum() * 0.0 for p in self.parameters() if p.requires_grad)
            losses.setdefault("loss_text", zero)
            return losses

        q = q.trimmed()
        enc_h, enc_m = self.language.encode(visual, q.context_ids)
        dec_in = F.pad(q.target_ids[:, :-1], (1, 0), value=0)  # BOS = pad id 0, T5 convention
        hidden, logits, _ = self.language.decode(enc_h, enc_m, dec_in)
        lw = self.loss_weights

        def frac(*names):  # the official loss scaling: batch mean of the task flag
            return sum(t in names for t in tasks) / num_images

        text_rows = q.task_mask(*TEXT_TASKS)
        if text_rows.any():
            losses["loss_text"] = lw["text"] * frac(*TEXT_TASKS) * text_loss(logits, q.target_ids, text_rows, lw["label_smoothing"])
        corners, cell_logits = self._token_corners(hidden, q.image_wh, feats["fused"], q.image_index, return_logits=True)
        cell_on = cell_logits is not None and lw["cell"] > 0
        grid = tuple(feats["fused"].shape[-2:])
        gt, valid, point_tasks = self._token_targets(q)
        if valid.any():
            # Token j of the target is the decoder input at position j + 1; its location is read there.
            losses["loss_point"] = lw["point"] * frac(*point_tasks) * corner_l1_loss(corners[:, 1:], gt[:, :-1], valid[:, :-1])
            if cell_on:
                v = valid[:, :-1]
                target = cell_targets(gt[:, :-1][v], grid, self.image_size)
                losses["loss_cell"] = lw["cell"] * frac(*point_tasks) * cell_loss(cell_logits[:, 1:][v], target)
        refer = q.task_mask("refer")
        if refer.any():
            if q.ref_boxes is None:
                raise ValueError("'refer' inputs need 'ref_boxes' for training")
            # The referring box is read at the last word: the position whose next token is EOS.
            eos_pos = (q.target_ids == self.tokenizer.eos_id).float().argmax(dim=1)
            ar = torch.arange(len(q), device=corners.device)
            ref_pred = corners[ar, eos_pos][refer]
            ref_gt = q.ref_boxes[refer]
            f = frac("refer")
            if cell_on:
                ref_cell = lw["cell"] * f * cell_loss(cell_logits[ar, eos_pos][refer], cell_targets(ref_gt, grid, self.image_size))
                losses["loss_cell"] = losses.get("loss_cell", 0.0) + ref_cell
            losses["loss_ref_box"] = lw["ref_box"] * f * corner_l1_loss(ref_pred, ref_gt, torch.ones(len(ref_gt), dtype=torch.bool, device=ref_gt.device))
            if lw["ref_giou"] > 0:
                losses["loss_ref_giou"] = lw["ref_giou"] * f * giou_loss(ref_pred, ref_gt)
            if self.mask_head is not None and q.gt_masks is not None:
                losses.update(self._mask_train_losses(feats, q, refer, ref_pred, visual, hidden, dec_in, f))
        return losses

    def _token_targets(self, q: Queries):
        """Per-token location targets (Q, T, 4) and their validity (Q, T): the trace boxes of `trace` queries and,
        when `region_points`, the region's GT box for every token of a `region` / `densecap` caption (the official
        `get_gt_points_from_boxes`). Returns the tasks that carry them too."""
        t = q.target_ids.shape[1]
        gt = q.token_boxes if q.token_boxes is not None else q.boxes.new_zeros(len(q), t, 4)
        valid = (gt.abs().sum(-1) > 0) & q.task_mask("trace")[:, None]
        tasks = ("trace",)
        if self.region_points:
            real = (q.target_ids != 0) & (q.target_ids != self.tokenizer.eos_id)
            region = q.task_mask("region")[:, None] & real
            gt = torch.where(region[..., None], q.boxes[:, None, :].expand(-1, t, -1), gt)
            # densecap captions carry their matched GT box in token_boxes (set by _densecap_train)
            dense = q.task_mask("densecap")[:, None] & real & (gt.abs().sum(-1) > 0)
            valid = valid | region | dense
            tasks = ("trace", "region", "densecap")
        return gt, valid, tasks

    def _require_densecap(self):
        if self.roi_heads is None or self.proposal_generator is None:
            raise ValueError("a 'densecap' input reached a model built without MODEL.DENSECAP_ON")

    def _densecap_train(self, fused, batched_inputs, dense, sizes):
        """Detector losses, plus caption queries (foreground proposals with their matched GT's caption)."""
        self._require_densecap()
        gt_boxes, gt_text = [], []
        for i in dense:
            x = batched_inputs[i]
            if "gt_boxes" not in x or "gt_target_ids" not in x:
                raise ValueError(f"input {i} ({x.get('file_name', 'no file_name')}): 'densecap' training needs gt_boxes and gt_target_ids")
            gt_boxes.append(torch.as_tensor(x["gt_boxes"], dtype=torch.float32, device=self.device).reshape(-1, 4))
            gt_text.append(torch.as_tensor(x["gt_target_ids"], dtype=torch.long, device=self.device))
        proposals, losses = self.proposal_generator(fused[dense], [sizes[i] for i in dense], gt_boxes)
        # proposals are per densecap image; the prompt extractor indexes the full batch
        roi_losses, cap = self.roi_heads.forward_train(proposals, gt_boxes, dense, lambda idx, b: self.encode_boxes(fused, idx, b))
        losses.update(roi_losses)
        n = len(cap["boxes"])
        pos = {img: k for k, img in enumerate(dense)}
        rows = [gt_text[pos[int(i)]][int(j)] for i, j in zip(cap["image_index"], cap["gt_index"])]
        wh = torch.tensor([[sizes[int(i)][1], sizes[int(i)][0]] for i in cap["image_index"]], dtype=torch.float32, device=self.device)
        target = pad_stack([r[None] for r in rows], 0) if rows else torch.zeros(0, 1, dtype=torch.long, device=self.device)
        matched = torch.stack([gt_boxes[pos[int(i)]][int(j)] for i, j in zip(cap["image_index"], cap["gt_index"])]) if rows else cap["boxes"]
        real = (target != 0) & (target != self.tokenizer.eos_id)
        token_boxes = matched[:, None, :] * real[..., None].to(matched.dtype)
        q = Queries(
            image_index=cap["image_index"],
            image_wh=wh.reshape(n, 2),
            boxes=cap["boxes"],
            has_points=torch.zeros(n, dtype=torch.bool, device=self.device),
            points=None,
            point_labels=None,
            context_ids=self.context_ids("densecap", n),
            target_ids=target,
            token_boxes=token_boxes,
            ref_boxes=None,
            gt_masks=None,
            task=["densecap"] * n,
        )
        return losses, q, cap["visual"]

    def _densecap_inference(self, fused, dense, sizes, dec) -> List[Dict]:
        """Detect, then caption every kept box of every image in one batched, KV-cached decode."""
        self._require_densecap()
        sub_sizes = [sizes[i] for i in dense]
        proposals, _ = self.proposal_generator(fused[dense], sub_sizes)
        encode = lambda idx, b: self.encode_boxes(fused, idx, b)  # noqa: E731
        dets = self.roi_heads.detect(proposals, sub_sizes, dense, encode)
        counts = [len(b) for b, _ in dets]
        outs = [dict(per_query=[], pred_boxes=b, scores=s) for b, s in dets]
        if sum(counts) == 0:
            return outs
        boxes = torch.cat([b for b, _ in dets])
        img = torch.cat([torch.full((n,), i, dtype=torch.long, device=self.device) for i, n in zip(dense, counts)])
        wh = torch.tensor([[sizes[i][1], sizes[i][0]] for i in img.tolist()], dtype=torch.float32, device=self.device)
        enc_h, enc_m = self.language.encode(encode(img, boxes), self.context_ids("densecap", len(boxes)))
        caps = self.decode_captions(enc_h, enc_m, wh, dec, image_map=fused, image_index=img)
        start = 0
        for out, n in zip(outs, counts):
            out["per_query"] = caps[start : start + n]
            start += n
            if self.densecap_score == "det_x_caption" and n:
                cap_p = torch.tensor([c["score"] for c in out["per_query"]], device=self.device).exp()
                out["scores"] = (out["scores"] * cap_p).sqrt()
                order = out["scores"].argsort(descending=True)
                out["scores"], out["pred_boxes"] = out["scores"][order], out["pred_boxes"][order]
                out["per_query"] = [out["per_query"][k] for k in order.tolist()]
        return outs

    def _mask_train_losses(self, feats, q, refer, ref_pred, visual, hidden, dec_in, frac):
        has_mask = torch.tensor([m is not None for m in q.gt_masks], device=refer.device) & refer
        if not has_mask.any():
            return {}
        ref_index = refer.nonzero(as_tuple=True)[0]
        pick = has_mask[ref_index]
        cap = self.mask_train_max_queries
        if cap and int(pick.sum()) > cap:
            keep = pick.nonzero(as_tuple=True)[0]
            keep = keep[torch.randperm(len(keep), device=keep.device)[:cap]]
            pick = torch.zeros_like(pick)
            pick[keep] = True
        idx = ref_index[pick]
        sub = q.select(idx)
        if self.mask_train_prompt == "gt":
            boxes = sub.ref_boxes
            if self.mask_train_box_noise > 0:
                boxes = jitter_boxes(boxes, self.mask_train_box_noise, sub.image_wh)
        else:
            boxes = points_to_boxes(ref_pred[pick].detach().unflatten(-1, (2, 2)))
        text_mask = torch.ones_like(dec_in[idx], dtype=torch.bool)
        text_mask[:, 1:] = dec_in[idx][:, 1:] != 0
        logits, iou = self._mask_logits(feats, sub, boxes, visual[idx], hidden[idx], text_mask)
        s = self.image_size
        gt = torch.zeros(len(sub), s, s, dtype=torch.bool, device=logits.device)
        valid = torch.zeros_like(gt)
        for k, m in enumerate(sub.gt_masks):
            h, w = m.shape
            gt[k, :h, :w] = m
            valid[k, :h, :w] = True
        parts = mask_losses(logits, iou, gt, valid)
        lw = self.loss_weights
        return {
            "loss_mask_focal": lw["mask_focal"] * frac * parts["focal"],
            "loss_mask_dice": lw["mask_dice"] * frac * parts["dice"],
            "loss_mask_iou": lw["mask_iou"] * frac * parts["iou"],
        }

    # ---------------------------------------------------------------------------------------------- inference
    @torch.no_grad()
    def inference(self, batched_inputs: List[Dict], decode: Optional[Dict] = None) -> List[Dict]:
        """Per-image outputs (DESIGN.md §3). `decode` overrides the configured decoding settings for this call."""
        dec = dict(self.decode_cfg, **(decode or {}))
        images, sizes = self.preprocess_images(batched_inputs)
        feats = self.backbone(images, sizes)
        results: List[Dict] = [dict(task=x["task"]) for x in batched_inputs]
        q = gather_queries(batched_inputs, self.device)
        if len(q):
            teacher = torch.zeros(len(q), dtype=torch.bool, device=self.device)
            if q.target_ids is not None:
                teacher = (q.target_ids[:, 0] != 0) & ~q.task_mask("region", "caption")
            per_query = [None] * len(q)
            for rows, fn in ((teacher, self._teacher_forced), (~teacher, self._generate)):
                idx = rows.nonzero(as_tuple=True)[0]
                if idx.numel():
                    for k, out in zip(idx.tolist(), fn(feats, q.select(idx), dec)):
                        per_query[k] = out
            for i in range(len(batched_inputs)):
                ks = (q.image_index == i).nonzero(as_tuple=True)[0].tolist()
                if ks:
                    results[i].update(self._collect(batched_inputs[i], [per_query[k] for k in ks], q.select(torch.tensor(ks, device=self.device))))
        dense = [i for i, x in enumerate(batched_inputs) if x["task"] == "densecap"]
        if dense:
            for i, out in zip(dense, self._densecap_inference(feats["fused"], dense, sizes, dec)):
                results[i].update(self._collect(batched_inputs[i], out["per_query"], None, out))
        for i, x in enumerate(batched_inputs):
            if len(results[i]) == 1:  # no queries at all
                results[i].update(self._collect(x, [], None))
        return results

    def _teacher_forced(self, feats, q: Queries, dec) -> List[Dict]:
        """Run the decoder on the given text (referring: the expression; trace evaluation: the GT narrative)."""
        visual = self.encode_prompts(feats["fused"], q)
        q = q.trimmed()
        enc_h, enc_m = self.language.encode(visual, q.context_ids)
        dec_in = F.pad(q.target_ids[:, :-1], (1, 0), value=0)
        hidden, _, _ = self.language.decode(enc_h, enc_m, dec_in)
        corners = self._token_corners(hidden, q.image_wh, feats["fused"], q.image_index)
        eos = self.tokenizer.eos_id
        lengths = ((q.target_ids != eos) & (q.target_ids != 0)).sum(dim=1)
        outs = []
        for k in range(len(q)):
            n = int(lengths[k])
            outs.append(dict(token_ids=q.target_ids[k, :n], token_corners=corners[k, 1 : n + 1], score=1.0))
        refer = q.task_mask("refer")
        if refer.any():
            ar = torch.arange(len(q), device=corners.device)
            ref_corners = corners[ar, lengths]  # the position whose next token is EOS
            for k in refer.nonzero(as_tuple=True)[0].tolist():
                outs[k]["box"] = points_to_boxes(ref_corners[k].unflatten(-1, (2, 2)))
            if self.mask_head is not None:
                idx = refer.nonzero(as_tuple=True)[0]
                boxes = torch.stack([outs[k]["box"] for k in idx.tolist()])
                text_mask = torch.ones_like(dec_in[idx], dtype=torch.bool)
                text_mask[:, 1:] = dec_in[idx][:, 1:] != 0
                logits, iou = self._mask_logits(feats, q.select(idx), boxes, visual[idx], hidden[idx], text_mask)
                for j, k in enumerate(idx.tolist()):
                    outs[k]["mask_logits"] = logits[j]
                    outs[k]["mask_score"] = float(iou[j])
        return outs

    def _generate(self, feats, q: Queries, dec) -> List[Dict]:
        """Decode captions for the queries (KV-cached; per-token locations collected while decoding)."""
        visual = self.encode_prompts(feats["fused"], q)
        enc_h, enc_m = self.language.encode(visual, q.context_ids)
        return self.decode_captions(enc_h, enc_m, q.image_wh, dec, image_map=feats["fused"], image_index=q.image_index)

    def decode_captions(self, enc_h, enc_m, image_wh, dec, use_cache: bool = True, image_map=None, image_index=None) -> List[Dict]:
        """Decode every row of the encoder output; returns per row {token_ids, token_corners, score}.
        `image_map` (B, C, H, W) and `image_index` (rows,) are needed by a map-reading location head."""

        def feature_fn(h, qidx):
            idx = image_index[qidx] if image_index is not None else None
            return self._token_corners(h[:, None], image_wh[qidx], image_map, idx)[:, 0]

        beams = dec["num_beams"] if dec["method"] == "beam" else 1
        if dec["method"] not in ("greedy", "beam"):
            raise ValueError(f"decode method must be 'greedy' or 'beam', got {dec['method']!r}")
        gen = generate(
            self.language,
            enc_h,
            enc_m,
            feature_fn,
            max_len=dec["max_len"],
            num_beams=beams,
            length_penalty=dec["length_penalty"],
            no_immediate_repeat=dec["no_immediate_repeat"],
            use_cache=use_cache,
            pad_id=self.tokenizer.pad_id,
            eos_id=self.tokenizer.eos_id,
            vocab_limit=len(self.tokenizer),
        )
        eos = self.tokenizer.eos_id
        outs = []
        for k in range(gen.tokens.shape[0]):
            ids = gen.tokens[k]
            n = int(((ids != eos) & (ids != 0)).cumprod(0).sum())
            outs.append(dict(token_ids=ids[:n], token_corners=gen.features[k, :n], score=float(gen.scores[k])))
        return outs

    def _collect(self, x: Dict, per_query: List[Dict], q: Optional[Queries], extra: Optional[Dict] = None) -> Dict:
        """Map one image's query results to original pixels and the output fields of DESIGN.md §3."""
        H, W = int(x.get("height", x["image"].shape[-2])), int(x.get("width", x["image"].shape[-1]))
        h, w = x["image"].shape[-2:]
        scale = torch.tensor([W / w, H / h, W / w, H / h], device=self.device)
        limit = torch.tensor([W, H, W, H], dtype=torch.float32, device=self.device)

        def to_orig(boxes):
            # ordered corners, scaled to the original image and clipped to it
            b = points_to_boxes(boxes.reshape(-1, 2, 2)).reshape(boxes.shape) if boxes.numel() else boxes
            return torch.minimum((b * scale).clamp(min=0), limit)

        tok = self.tokenizer
        out = dict(captions=[], token_ids=[], token_boxes=[], words=[], word_boxes=[], word_points=[])
        pred_boxes, scores, masks, mask_scores = [], [], [], []
        for k, r in enumerate(per_query):
            ids = r["token_ids"]
            tboxes = to_orig(r["token_corners"].float())
            words, t2w = tok.group_words(ids.tolist())
            t2w = torch.tensor(t2w, dtype=torch.long, device=self.device)
            wboxes = torch.zeros(len(words), 4, device=self.device)
            for j in range(len(words)):
                wboxes[j] = tboxes[t2w == j].mean(dim=0)
            out["captions"].append(tok.decode(ids.tolist()))
            out["token_ids"].append(ids.cpu())
            out["token_boxes"].append(tboxes.cpu())
            out["words"].append(words)
            out["word_boxes"].append(wboxes.cpu())
            out["word_points"].append(((wboxes[:, :2] + wboxes[:, 2:]) / 2).cpu())
            if "box" in r:
                pred_boxes.append(to_orig(r["box"].float()))
            elif extra is not None and "pred_boxes" in extra:
                pass  # detections carry their own boxes
            else:
                pred_boxes.append(to_orig(q.boxes[k]) if q is not None and not bool(q.has_points[k]) else limit * torch.tensor([0, 0, 1, 1], device=self.device))
            scores.append(r["score"])
            if "mask_logits" in r:
                masks.append(self._paste_mask(r["mask_logits"], (h, w), (H, W)))
                mask_scores.append(r["mask_score"])
        if extra is not None and "pred_boxes" in extra:
            out["pred_boxes"] = to_orig(extra["pred_boxes"]).cpu()
            out["scores"] = extra["scores"].float().cpu()
        else:
            out["pred_boxes"] = torch.stack(pred_boxes).cpu() if pred_boxes else torch.zeros(0, 4)
            out["scores"] = torch.tensor(scores, dtype=torch.float32)
        if masks:
            out["pred_masks"] = torch.stack(masks).cpu()
            out["mask_scores"] = torch.tensor(mask_scores, dtype=torch.float32)
        return out

    def _paste_mask(self, logits: torch.Tensor, resized_hw, orig_hw) -> torch.Tensor:
        # Official post-processing: crop the valid area, bilinear resize to the original size, threshold at 0.
        h, w = resized_hw
        crop = logits[None, None, :h, :w]
        return F.interpolate(crop, size=tuple(orig_hw), mode="bilinear", align_corners=False)[0, 0] > 0


def _cat_queries(a: Queries, b: Queries) -> Queries:
    """Concatenate two query sets; a field present on one side only is filled with its "absent" value on the
    other (zeros for coordinates, -1 for point labels), and token dimensions are padded to the longer side."""

    def cat(x, y, na, nb, pad=0.0):
        if x is None and y is None:
            return None
        like = x if x is not None else y
        x = x if x is not None else torch.full((na, *like.shape[1:]), pad, dtype=like.dtype, device=like.device)
        y = y if y is not None else torch.full((nb, *like.shape[1:]), pad, dtype=like.dtype, device=like.device)
        if x.dim() >= 2 and x.shape[1] != y.shape[1]:
            return pad_stack([x, y], pad)
        return torch.cat([x, y])

    na, nb = len(a), len(b)
    target = pad_stack([a.target_ids, b.target_ids], 0)
    token_boxes = cat(a.token_boxes, b.token_boxes, na, nb)
    if token_boxes is not None and token_boxes.shape[1] != target.shape[1]:
        token_boxes = pad_stack([token_boxes], 0.0, length=target.shape[1])
    return Queries(
        image_index=torch.cat([a.image_index, b.image_index]),
        image_wh=torch.cat([a.image_wh, b.image_wh]),
        boxes=torch.cat([a.boxes, b.boxes]),
        has_points=torch.cat([a.has_points, b.has_points]),
        points=cat(a.points, b.points, na, nb),
        point_labels=cat(a.point_labels, b.point_labels, na, nb, -1),
        context_ids=pad_stack([a.context_ids, b.context_ids], 0),
        target_ids=target,
        token_boxes=token_boxes,
        ref_boxes=cat(a.ref_boxes, b.ref_boxes, na, nb),
        gt_masks=None if a.gt_masks is None and b.gt_masks is None else (a.gt_masks or [None] * na) + (b.gt_masks or [None] * nb),
        task=a.task + b.task,
    )
