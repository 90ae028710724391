"""Tiny models and hand-made batches in the model-input format of docs/DESIGN.md §2."""
import os

import torch

from pixelllm_d2.config import get_cfg
from pixelllm_d2.modeling import build_model
from pixelllm_d2.text import build_tokenizer

REPO_CFG_DIR = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "configs"))
TINY_CFG = os.path.join(REPO_CFG_DIR, "tiny", "pixelllm_tiny.yaml")
TINY_BERT_CFG = os.path.join(REPO_CFG_DIR, "tiny", "pixelllm_tiny_bert.yaml")
# the shapes config's location head: attention over the fused map, trained with the cell cross-entropy
ATTENTION_HEAD = ("MODEL.PIXELLLM.LOCATION_HEAD.NAME", "MapAttentionLocationHead", "MODEL.PIXELLLM.LOSS.CELL_WEIGHT", 1.0)


def tiny_cfg(*opts, config: str = TINY_CFG):
    cfg = get_cfg()
    cfg.merge_from_file(config)
    cfg.merge_from_list(list(opts))
    return cfg


def tiny_model(*opts, seed: int = 0, config: str = TINY_CFG):
    torch.manual_seed(seed)
    return build_model(tiny_cfg(*opts, config=config))


def encode(text: str, length: int = 12, tokenizer: str = "shapes") -> torch.Tensor:
    tok = build_tokenizer(tokenizer)
    ids = tok.encode(text, length)
    return torch.tensor(ids + [tok.pad_id] * (length - len(ids)))


def make_batch(seed: int = 0, image_hw=(48, 64), orig_hw=(96, 128), tokenizer: str = "shapes"):
    """One image per task (trace, refer with masks, region, caption) on the same random 64 px picture, its texts
    tokenised by `tokenizer`."""
    g = torch.Generator().manual_seed(seed)

    def enc(text):
        return encode(text, 12, tokenizer)

    h, w = image_hw
    img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
    whole = torch.tensor([[0.0, 0.0, w, h]])
    return [
        dict(
            image=img, height=orig_hw[0], width=orig_hw[1], task="trace", prompt_boxes=whole,
            context_ids=enc("A long image caption:")[None],
            target_ids=enc("a small red circle and a blue square")[None],
            token_boxes=torch.rand(1, 12, 4, generator=g) * 40,
        ),
        dict(
            image=img, height=orig_hw[0], width=orig_hw[1], task="refer", prompt_boxes=whole.repeat(2, 1),
            context_ids=torch.stack([enc("where is the red circle"), enc("where is the blue square")]),
            target_ids=torch.stack([enc("the red circle"), enc("the blue square")]),
            ref_boxes=torch.tensor([[1.0, 2.0, 20.0, 30.0], [30.0, 10.0, 60.0, 40.0]]),
            gt_masks=torch.rand(2, h, w, generator=g) > 0.5,
        ),
        dict(
            image=img, height=h, width=w, task="region", prompt_boxes=torch.tensor([[5.0, 5.0, 30.0, 30.0]]),
            context_ids=enc("an object of")[None], target_ids=enc("small red circle")[None],
        ),
        dict(
            image=img, height=h, width=w, task="caption", prompt_boxes=whole,
            context_ids=enc("A short image caption:")[None], target_ids=enc("a red circle")[None],
        ),
    ]

