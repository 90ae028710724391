"""Default configuration of pixelllm_d2.

Key names follow detectron2 wherever detectron2 has the concept (MODEL.*, INPUT.*, DATASETS.*, DATALOADER.*,
SOLVER.*, TEST.*, OUTPUT_DIR, SEED); everything specific to PixelLLM lives under MODEL.PIXELLLM. The defaults
describe the paper-scale architecture (SAM ViT-H + EVA02-L + Flan-T5-XL at 384 px, the official release's sizes);
`configs/tiny/` and `configs/shapes/` shrink it for CPU.

Units: image coordinates are pixels unless a key says "normalised"; learning rates are per step; periods and
iteration counts are optimizer steps.
"""
import difflib
import os
import re

from fvcore.common.config import CfgNode as _FvCfgNode


class ConfigError(ValueError):
    """A config file or override that cannot be merged: an unknown key (with the closest valid ones), a value of
    the wrong type, an odd-length override list."""


class CfgNode(_FvCfgNode):
    """fvcore's CfgNode (YAML with `_BASE_` inheritance, `merge_from_list` for `KEY VALUE` overrides) whose
    `merge_from_file` reads YAML with the safe loader only, and whose merge errors are `ConfigError`s (or
    `FileNotFoundError`) of one line naming the key or file."""

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = False) -> None:
        if not os.path.isfile(cfg_filename):
            raise FileNotFoundError(f"config file not found: {cfg_filename}")
        with self._explained(f"in {cfg_filename}"):
            super().merge_from_file(cfg_filename, allow_unsafe=allow_unsafe)

    def merge_from_list(self, cfg_list: list) -> None:
        if len(cfg_list) % 2:
            raise ConfigError(f"config overrides come as KEY VALUE pairs; got an odd number of items: {list(cfg_list)}")
        with self._explained("in the command-line overrides"):
            super().merge_from_list(cfg_list)

    def _explained(self, where: str):
        import contextlib

        @contextlib.contextmanager
        def explain():
            try:
                yield
            except KeyError as e:
                raise ConfigError(self._unknown_key_message(str(e.args[0] if e.args else e), where)) from e
            except (AssertionError, ValueError) as e:
                if isinstance(e, ConfigError):
                    raise
                if "Non-existent" in str(e):  # yacs' merge_from_list reports unknown keys by assertion
                    raise ConfigError(self._unknown_key_message(str(e), where)) from e
                raise ConfigError(f"{' '.join(str(e).split())} ({where})") from e

        return explain()

    def _unknown_key_message(self, text: str, where: str) -> str:
        found = re.search(r"Non-existent (?:config )?key:\s*([\w.]+)", text)
        key = found.group(1) if found else text
        close = difflib.get_close_matches(key, list(_full_keys(self)), n=3, cutoff=0.75)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        return f"unknown config key {key} ({where}){hint}"


def _full_keys(node, prefix: str = ""):
    for k, v in node.items():
        if isinstance(v, _FvCfgNode):
            yield from _full_keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


_C = CfgNode()
# Config format version: 2, as detectron2's, so detectron2 merges these YAMLs unchanged (it "upgrades" a version-1
# file by renaming keys). Nothing reads it otherwise.
_C.VERSION = 2

# ---------------------------------------------------------------------------------------------------------------
# MODEL
# ---------------------------------------------------------------------------------------------------------------
_C.MODEL = CfgNode()
# Name of the meta-architecture in META_ARCH_REGISTRY.
_C.MODEL.META_ARCHITECTURE = "PixelLLM"
# Our own full-model checkpoint (safetensors, or a torch file read with weights_only=True). Loaded after the
# component weights below, so it overrides them. Empty: no checkpoint.
_C.MODEL.WEIGHTS = ""
# "cuda", "cpu", "cuda:1", or "auto" (CUDA when available, else CPU).
_C.MODEL.DEVICE = "auto"
# Mean / std of the SAM image encoder's input, RGB order, 0-255 pixel units (SAM's ImageNet statistics).
_C.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
_C.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
# Predict referring masks with SAM's mask decoder (refseg configs).
_C.MODEL.MASK_ON = False
# Train / run the dense-captioning detector (proposal generator + prompt ROI head).
_C.MODEL.DENSECAP_ON = False

_C.MODEL.BACKBONE = CfgNode()
# Name in BACKBONE_REGISTRY of the image encoder that produces the fused feature map.
_C.MODEL.BACKBONE.NAME = "DualViTBackbone"

_C.MODEL.PROPOSAL_GENERATOR = CfgNode()
# Name in PROPOSAL_GENERATOR_REGISTRY; used only when MODEL.DENSECAP_ON.
_C.MODEL.PROPOSAL_GENERATOR.NAME = "RPN"

# Anchors of the RPN, one list of sizes (pixels of the padded input) per pyramid level.
_C.MODEL.ANCHOR_GENERATOR = CfgNode()
_C.MODEL.ANCHOR_GENERATOR.SIZES = [[16, 24], [32, 48], [64, 96], [128, 192], [256, 384]]
# Aspect ratios (h / w) of the anchors, shared by all levels.
_C.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]

_C.MODEL.RPN = CfgNode()
# Pyramid levels the RPN reads (MODEL.PIXELLLM.PYRAMID.NAMES; paper scale: strides ~7, 14, 28, 57, 114 px).
_C.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
# Number of conv layers in the RPN head before the objectness / delta predictors.
_C.MODEL.RPN.NUM_CONVS = 1
# Anchor-to-GT IoU below which an anchor is negative, and at or above which it is positive.
_C.MODEL.RPN.IOU_THRESHOLDS = [0.3, 0.7]
# Anchors sampled per image for the RPN loss, and the positive fraction among them.
_C.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 256
_C.MODEL.RPN.POSITIVE_FRACTION = 0.5
# Proposals kept per level before NMS and in total after NMS, at train / test time.
_C.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 2000
_C.MODEL.RPN.PRE_NMS_TOPK_TEST = 1000
_C.MODEL.RPN.POST_NMS_TOPK_TRAIN = 1000
_C.MODEL.RPN.POST_NMS_TOPK_TEST = 256
# IoU of the proposal NMS.
_C.MODEL.RPN.NMS_THRESH = 0.7
# Proposals whose objectness probability is below this are dropped (0: keep all).
_C.MODEL.RPN.SCORE_THRESH = 0.0
# Weights of the objectness and box-regression losses.
_C.MODEL.RPN.LOSS_WEIGHT = 1.0
_C.MODEL.RPN.BBOX_REG_LOSS_WEIGHT = 1.0

_C.MODEL.ROI_HEADS = CfgNode()
# Name in ROI_HEADS_REGISTRY of the ROIAlign-free head that turns proposals into box prompts.
_C.MODEL.ROI_HEADS.NAME = "PromptROIHeads"
# Proposal-to-GT IoU at or above which a proposal is foreground (and receives the matched GT's caption).
_C.MODEL.ROI_HEADS.IOU_THRESHOLDS = [0.6]
# Proposals sampled per image to train the box/objectness head, and their foreground fraction.
_C.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 128
_C.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.25
# Of the sampled proposals (foreground first), this many are captioned in training (official: 32 for T5).
_C.MODEL.ROI_HEADS.NUM_TEXT_PROPOSALS = 32
# Append the GT boxes to the proposals in training (GRiT / PixelLLM do).
_C.MODEL.ROI_HEADS.PROPOSAL_APPEND_GT = True
# Test: drop detections below this score, NMS at this IoU, keep at most TEST.DETECTIONS_PER_IMAGE.
_C.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05
_C.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.5
# Width of the MLP that reads a proposal's (mean-pooled) visual tokens and predicts its objectness and box deltas.
_C.MODEL.ROI_HEADS.BOX_HEAD_DIM = 256
# Visual tokens of a proposal that the box head averages: "all", or "query" (only the prompt extractor's query
# tokens, leaving out dense tokens that are the same for every proposal of an image: FUSE sparse+dense with
# DENSE_SOURCE input).
_C.MODEL.ROI_HEADS.BOX_HEAD_TOKENS = "all"
# Box-delta weights (wx, wy, ww, wh) of the refinement head.
_C.MODEL.ROI_HEADS.BBOX_REG_WEIGHTS = [10.0, 10.0, 5.0, 5.0]
# Final detection score: "det" (official: the detection score alone) or "det_x_caption"
# (sqrt(det * exp(mean caption log-prob))).
_C.MODEL.ROI_HEADS.SCORE_MODE = "det"

# ---------------------------------------------------------------------------------------------------------------
# MODEL.PIXELLLM: the parts detectron2 has no names for
# ---------------------------------------------------------------------------------------------------------------
_C.MODEL.PIXELLLM = CfgNode()

# If non-empty, only parameters whose names start with one of these prefixes train; all others are frozen on top
# of the per-component FREEZE keys (official refseg stage: ["mask_head.adapter", "location_head"]).
_C.MODEL.PIXELLLM.TRAINABLE_ONLY = []
# Attention kernels of every part (SAM encoder, TwoWayTransformers, EVA02, T5): "sdpa"
# (torch.nn.functional.scaled_dot_product_attention: fused kernels) or "eager" (each library's matmul + softmax).
_C.MODEL.PIXELLLM.ATTENTION = "sdpa"
# dtype the frozen Linear / Embedding weights are held in (requires_grad False: SAM, the base T5, ...): "float32"
# or "bfloat16" (paper scale: 6.3 GiB instead of 12.5 GiB). Either way the model runs in float32 (each frozen layer
# upcasts its weight for its matmul) or under autocast (SOLVER.AMP / TEST.AMP). The optimizer never holds frozen
# parameters.
_C.MODEL.PIXELLLM.FROZEN_DTYPE = "float32"

# SAM image encoder (segment_anything's ImageEncoderViT), run at INPUT.IMAGE_SIZE.
_C.MODEL.PIXELLLM.SAM = CfgNode()
# "vit_h", "vit_l", "vit_b" (SAM's sizes), "tiny", or "custom" (the keys below).
_C.MODEL.PIXELLLM.SAM.SIZE = "vit_h"
# Used when SIZE is "custom" (and filled in from SIZE otherwise): width, depth, heads, blocks with global attention.
_C.MODEL.PIXELLLM.SAM.EMBED_DIM = 1280
_C.MODEL.PIXELLLM.SAM.DEPTH = 32
_C.MODEL.PIXELLLM.SAM.NUM_HEADS = 16
_C.MODEL.PIXELLLM.SAM.GLOBAL_ATTN_INDEXES = [7, 15, 23, 31]
# Window size (tokens) of the windowed-attention blocks, and the patch size (pixels).
_C.MODEL.PIXELLLM.SAM.WINDOW_SIZE = 14
_C.MODEL.PIXELLLM.SAM.PATCH_SIZE = 16
# Channels of SAM's neck output (also the prompt encoder / mask decoder width).
_C.MODEL.PIXELLLM.SAM.OUT_CHANS = 256
# Official SAM checkpoint (.pth with image_encoder.* / prompt_encoder.* / mask_decoder.*); position embeddings are
# resized from 1024 px to INPUT.IMAGE_SIZE on load. Empty: random init.
_C.MODEL.PIXELLLM.SAM.CHECKPOINT = ""
# Freeze the SAM image encoder (all official configs do).
_C.MODEL.PIXELLLM.SAM.FREEZE = True
# Stochastic depth of the SAM encoder in training, rising linearly over the blocks to this rate (official: 0.5; the
# frozen encoder still runs in training mode). Off in evaluation.
_C.MODEL.PIXELLLM.SAM.DROP_PATH = 0.5

# EVA02 image encoder from timm.
_C.MODEL.PIXELLLM.EVA02 = CfgNode()
_C.MODEL.PIXELLLM.EVA02.ENABLED = True
# timm model name (architecture only; weights come from CHECKPOINT). The official weights are an EVA02-L/14 at
# 224 px (the parameter shapes of the official code: a 16 x 16 position table; the exact checkpoint is not named by
# the release), e.g. timm's eva02_large_patch14_224.mim_m38m; position tables are resized to INPUT.IMAGE_SIZE.
_C.MODEL.PIXELLLM.EVA02.NAME = "eva02_large_patch14_224"
# Rotary position grid: "official" (positions 0 .. n - 1 on the n x n patch grid, as the official code at 384 px) or
# "timm" (timm's, scaled to the 16 x 16 pretraining grid).
_C.MODEL.PIXELLLM.EVA02.ROPE = "official"
# Architecture overrides passed to timm (0 keeps timm's value): width, depth, heads, patch size (pixels).
_C.MODEL.PIXELLLM.EVA02.EMBED_DIM = 0
_C.MODEL.PIXELLLM.EVA02.DEPTH = 0
_C.MODEL.PIXELLLM.EVA02.NUM_HEADS = 0
_C.MODEL.PIXELLLM.EVA02.PATCH_SIZE = 0
# Stochastic depth rate (official: 0.1).
_C.MODEL.PIXELLLM.EVA02.DROP_PATH = 0.1
# Local timm weights (.safetensors / .pth / .bin state dict); position embeddings resized on load. Empty: random.
_C.MODEL.PIXELLLM.EVA02.CHECKPOINT = ""
_C.MODEL.PIXELLLM.EVA02.FREEZE = False
# Recompute each EVA02 block's activations in the backward pass (timm set_grad_checkpointing): less memory, ~1/3
# more compute.
_C.MODEL.PIXELLLM.EVA02.GRAD_CHECKPOINTING = False
# CLIP normalisation of EVA02's input, RGB, 0-255 pixel units.
_C.MODEL.PIXELLLM.EVA02.PIXEL_MEAN = [122.7709383, 116.7460125, 104.09373615]
_C.MODEL.PIXELLLM.EVA02.PIXEL_STD = [68.5005327, 66.6321579, 70.32316305]

# Fusion of the two maps: both resized to the larger grid, then concatenated along channels. "bicubic" / "bilinear"
# are antialiased, which in PyTorch is also the official jax.image.resize's cubic kernel (Keys, a = -0.5).
_C.MODEL.PIXELLLM.FUSION = CfgNode()
_C.MODEL.PIXELLLM.FUSION.INTERPOLATION = "bicubic"

# SAM prompt encoder (boxes and points -> sparse tokens).
_C.MODEL.PIXELLLM.PROMPT_ENCODER = CfgNode()
# Number of sparse prompt tokens per prompt (official: 5 = 2 box corners + 3 padding, or 4 corner points + 1 pad).
_C.MODEL.PIXELLLM.PROMPT_ENCODER.NUM_TOKENS = 5
_C.MODEL.PIXELLLM.PROMPT_ENCODER.FREEZE = True
# Also give each box prompt to the prompt extractor as a dense prompt (the box rasterised and encoded by SAM's mask
# path) instead of SAM's "no mask" embedding (official). The from-scratch CPU configs need it to learn where to look
# within minutes (MODEL_ZOO.md).
_C.MODEL.PIXELLLM.PROMPT_ENCODER.DENSE_BOX = False

# Prompt feature extractor: SAM TwoWayTransformer with learnable query tokens (the ROIAlign-free "ROI head").
_C.MODEL.PIXELLLM.PROMPT_EXTRACTOR = CfgNode()
# Name in PROMPT_EXTRACTOR_REGISTRY.
_C.MODEL.PIXELLLM.PROMPT_EXTRACTOR.NAME = "TwoWayPromptExtractor"
# Official release: 6 layers at width 512; the paper text: 2 layers (configs/variants/prompt_extractor_2layer.yaml).
_C.MODEL.PIXELLLM.PROMPT_EXTRACTOR.DEPTH = 6
_C.MODEL.PIXELLLM.PROMPT_EXTRACTOR.WIDTH = 512
_C.MODEL.PIXELLLM.PROMPT_EXTRACTOR.NUM_HEADS = 8
_C.MODEL.PIXELLLM.PROMPT_EXTRACTOR.MLP_DIM = 2048
# Downsampling of the inner width of the token<->image cross attention.
_C.MODEL.PIXELLLM.PROMPT_EXTRACTOR.ATTN_DOWNSAMPLE = 2
# Recompute each two-way block's activations in the backward pass (the extractor runs once per prompt over the whole
# map: a dense-caption batch of 128 proposals keeps ~10 GB of them at paper scale).
_C.MODEL.PIXELLLM.PROMPT_EXTRACTOR.GRAD_CHECKPOINTING = False
# Learnable query tokens = visual tokens handed to the language model per prompt.
_C.MODEL.PIXELLLM.PROMPT_EXTRACTOR.NUM_QUERIES = 32
# Width of each output visual token (official: 1024, one Linear per token).
_C.MODEL.PIXELLLM.PROMPT_EXTRACTOR.OUT_DIM = 1024
# Tokens handed to the language model (official `prompt_fuse_fn`): "sparse" (the NUM_QUERIES query tokens;
# official configs), "dense" (one token per position of the fused map, with its positional encoding), or
# "sparse+dense".
_C.MODEL.PIXELLLM.PROMPT_EXTRACTOR.FUSE = "sparse"
# Map the dense tokens come from: "transformer" (its image side after the prompt updated it; official) or "input"
# (the projected fused map before the transformer: the same for every prompt of an image).
_C.MODEL.PIXELLLM.PROMPT_EXTRACTOR.DENSE_SOURCE = "transformer"
# Average-pool the dense map to DENSE_GRID x DENSE_GRID tokens first (0 = every map position, as the official
# option). Fewer, coarser tokens are what a language model trained from scratch learns to point into (MODEL_ZOO.md).
_C.MODEL.PIXELLLM.PROMPT_EXTRACTOR.DENSE_GRID = 0

# Language model, name in LANGUAGE_MODEL_REGISTRY: "T5PrefixLM" (HF T5 as a prefix LM: encoder = [visual tokens ;
# context], decoder = text; LoRA) or "GITDecoderLM" (the official BERT family: one post-LN BERT stack over
# [visual tokens ; context ; text] with a prefix-LM mask, trained fully; configs/bert/).
_C.MODEL.PIXELLLM.LANGUAGE = CfgNode()
_C.MODEL.PIXELLLM.LANGUAGE.NAME = "T5PrefixLM"
# Architecture preset: T5PrefixLM "flan-t5-small|base|large|xl|xxl" (when no WEIGHTS folder is given),
# GITDecoderLM "git-base" (768 wide, 6 layers, 12 heads, FFN 3072); or "custom" (keys below).
_C.MODEL.PIXELLLM.LANGUAGE.ARCH = "flan-t5-xl"
# Local HF folder (config.json + weights): a T5 checkpoint (e.g. google/flan-t5-xl; its config overrides ARCH), or
# for GITDecoderLM a BERT checkpoint whose embeddings and first layers initialise the decoder. Nothing is fetched
# from a hub.
_C.MODEL.PIXELLLM.LANGUAGE.WEIGHTS = ""
# Tokenizer: a local folder (spiece.model / tokenizer.json / BERT's vocab.txt), "byt5" (no files), "shapes" (the
# embedded benchmark's word-level SentencePiece model, built by code) or "shapes-wordpiece" (the same words as a BERT
# vocabulary). Empty: the WEIGHTS folder.
_C.MODEL.PIXELLLM.LANGUAGE.TOKENIZER = ""
# "custom" architecture: width, layers per stack (GITDecoderLM: NUM_DECODER_LAYERS), heads, head width (T5), FFN
# width, vocabulary size.
_C.MODEL.PIXELLLM.LANGUAGE.D_MODEL = 512
_C.MODEL.PIXELLLM.LANGUAGE.NUM_LAYERS = 8
_C.MODEL.PIXELLLM.LANGUAGE.NUM_DECODER_LAYERS = 8
_C.MODEL.PIXELLLM.LANGUAGE.NUM_HEADS = 6
_C.MODEL.PIXELLLM.LANGUAGE.D_KV = 64
_C.MODEL.PIXELLLM.LANGUAGE.D_FF = 1024
# 0: the tokenizer's size rounded up to a multiple of 128 (T5's 32128 for its SentencePiece model).
_C.MODEL.PIXELLLM.LANGUAGE.VOCAB_SIZE = 0
_C.MODEL.PIXELLLM.LANGUAGE.DROPOUT = 0.1
# Freeze the base T5 weights (LoRA and the visual projection still train); GITDecoderLM: all but the visual
# projection (official: False, the whole decoder trains).
_C.MODEL.PIXELLLM.LANGUAGE.FREEZE = True
# Recompute each T5 block's (GIT layer's) activations in the backward pass: less memory, more compute.
_C.MODEL.PIXELLLM.LANGUAGE.GRAD_CHECKPOINTING = False
# Maximum context (prompt) tokens and target text tokens (official: 8/40; 32/128 for narratives and joint).
_C.MODEL.PIXELLLM.LANGUAGE.MAX_CONTEXT_LEN = 32
_C.MODEL.PIXELLLM.LANGUAGE.MAX_TEXT_LEN = 40
_C.MODEL.PIXELLLM.LANGUAGE.LORA = CfgNode()
_C.MODEL.PIXELLLM.LANGUAGE.LORA.ENABLED = True
_C.MODEL.PIXELLLM.LANGUAGE.LORA.RANK = 32
_C.MODEL.PIXELLLM.LANGUAGE.LORA.ALPHA = 64
_C.MODEL.PIXELLLM.LANGUAGE.LORA.DROPOUT = 0.0
# Regex over T5 module names: q and v of encoder self-, decoder self- and decoder cross-attention.
_C.MODEL.PIXELLLM.LANGUAGE.LORA.TARGET_MODULES = r".*(SelfAttention|EncDecAttention)\.(q|v)$"
# A saved PEFT adapter folder (adapter_config.json + adapter_model.safetensors) to load. Empty: fresh LoRA.
_C.MODEL.PIXELLLM.LANGUAGE.LORA.ADAPTER = ""

# Location head: every decoder hidden state -> two corner points per token.
_C.MODEL.PIXELLLM.LOCATION_HEAD = CfgNode()
# "MLPLocationHead" (the paper: an MLP on the token) or "MapAttentionLocationHead" (the token attends over the fused
# map's cells and the box is centred on what it attends to; for models trained from scratch, MODEL_ZOO.md).
_C.MODEL.PIXELLLM.LOCATION_HEAD.NAME = "MLPLocationHead"
_C.MODEL.PIXELLLM.LOCATION_HEAD.HIDDEN_DIM = 512
# Linear layers in the MLP (official: 4 = 3 hidden layers + output).
_C.MODEL.PIXELLLM.LOCATION_HEAD.NUM_LAYERS = 4
# MapAttentionLocationHead: width of the attention's queries and keys.
_C.MODEL.PIXELLLM.LOCATION_HEAD.KEY_DIM = 64

# Referring masks: SAM mask decoder prompted with the predicted box, plus a trainable adapter on the box tokens.
_C.MODEL.PIXELLLM.MASK_HEAD = CfgNode()
# Freeze SAM's mask decoder (official). Tiny configs train it: no pretrained SAM exists there.
_C.MODEL.PIXELLLM.MASK_HEAD.FREEZE_DECODER = True
_C.MODEL.PIXELLLM.MASK_HEAD.ADAPTER_DEPTH = 2
_C.MODEL.PIXELLLM.MASK_HEAD.ADAPTER_NUM_HEADS = 8
_C.MODEL.PIXELLLM.MASK_HEAD.ADAPTER_MLP_DIM = 2048
# Training prompt for the mask decoder: "pred" (the predicted referring box, detached) or "gt" (the GT box).
_C.MODEL.PIXELLLM.MASK_HEAD.TRAIN_PROMPT = "pred"
# With TRAIN_PROMPT "gt": Gaussian noise on each corner of the GT box prompt, std = this fraction of the box's width
# (x) or height (y), capped at 20 px (SAM's own box-prompt training noise: 0.1). The mask head then learns to find the
# object from an imprecise box, as the predicted one is at test time. 0: the exact GT box.
_C.MODEL.PIXELLLM.MASK_HEAD.TRAIN_BOX_NOISE = 0.0
# At most this many referring expressions of a batch train the mask head (a random subset each step; 0 = all,
# official). SAM's mask decoder runs once per expression, which makes it the costliest part of a tiny CPU step.
_C.MODEL.PIXELLLM.MASK_HEAD.TRAIN_MAX_QUERIES = 0

# ViTDet simple feature pyramid on the fused map, for the dense-captioning RPN.
_C.MODEL.PIXELLLM.PYRAMID = CfgNode()
# Resampling factors of the levels built from the map, finest first (2: deconvolution, 1: identity, 0.5: max-pool).
_C.MODEL.PIXELLLM.PYRAMID.SCALES = [2.0, 1.0, 0.5]
# Extra coarser levels, each a stride-2 conv on the previous one.
_C.MODEL.PIXELLLM.PYRAMID.NUM_TOP_BLOCKS = 2
# Level names, finest first (MODEL.RPN.IN_FEATURES picks from them).
_C.MODEL.PIXELLLM.PYRAMID.NAMES = ["p2", "p3", "p4", "p5", "p6"]
# Channels of every level.
_C.MODEL.PIXELLLM.PYRAMID.OUT_CHANNELS = 256

# Context prompts handed to the language model per task: the evaluation (and predictor) prompts, official values.
_C.MODEL.PIXELLLM.PROMPTS = CfgNode()
_C.MODEL.PIXELLLM.PROMPTS.TRACE = "A long image caption: "
_C.MODEL.PIXELLLM.PROMPTS.CAPTION = "A photo of "
_C.MODEL.PIXELLLM.PROMPTS.REGION = "an object of "
# Referring: the expression is appended to this prefix.
_C.MODEL.PIXELLLM.PROMPTS.REFER = "where is "
_C.MODEL.PIXELLLM.PROMPTS.DENSECAP = "an object of "
# Training: each query's context prompt is drawn from this pool (per PROMPTS key; empty = the PROMPTS value). The
# official pools: 11 Localized Narratives prompts (their typo included) and 13 COCO caption prompts.
_C.MODEL.PIXELLLM.TRAIN_PROMPTS = CfgNode()
_C.MODEL.PIXELLLM.TRAIN_PROMPTS.TRACE = [
    'A long image caption: ',
    'A long image description: ',
    'Write a long description for the image. ',
    'Write a long description for the photo. ',
    'Provide a long description of what is presented in the photo. ',
    'Describe the content of the image in detail. ',
    'Can you in detail explain what you see in the image? ',
    'Could you use a few sentences to describe what you perceive in the photo? ',
    'Please provide a long depiction of the picture. ',
    'Using language, provide a long account of the image. ',
    'Use a few senetences to illustrate what is happening in the picture. ',
]
# The 13 COCO caption prompts.
_C.MODEL.PIXELLLM.TRAIN_PROMPTS.CAPTION = [
    'A short image caption: ',
    'A short image description: ',
    'A photo of ',
    'An image that shows ',
    'Write a short description for the image. ',
    'Write a description for the photo. ',
    'Provide a description of what is presented in the photo. ',
    'Briefly describe the content of the image. ',
    'Can you briefly explain what you see in the image? ',
    'Could you use a few words to describe what you perceive in the photo? ',
    'Please provide a short depiction of the picture. ',
    'Using language, provide a short account of the image. ',
    'Use a few words to illustrate what is happening in the picture. ',
]
# No pools in the official configs for the others.
_C.MODEL.PIXELLLM.TRAIN_PROMPTS.REGION = []
_C.MODEL.PIXELLLM.TRAIN_PROMPTS.REFER = []
_C.MODEL.PIXELLLM.TRAIN_PROMPTS.DENSECAP = []

# Losses (official weights).
_C.MODEL.PIXELLLM.LOSS = CfgNode()
_C.MODEL.PIXELLLM.LOSS.TEXT_WEIGHT = 1.0
# GRiT-style label smoothing of the text cross-entropy.
_C.MODEL.PIXELLLM.LOSS.LABEL_SMOOTHING = 0.1
# L1 on per-token corner points, in pixels of the resized image (official weight 0.1).
_C.MODEL.PIXELLLM.LOSS.POINT_WEIGHT = 0.1
# Region and dense captions: train every token's location towards the region's (matched) GT box, with
# POINT_WEIGHT. Official: no (the densecap configs have no location head; the joint recipe masks the point loss of
# its detection / caption sources, and no official source trains region captions); the shapes config does.
_C.MODEL.PIXELLLM.LOSS.REGION_POINTS = False
# Referring box: corner L1 (pixels) at the last word, and optional GIoU.
_C.MODEL.PIXELLLM.LOSS.REF_BOX_WEIGHT = 0.1
_C.MODEL.PIXELLLM.LOSS.REF_GIOU_WEIGHT = 0.0
# MapAttentionLocationHead: cross-entropy of each located token's attention over the map cells against the cells
# inside its target box (every token with a point target, and the referring box), times this weight.
_C.MODEL.PIXELLLM.LOSS.CELL_WEIGHT = 0.0
# Mask: sigmoid focal x20 + dice x1 + predicted-IoU MSE x1 (SAM's recipe, official weights).
_C.MODEL.PIXELLLM.LOSS.MASK_FOCAL_WEIGHT = 20.0
# Alpha of the mask focal loss (positives weighted alpha, negatives 1 - alpha). Official: 0.5 (scenic's
# focal_sigmoid_cross_entropy default, which the official mask loss uses); SAM / torchvision: 0.25.
_C.MODEL.PIXELLLM.LOSS.MASK_FOCAL_ALPHA = 0.5
_C.MODEL.PIXELLLM.LOSS.MASK_DICE_WEIGHT = 1.0
_C.MODEL.PIXELLLM.LOSS.MASK_IOU_WEIGHT = 1.0
# Dense-captioning detector losses (RPN + ROI box head) are multiplied by this.
_C.MODEL.PIXELLLM.LOSS.DET_WEIGHT = 1.0

# Decoding at inference.
_C.MODEL.PIXELLLM.DECODE = CfgNode()
# "greedy" or "beam".
_C.MODEL.PIXELLLM.DECODE.METHOD = "greedy"
_C.MODEL.PIXELLLM.DECODE.NUM_BEAMS = 4
# Length penalty exponent alpha in ((5 + L) / 6) ** alpha (official: 0.6).
_C.MODEL.PIXELLLM.DECODE.LENGTH_PENALTY = 0.6
# Maximum generated tokens (EOS included).
_C.MODEL.PIXELLLM.DECODE.MAX_LEN = 40
# GRiT trick in greedy decoding: the previous token cannot be emitted again immediately.
_C.MODEL.PIXELLLM.DECODE.NO_IMMEDIATE_REPEAT = True

# ---------------------------------------------------------------------------------------------------------------
# INPUT
# ---------------------------------------------------------------------------------------------------------------
_C.INPUT = CfgNode()
# Longest image side after resizing, in pixels; images are zero-padded to IMAGE_SIZE x IMAGE_SIZE (paper: 384).
_C.INPUT.IMAGE_SIZE = 384
# Channel order of numpy images given to the predictor ("RGB", or "BGR" as OpenCV decodes them). Files are decoded
# to RGB whatever their format; the model always receives RGB.
_C.INPUT.FORMAT = "RGB"
# Per task: train-time scale jitter range (multiplier of IMAGE_SIZE, then a random IMAGE_SIZE crop), horizontal flip
# (applied only where the text cannot name left/right), and the evaluation geometry: "longest" (the longest side to
# IMAGE_SIZE, padded; official for every task but COCO captioning) or "shorter_crop" (the shorter side to IMAGE_SIZE,
# then the central IMAGE_SIZE square: the official COCO caption evaluation; the predictor always shows the model
# the whole image).
_C.INPUT.CAPTION = CfgNode({"SCALE_RANGE": [0.75, 1.25], "HFLIP": False, "TEST_RESIZE": "shorter_crop"})
_C.INPUT.TRACE = CfgNode({"SCALE_RANGE": [1.0, 1.0], "HFLIP": False, "TEST_RESIZE": "longest"})
_C.INPUT.REGION = CfgNode({"SCALE_RANGE": [0.1, 2.0], "HFLIP": True, "TEST_RESIZE": "longest"})
_C.INPUT.REFER = CfgNode({"SCALE_RANGE": [0.75, 1.25], "HFLIP": False, "TEST_RESIZE": "longest"})
_C.INPUT.DENSECAP = CfgNode({"SCALE_RANGE": [0.1, 2.0], "HFLIP": True, "TEST_RESIZE": "longest"})
# At most this many queries (referring expressions / regions) per image in training (official: 16 expressions,
# 100 VG regions).
_C.INPUT.MAX_QUERIES_TRAIN = 16
# Densecap: at most this many GT regions per training image (official: 100 for VG; 16 in the joint recipe), which
# are also the detector's only ground truth.
_C.INPUT.MAX_GT_REGIONS_TRAIN = 100
# Which regions when an image has more: "first" (in the annotation file's order, after the crop: official) or
# "random" (a random subset per sample).
_C.INPUT.GT_REGIONS_SELECTION = "first"
# Localized Narratives trace alignment: "official" (order-proportional over the utterances, spec §2.2) or
# "timestamp" (each word takes the utterance whose text holds it; see pixelllm_d2/data/trace_alignment.py).
_C.INPUT.TRACE_ALIGNMENT = "official"

# ---------------------------------------------------------------------------------------------------------------
# DATASETS / DATALOADER
# ---------------------------------------------------------------------------------------------------------------
_C.DATASETS = CfgNode()
# Names registered in DatasetCatalog.
_C.DATASETS.TRAIN = ()
_C.DATASETS.TEST = ()
# Sampling weight of each training dataset (same length as TRAIN; empty = equal weights). Each batch is drawn
# from one dataset (official batch_before_merge) unless DATALOADER.MIX_TASKS_IN_BATCH.
_C.DATASETS.TRAIN_RATIOS = ()
# Held-out datasets whose images are never trained on: a training dataset of the same task as one of them loses
# every image (by image id) that appears in it. The paper's referring configs list every RefCOCO / RefCOCO+ /
# RefCOCOg val and test split, as the official "img_safe" data does (RefCOCO's val / test images are in RefCOCOg's
# and RefCOCO+'s train splits and the reverse).
_C.DATASETS.TRAIN_HOLDOUT = ()

_C.DATALOADER = CfgNode()
_C.DATALOADER.NUM_WORKERS = 4
# Drop training images without any usable annotation.
_C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True
# Allow one batch to hold images of several datasets/tasks (per-sample task masks weigh the losses).
_C.DATALOADER.MIX_TASKS_IN_BATCH = False

# ---------------------------------------------------------------------------------------------------------------
# SOLVER
# ---------------------------------------------------------------------------------------------------------------
_C.SOLVER = CfgNode()
_C.SOLVER.OPTIMIZER = "AdamW"
# How AdamW updates the parameters: "fused" (one kernel over all of them; on CPU this removes ~10 small ops per
# parameter per step), "foreach" (grouped ops) or "for-loop" (torch's per-parameter reference).
_C.SOLVER.OPTIMIZER_IMPL = "fused"
# Images per batch over all processes.
_C.SOLVER.IMS_PER_BATCH = 64
_C.SOLVER.BASE_LR = 1e-4
_C.SOLVER.MAX_ITER = 40000
# "WarmupCosineLR" (linear warmup then cosine to 0, the official schedule) or "WarmupConstantLR".
_C.SOLVER.LR_SCHEDULER_NAME = "WarmupCosineLR"
_C.SOLVER.WARMUP_ITERS = 1000
# LR multiplier at iteration 0 of the linear warmup.
_C.SOLVER.WARMUP_FACTOR = 0.0
_C.SOLVER.BETAS = [0.9, 0.999]
_C.SOLVER.EPS = 1e-8
_C.SOLVER.WEIGHT_DECAY = 0.05
# Weight decay of normalization scales and of biases (official: none).
_C.SOLVER.WEIGHT_DECAY_NORM = 0.0
_C.SOLVER.WEIGHT_DECAY_BIAS = 0.0
# Layer-wise LR decay of EVA02 blocks (0.8 in the official densecap / joint recipes; 1.0 disables).
_C.SOLVER.EVA02_LAYER_DECAY = 1.0
# Extra LR multipliers: list of [regex over parameter names, multiplier] (official: mask adapter x10).
_C.SOLVER.LR_MULTIPLIERS = []
# Save a checkpoint every this many iterations (0: only the final one).
_C.SOLVER.CHECKPOINT_PERIOD = 5000
# Also write the model weights alone as OUTPUT_DIR/model_final.safetensors after the last iteration (beside the
# full training checkpoint model_final.pth).
_C.SOLVER.FINAL_SAFETENSORS = True
# Write metrics (console, metrics.json, TensorBoard) every this many iterations (and after the last one).
_C.SOLVER.LOG_PERIOD = 20
_C.SOLVER.CLIP_GRADIENTS = CfgNode()
# The official recipes do not clip.
_C.SOLVER.CLIP_GRADIENTS.ENABLED = False
# "norm" (total norm of all trainable gradients) or "value".
_C.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
_C.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
_C.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
_C.SOLVER.AMP = CfgNode()
_C.SOLVER.AMP.ENABLED = False
# "bfloat16" (used where the device supports it) or "float16".
_C.SOLVER.AMP.DTYPE = "bfloat16"
# Shard parameters / gradients / optimizer state across processes (paper-scale multi-GPU training).
_C.SOLVER.FSDP = False
# With FSDP: submodules whose class name fully matches this regex are sharded as units (one all-gather each):
# SAM / EVA02 / T5 blocks and the prompt extractor's attention blocks.
_C.SOLVER.FSDP_SHARD_MODULES = r"Block|EvaBlock|T5Block|(Checkpointed)?TwoWayAttentionBlock"
# DDP: allow parameters without a gradient in a step (heads of tasks absent from the batch). False is faster
# when every parameter is used in every step.
_C.SOLVER.DDP_FIND_UNUSED_PARAMETERS = True

# ---------------------------------------------------------------------------------------------------------------
# TEST
# ---------------------------------------------------------------------------------------------------------------
_C.TEST = CfgNode()
# Evaluate DATASETS.TEST every this many iterations (0: only at the end).
_C.TEST.EVAL_PERIOD = 0
# Dense captioning: at most this many detections per image (official: 100).
_C.TEST.DETECTIONS_PER_IMAGE = 100
# Images per inference batch per process.
_C.TEST.IMS_PER_BATCH = 8
# Skip METEOR (needs Java) in evaluation; only when asked for.
_C.TEST.SKIP_METEOR = False
# Localized Narratives trace metric (point_l1): "official" (the official PointEvaluator: one narrative per image,
# chosen by a draw seeded with the image id; the raw predicted corner points; an image without a located token
# counts 0) or "all_narratives" (every narrative of an image; the predicted corners ordered and clipped to the
# image, as drawn; images without a located token left out).
_C.TEST.TRACE_PROTOCOL = "official"
# Inference under torch.autocast (outputs returned in float32); needed with MODEL.PIXELLLM.FROZEN_DTYPE bfloat16.
_C.TEST.AMP = CfgNode()
_C.TEST.AMP.ENABLED = False
_C.TEST.AMP.DTYPE = "bfloat16"

# ---------------------------------------------------------------------------------------------------------------
# Misc
# ---------------------------------------------------------------------------------------------------------------
_C.OUTPUT_DIR = "./output"
# Seed of Python, NumPy and torch RNGs; negative: a random seed (logged).
_C.SEED = -1
# Deterministic kernels (torch.use_deterministic_algorithms); for exact-resume checks.
_C.DETERMINISTIC = False
_C.CUDNN_BENCHMARK = False
