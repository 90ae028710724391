"""PixelLLM: one model for per-word-grounded captioning, region captioning, referring localisation /
segmentation and dense captioning. It orchestrates only: images -> backbone -> prompts -> language model -> heads
(each computing and weighting its own losses) -> post-processing. What each task is comes from
`pixelllm_d2.tasks`. Inputs and outputs: docs/DESIGN.md §2 and §3."""
import logging
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...config import configurable
from ...structures import Queries, points_to_boxes
from ...tasks import get_task
from ...text import build_tokenizer
from ..build import BACKBONE_REGISTRY, LANGUAGE_MODEL_REGISTRY, LOCATION_HEAD_REGISTRY, META_ARCH_REGISTRY, PROMPT_EXTRACTOR_REGISTRY
from ..language.decoding import generate
from ..mask.mask_head import SAMMaskHead
from ..prompt.prompt_encoder import SAMPromptEncoder
from ..prompt.visual_tokens import encode_boxes, encode_prompts
from ..attention import set_attention
from ..precision import autocast_in_eval, cast_frozen, check_frozen_dtype, parse_dtype
from ..weights import load_eva02_checkpoint, load_sam_checkpoint
from .densecap import densecap_inference, densecap_losses
from .inputs import ImageFeatures, gather_queries, pad_images
from .options import check_decode_options, check_prompts, vocab_size_of
from .postprocess import postprocess

__all__ = ["PixelLLM"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class PixelLLM(nn.Module):
    """
    Args:
        backbone: image encoder returning {"fused": (B, C, H, W), "sam": (B, 256, Hs, Ws)} (DualViTBackbone).
        prompt_encoder: SAMPromptEncoder. prompt_extractor: TwoWayPromptExtractor (visual tokens per prompt).
        language: a `PrefixLM` (T5PrefixLM, GITDecoderLM; owns the text loss).
        location_head: a `LocationHead` (MLPLocationHead, MapAttentionLocationHead; owns the location losses).
        mask_head: SAMMaskHead (owns the mask losses) or None.
        proposal_generator, roi_heads: the dense-captioning detector (own their losses), or None.
        tokenizer: tokenizer name / folder (see pixelllm_d2.text); built on first use.
        image_size: side of the padded square input.
        prompts: the context prompt of every MODEL.PIXELLLM.PROMPTS key a task names (`Task.prompt`).
        max_context_len, max_text_len: token limits.
        decode: {"method": "greedy"|"beam", "num_beams", "length_penalty", "max_len", "no_immediate_repeat"}.
        sam_checkpoint, eva02_checkpoint: component weights loaded by `load_component_weights()`.
        trainable_only: if given, only parameters whose names start with one of these prefixes train.
        attention: "sdpa" or "eager" for every attention of the model (`modeling.attention.set_attention`).
        frozen_dtype: dtype of the frozen parameters (None: leave them float32); needs autocast (`precision`).
        test_amp_dtype: inference (eval mode) runs under autocast to this dtype; None: no autocast.
    """

    @configurable
    def __init__(self, *, backbone: nn.Module, prompt_encoder: SAMPromptEncoder, prompt_extractor: nn.Module,
                 language: nn.Module, location_head: nn.Module, mask_head: Optional[SAMMaskHead] = None,
                 proposal_generator: Optional[nn.Module] = None, roi_heads: Optional[nn.Module] = None,
                 tokenizer: str = "", image_size: int = 384, prompts: Dict[str, str] = None, max_context_len: int = 32,
                 max_text_len: int = 40, decode: Dict = None, sam_checkpoint: str = "", eva02_checkpoint: str = "",
                 trainable_only: Tuple[str, ...] = (), attention: str = "sdpa", frozen_dtype: Optional[torch.dtype] = None,
                 test_amp_dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.backbone, self.prompt_encoder, self.prompt_extractor = backbone, prompt_encoder, prompt_extractor
        self.language, self.location_head, self.mask_head = language, location_head, mask_head
        self.proposal_generator, self.roi_heads = proposal_generator, roi_heads
        self.tokenizer_name = tokenizer
        self.image_size = image_size
        self.prompts = check_prompts(prompts or {})
        self.max_context_len, self.max_text_len = max_context_len, max_text_len
        self.decode_cfg = check_decode_options(decode or {}, defaults=True)
        self.sam_checkpoint, self.eva02_checkpoint = sam_checkpoint, eva02_checkpoint
        self._tokenizer = None
        self._context_cache: Dict[str, torch.Tensor] = {}
        if trainable_only:
            for name, p in self.named_parameters():
                if not name.startswith(tuple(trainable_only)):
                    p.requires_grad_(False)
        set_attention(self, attention)
        self.frozen_dtype, self.test_amp_dtype = frozen_dtype, test_amp_dtype
        cast_frozen(self, frozen_dtype)

    @classmethod
    def from_config(cls, cfg):
        p = cfg.MODEL.PIXELLLM
        # The construction order fixes which random numbers each part's initialisation draws: keep it.
        backbone = BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME)(cfg)
        extractor = PROMPT_EXTRACTOR_REGISTRY.get(p.PROMPT_EXTRACTOR.NAME)(cfg, in_channels=backbone.out_channels)
        language = LANGUAGE_MODEL_REGISTRY.get(p.LANGUAGE.NAME)(cfg, visual_dim=p.PROMPT_EXTRACTOR.OUT_DIM, vocab_size=vocab_size_of(cfg))
        mask_head = SAMMaskHead(cfg, visual_dim=p.PROMPT_EXTRACTOR.OUT_DIM, text_dim=language.d_model) if cfg.MODEL.MASK_ON else None
        proposal_generator = roi_heads = None
        if cfg.MODEL.DENSECAP_ON:
            from ..proposal import build_proposal_generator
            from ..roi_heads import build_roi_heads

            proposal_generator, roi_heads = build_proposal_generator(cfg, backbone.out_channels), build_roi_heads(cfg)
        prompt_encoder = SAMPromptEncoder(cfg)
        location_head = LOCATION_HEAD_REGISTRY.get(p.LOCATION_HEAD.NAME)(cfg, in_dim=language.d_model, map_dim=backbone.out_channels)
        return dict(
            backbone=backbone, prompt_encoder=prompt_encoder, prompt_extractor=extractor, language=language,
            location_head=location_head, mask_head=mask_head, proposal_generator=proposal_generator, roi_heads=roi_heads,
            tokenizer=p.LANGUAGE.TOKENIZER or p.LANGUAGE.WEIGHTS,
            image_size=cfg.INPUT.IMAGE_SIZE,
            prompts=dict(p.PROMPTS),
            max_context_len=p.LANGUAGE.MAX_CONTEXT_LEN,
            max_text_len=p.LANGUAGE.MAX_TEXT_LEN,
            decode={k.lower(): v for k, v in p.DECODE.items()},
            sam_checkpoint=p.SAM.CHECKPOINT,
            eva02_checkpoint=p.EVA02.CHECKPOINT if p.EVA02.ENABLED else "",
            trainable_only=tuple(p.TRAINABLE_ONLY),
            attention=p.ATTENTION,
            frozen_dtype=check_frozen_dtype(cfg),
            test_amp_dtype=parse_dtype(cfg.TEST.AMP.DTYPE, "TEST.AMP.DTYPE") if cfg.TEST.AMP.ENABLED else None,
        )

    # ------------------------------------------------------------------------------------------------ set-up
    @property
    def device(self) -> torch.device:
        return next(self.location_head.parameters()).device

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            tok = build_tokenizer(self.tokenizer_name)
            if len(tok) > self.language.vocab_size:
                raise ValueError(f"tokenizer {self.tokenizer_name!r} has {len(tok)} ids but the language model's "
                                 f"vocabulary is {self.language.vocab_size}")
            self._tokenizer = tok
        return self._tokenizer

    def load_component_weights(self) -> None:
        """Load the SAM / EVA02 / T5 / LoRA weights named in the config (each optional)."""
        if self.sam_checkpoint:
            load_sam_checkpoint(self.sam_checkpoint, image_encoder=self.backbone.sam, prompt_encoder=self.prompt_encoder.sam,
                                mask_decoder=self.mask_head.decoder if self.mask_head is not None else None)
        if self.eva02_checkpoint:
            load_eva02_checkpoint(self.eva02_checkpoint, self.backbone.eva02.model)
        self.language.load_weights()
        cast_frozen(self, self.frozen_dtype)  # a loaded untied T5 head arrives as a new float32 parameter

    def context_ids(self, task: str, n: int) -> torch.Tensor:
        """(n, C) the tokenised context prompt of `task` (`Task.prompt`), repeated."""
        if task not in self._context_cache:
            ids = self.tokenizer.encode(self.prompts[get_task(task).prompt], self.max_context_len)
            self._context_cache[task] = torch.tensor(ids, dtype=torch.long)
        return self._context_cache[task].to(self.device).expand(n, -1)

    # ------------------------------------------------------------------------------------------- public API
    @autocast_in_eval
    def encode_images(self, batched_inputs: List[Dict]) -> ImageFeatures:
        """Pad the inputs' images and run the backbone once: what every prompt on these images reuses."""
        images, sizes = pad_images(batched_inputs, self.image_size, self.device)
        return ImageFeatures(sizes=sizes, **self.backbone(images, sizes))

    def encode_boxes(self, features: ImageFeatures, image_index: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Visual tokens (K, V, out_dim) of K box prompts (padded-input pixels) on the images `image_index`."""
        return encode_boxes(self.prompt_encoder, self.prompt_extractor, features.fused, image_index, boxes)

    def queries(self, batched_inputs: List[Dict], require_targets: bool = False) -> Queries:
        """The validated queries of the inputs (docs/DESIGN.md §2) on the model's device."""
        tok = self.tokenizer
        return gather_queries(batched_inputs, self.device, tok.pad_id, tok.eos_id, require_targets)

    @autocast_in_eval
    def generate(self, features: ImageFeatures, q: Queries, decode: Optional[Dict] = None,
                 visual: Optional[torch.Tensor] = None) -> List[Dict]:
        """Caption the queries' prompts (KV-cached decoding; the location of every generated token is read from
        the decoder state it is the input of). `decode` overrides the configured decoding options.
        Returns per query {"token_ids" (T,), "token_corners" (T, 4) resized pixels, "score"}."""
        if visual is None:
            visual = encode_prompts(self.prompt_encoder, self.prompt_extractor, features.fused, q)
        enc_h, enc_m = self.language.encode(visual, q.context_ids, self.tokenizer.pad_id)
        dec = check_decode_options(dict(self.decode_cfg, **(decode or {})))
        return self.decode_captions(enc_h, enc_m, q.image_wh, dec, image_map=features.fused, image_index=q.image_index)

    @autocast_in_eval
    def ground(self, features: ImageFeatures, q: Queries) -> List[Dict]:
        """Read the queries' given text (`target_ids`) teacher-forced: every token's location, the box at the last
        word (and its mask) for tasks answered there. Returns per query {"token_ids", "token_corners", "score" 1.0,
        and "box" (4,) [, "mask_logits" (S, S), "mask_score"]}."""
        visual = encode_prompts(self.prompt_encoder, self.prompt_extractor, features.fused, q)
        q = q.trimmed()
        tok = self.tokenizer
        enc_h, enc_m = self.language.encode(visual, q.context_ids, tok.pad_id)
        dec_in = self.decoder_inputs(q.target_ids)
        hidden, _, _ = self.language.decode(enc_h, enc_m, dec_in)
        corners = self.location_head.locate(hidden, q.image_wh, features.fused, q.image_index)
        lengths = ((q.target_ids != tok.eos_id) & (q.target_ids != tok.pad_id)).sum(dim=1)
        outs = [dict(token_ids=q.target_ids[k, :n], token_corners=corners[k, 1 : n + 1], score=1.0)
                for k, n in enumerate(lengths.tolist())]
        boxed = q.flag("box_at_last_word").nonzero(as_tuple=True)[0]
        if len(boxed):
            boxes = points_to_boxes(corners[boxed, lengths[boxed]].unflatten(-1, (2, 2)))  # next token: EOS
            for j, k in enumerate(boxed.tolist()):
                outs[k]["box"] = boxes[j]
            if self.mask_head is not None:
                text_mask = self._text_mask(dec_in[boxed])
                logits, iou = self.mask_head.predict(features.sam, q.image_index[boxed], boxes, self.prompt_encoder,
                                                     visual[boxed], hidden[boxed], text_mask)
                for j, k in enumerate(boxed.tolist()):
                    outs[k]["mask_logits"], outs[k]["mask_score"] = logits[j], float(iou[j])
        return outs

    def decode_captions(self, enc_h, enc_m, image_wh, dec: Dict, use_cache: bool = True, image_map=None, image_index=None) -> List[Dict]:
        """Decode every row of the encoder output (`generate` without the prompts); `use_cache=False` recomputes the
        prefix at every step (the official scheme). Returns per row {token_ids, token_corners, score}."""

        def feature_fn(h, qidx):
            idx = image_index[qidx] if image_index is not None else None
            return self.location_head.locate(h[:, None], image_wh[qidx], image_map, idx)[:, 0]

        tok = self.tokenizer
        gen = generate(self.language, enc_h, enc_m, feature_fn, max_len=dec["max_len"],
                       num_beams=dec["num_beams"] if dec["method"] == "beam" else 1, length_penalty=dec["length_penalty"],
                       no_immediate_repeat=dec["no_immediate_repeat"], use_cache=use_cache, pad_id=tok.pad_id,
                       eos_id=tok.eos_id, bos_id=tok.bos_id, vocab_limit=len(tok))
        outs = []
        for k in range(gen.tokens.shape[0]):
            ids = gen.tokens[k]
            n = int(((ids != tok.eos_id) & (ids != tok.pad_id)).cumprod(0).sum())
            outs.append(dict(token_ids=ids[:n], token_corners=gen.features[k, :n], score=float(gen.scores[k])))
        return outs

    # ---------------------------------------------------------------------------------------------- forward
    def forward(self, batched_inputs: List[Dict]):
        """Training: dict of weighted scalar losses. Inference (eval mode): list of per-image outputs (DESIGN.md §3)."""
        if not self.training:
            return self.inference(batched_inputs)
        features = self.encode_images(batched_inputs)
        image_tasks = [get_task(x["task"]) for x in batched_inputs]

        def share(predicate) -> float:  # the official loss scaling: the batch mean of the task's flag
            return sum(bool(predicate(t)) for t in image_tasks) / len(image_tasks)

        q = self.queries(batched_inputs, require_targets=True)
        visual = encode_prompts(self.prompt_encoder, self.prompt_extractor, features.fused, q) if len(q) else None
        losses: Dict[str, torch.Tensor] = {}
        dense = [i for i, t in enumerate(image_tasks) if t.queries == "detector"]
        if dense:
            det_losses, det_q, det_visual = densecap_losses(self, features, batched_inputs, dense, share(lambda t: t.queries == "detector"))
            losses.update(det_losses)
            if len(det_q):
                q = det_q if len(q) == 0 else Queries.cat([q, det_q])
                visual = det_visual if visual is None else torch.cat([visual, det_visual])
        if len(q) == 0:
            losses.setdefault("loss_text", sum(p.sum() * 0.0 for p in self.parameters() if p.requires_grad))
            return losses
        q = q.trimmed()
        tok = self.tokenizer
        enc_h, enc_m = self.language.encode(visual, q.context_ids, tok.pad_id)
        dec_in = self.decoder_inputs(q.target_ids)
        hidden, logits, _ = self.language.decode(enc_h, enc_m, dec_in)
        losses.update(self.language.losses(logits, q.target_ids, q.flag("text_loss"), share(lambda t: t.text_loss), tok.pad_id, tok.eos_id))
        corners, cell_logits = self.location_head.locate(hidden, q.image_wh, features.fused, q.image_index, return_logits=True)
        losses.update(self.location_head.losses(corners, cell_logits, q, tok.eos_id, tuple(features.fused.shape[-2:]), share))
        boxed = q.flag("box_at_last_word").nonzero(as_tuple=True)[0]
        if self.mask_head is not None and q.gt_masks is not None and len(boxed):
            rows = torch.arange(len(q), device=corners.device)
            pred = corners[rows, q.last_word(tok.eos_id)][boxed]
            losses.update(self.mask_head.losses(
                features.sam, q.image_index[boxed], pred, q.ref_boxes[boxed], q.image_wh[boxed],
                [q.gt_masks[k] for k in boxed.tolist()], self.prompt_encoder, visual[boxed], hidden[boxed],
                self._text_mask(dec_in[boxed]), share(lambda t: t.box_at_last_word),
            ))
        return losses

    def decoder_inputs(self, target_ids: torch.Tensor) -> torch.Tensor:
        """(Q, T) teacher-forcing inputs of (Q, T) targets: BOS, then the targets shifted right by one."""
        return F.pad(target_ids[:, :-1], (1, 0), value=self.tokenizer.bos_id)

    def _text_mask(self, dec_in: torch.Tensor) -> torch.Tensor:
        # (Q, T) True at the decoder inputs that are text (BOS included), False at padding
        mask = torch.ones_like(dec_in, dtype=torch.bool)
        mask[:, 1:] = dec_in[:, 1:] != self.tokenizer.pad_id
        return mask

    # ------------------------------------------------------------------------------------------- inference
    @autocast_in_eval
    @torch.no_grad()
    def inference(self, batched_inputs: List[Dict], decode: Optional[Dict] = None,
                  features: Optional[ImageFeatures] = None) -> List[Dict]:
        """Per-image outputs (DESIGN.md §3). `decode` overrides the decoding options for this call; `features`
        (from `encode_images` of the same inputs) skips the backbone."""
        if decode:
            check_decode_options(dict(self.decode_cfg, **decode))
        features = features if features is not None else self.encode_images(batched_inputs)
        q = self.queries(batched_inputs)
        per_query: List[Optional[Dict]] = [None] * len(q)
        given = q.flag("text_at_test", "given")
        if given.any() and (q.target_ids is None or (q.target_ids[given, 0] == self.tokenizer.pad_id).any()):
            bad = sorted({q.task[k] for k in given.nonzero(as_tuple=True)[0].tolist()})
            raise ValueError(f"inputs of task(s) {bad} need their text in 'target_ids' (a referring expression, a "
                             f"narrative to ground); none was given")
        for rows, run in ((given, self.ground), (~given, lambda f, sub: self.generate(f, sub, decode))):
            idx = rows.nonzero(as_tuple=True)[0]
            if len(idx):
                for k, out in zip(idx.tolist(), run(features, q.select(idx))):
                    per_query[k] = out
        outputs = []
        for i, x in enumerate(batched_inputs):
            ks = (q.image_index == i).nonzero(as_tuple=True)[0]
            outputs.append(dict(task=x["task"], **postprocess(x, [per_query[k] for k in ks.tolist()], q.select(ks), self.tokenizer)))
        dense = [i for i, x in enumerate(batched_inputs) if get_task(x["task"]).queries == "detector"]
        if dense:
            for i, det in zip(dense, densecap_inference(self, features, batched_inputs, dense, dict(self.decode_cfg, **(decode or {})))):
                outputs[i] = dict(task=batched_inputs[i]["task"], **postprocess(batched_inputs[i], det["results"], None, self.tokenizer, det))
        return outputs

