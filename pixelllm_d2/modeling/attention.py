"""One attention switch for every part of the model: `torch.nn.functional.scaled_dot_product_attention` (fused
kernels: flash / memory-efficient on GPU, the flash CPU kernel on CPU) or each library's eager matmul-softmax.

segment_anything computes attention eagerly; `SDPAImageAttention` (the SAM ViT's windowed / global attention, its
decomposed relative positions passed as an additive float mask) and `SDPATwoWayAttention` (the TwoWayTransformer of
the prompt extractor and the mask decoder) are the same modules with the same parameters and an SDPA forward. timm's
EVA02 (`fused_attn`) and transformers' T5 (`_attn_implementation`) have their own switches; this toolkit's GIT decoder
always uses SDPA.
"""
from typing import Dict

import torch
import torch.nn.functional as F
from segment_anything.modeling import image_encoder, transformer
from torch import nn

__all__ = ["ATTENTION_IMPLEMENTATIONS", "SDPAImageAttention", "SDPATwoWayAttention", "set_attention", "attention_paths"]

ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


class SDPAImageAttention(image_encoder.Attention):
    """SAM ViT attention through SDPA. Input / output: (B, H, W, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, HW, C / heads)
        bias = None
        if self.use_rel_pos:
            rh = image_encoder.get_rel_pos(h, h, self.rel_pos_h)  # (H, H, c)
            rw = image_encoder.get_rel_pos(w, w, self.rel_pos_w)
            r_q = q.reshape(b, self.num_heads, h, w, -1)
            rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh.to(r_q.dtype))
            rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw.to(r_q.dtype))
            # SAM adds these to the scaled logits; SDPA adds a float mask to them too
            bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, self.num_heads, h * w, h * w)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


class SDPATwoWayAttention(transformer.Attention):
    """TwoWayTransformer attention through SDPA. Inputs (B, Nq, C), (B, Nk, C), (B, Nk, C); output (B, Nq, C)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = self._separate_heads(self.q_proj(q), self.num_heads)
        k = self._separate_heads(self.k_proj(k), self.num_heads)
        v = self._separate_heads(self.v_proj(v), self.num_heads)
        return self.out_proj(self._recombine_heads(F.scaled_dot_product_attention(q, k, v)))


def _is_timm_attention(m: nn.Module) -> bool:
    return hasattr(m, "fused_attn") and hasattr(m, "qkv")  # timm's Attention / EvaAttention


_SWAPS = {
    "sdpa": {image_encoder.Attention: SDPAImageAttention, transformer.Attention: SDPATwoWayAttention},
    "eager": {SDPAImageAttention: image_encoder.Attention, SDPATwoWayAttention: transformer.Attention},
}


def set_attention(model: nn.Module, implementation: str) -> nn.Module:
    """Run every attention of `model` through `implementation` ("sdpa" or "eager"), in place; parameters and
    state dict keys do not change.

    Returns:
        the same model.
    """
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"MODEL.PIXELLLM.ATTENTION must be one of {ATTENTION_IMPLEMENTATIONS}, got {implementation!r}")
    swaps = _SWAPS[implementation]
    for m in model.modules():
        if type(m) in swaps:
            m.__class__ = swaps[type(m)]  # same parameters, other forward
        if _is_timm_attention(m):
            m.fused_attn = implementation == "sdpa"
        config = getattr(m, "config", None)
        current = getattr(config, "_attn_implementation", None)
        if hasattr(m, "set_attn_implementation") and current is not None and current != implementation:
            m.set_attn_implementation(implementation)  # transformers (T5); sets its sub-models' configs too
    return model


def attention_paths(model: nn.Module) -> Dict[str, str]:
    """Which attention each part of `model` runs: {"<module path>": "sdpa" | "eager"} per group of same-kind
    attention modules (e.g. "backbone.sam": "sdpa")."""
    paths: Dict[str, str] = {}
    for name, m in model.named_modules():
        kind = None
        if isinstance(m, (image_encoder.Attention, transformer.Attention)):
            kind = "sdpa" if isinstance(m, (SDPAImageAttention, SDPATwoWayAttention)) else "eager"
        elif _is_timm_attention(m):
            kind = "sdpa" if m.fused_attn else "eager"
        elif type(m).__name__ == "T5Attention":
            kind = "sdpa" if m.config._attn_implementation == "sdpa" else m.config._attn_implementation
        elif isinstance(getattr(type(m), "attention_implementation", None), str):  # this toolkit's own layers
            kind = m.attention_implementation
        if kind is not None:
            part = _part_of(name)
            paths[part] = kind if paths.get(part, kind) == kind else "mixed"
    return paths


def _part_of(name: str) -> str:
    # the module path down to the component: backbone.sam, backbone.eva02, prompt_extractor, mask_head, language
    parts = name.split(".")
    depth = 2 if parts[0] == "backbone" else 1
    return ".".join(parts[:depth])
