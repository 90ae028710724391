"""HF T5 as PixelLLM's prefix language model, with LoRA through peft.

Encoder input = [visual tokens (projected to d_model, LayerNorm) ; context-prompt token embeddings]; the decoder
produces the text from BOS = pad id 0. The base T5 is frozen by default; LoRA (rank 32, alpha 64) sits on q and v of
encoder self-attention, decoder self-attention and decoder cross-attention.
"""
import inspect
import json
import logging
import os
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from ...config import configurable
from ..build import LANGUAGE_MODEL_REGISTRY
from ..weights import load_hf_folder_state_dict, load_state_dict_file
from .base import PrefixLM

__all__ = ["T5PrefixLM", "T5_PRESETS", "build_t5_config"]

logger = logging.getLogger(__name__)

# Architectures of google/flan-t5-* (T5 v1.1: gated-GELU FFN, untied output head, 32 relative-position buckets).
T5_PRESETS: Dict[str, dict] = {
    "flan-t5-small": dict(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8, num_heads=6),
    "flan-t5-base": dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12),
    "flan-t5-large": dict(d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_decoder_layers=24, num_heads=16),
    "flan-t5-xl": dict(d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_decoder_layers=24, num_heads=32),
    "flan-t5-xxl": dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_decoder_layers=24, num_heads=64),
}
_T5_V11 = dict(
    feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    layer_norm_epsilon=1e-6,
    tie_word_embeddings=False,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)


def build_t5_config(arch: str, weights: str = "", vocab_size: int = 32128, dropout: float = 0.1, custom: dict = None):
    """A `T5Config`: read from the local folder `weights` when given, else the preset `arch` (or "custom" with the
    sizes in `custom`)."""
    from transformers import T5Config

    if weights:
        cfg_file = os.path.join(weights, "config.json")
        if not os.path.isfile(cfg_file):
            raise FileNotFoundError(f"T5 weights folder {weights!r} has no config.json (expected a local HF folder)")
        config = T5Config.from_pretrained(weights, local_files_only=True)
        config.dropout_rate = dropout
        return config
    if arch == "custom":
        # Trained from scratch: tie the output head to the embeddings with T5's d_model ** -0.5 output scaling,
        # which keeps the initial logits small (an untied head initialised like the embeddings does not).
        return T5Config(vocab_size=vocab_size, dropout_rate=dropout, **dict(_T5_V11, tie_word_embeddings=True), **(custom or {}))
    if arch not in T5_PRESETS:
        raise ValueError(f"unknown T5 architecture {arch!r}; choose one of {sorted(T5_PRESETS)} or 'custom'")
    return T5Config(vocab_size=vocab_size, dropout_rate=dropout, **_T5_V11, **T5_PRESETS[arch])


# transformers 5 renamed the decoder's `past_key_values` argument to `cache`.
def _cache_kwarg(stack: nn.Module) -> str:
    params = inspect.signature(type(stack).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@LANGUAGE_MODEL_REGISTRY.register()
class T5PrefixLM(PrefixLM):
    """
    Args:
        t5_config: a transformers `T5Config` (the model is built from it; weights come from `weights`).
        visual_dim: width of the incoming visual tokens.
        weights: local HF folder whose weights `load_weights()` reads ("" = random init).
        freeze: freeze the base T5 parameters.
        lora_rank, lora_alpha, lora_dropout, lora_target_modules: LoRA settings (rank 0 disables LoRA).
        adapter: a saved PEFT adapter folder `load_weights()` reads ("" = none).
        text_weight, label_smoothing: the text loss (`losses`): weight and GRiT-style label smoothing.
        grad_checkpointing: recompute each T5 block's activations in the backward pass (transformers' gradient
            checkpointing, non-reentrant so that a frozen base with LoRA gets its gradients).
    """

    @configurable
    def __init__(
        self,
        *,
        t5_config,
        visual_dim: int,
        weights: str = "",
        freeze: bool = True,
        lora_rank: int = 32,
        lora_alpha: float = 64,
        lora_dropout: float = 0.0,
        lora_target_modules: str = r".*(SelfAttention|EncDecAttention)\.(q|v)$",
        adapter: str = "",
        text_weight: float = 1.0,
        label_smoothing: float = 0.1,
        grad_checkpointing: bool = False,
    ):
        super().__init__(text_weight, label_smoothing)
        from transformers import T5ForConditionalGeneration

        self.weights = weights
        self.adapter = adapter
        base = T5ForConditionalGeneration(t5_config)
        if grad_checkpointing:
            kwargs = {"use_reentrant": False}
            if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x's name
                base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if freeze:
            for p in base.parameters():
                p.requires_grad_(False)
        self.lora_enabled = lora_rank > 0
        if self.lora_enabled:
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(
                r=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=lora_target_modules
            )
            self.t5 = get_peft_model(base, lora)
            if not freeze:  # peft freezes the base model; the caller asked to train it
                for p in self.t5.parameters():
                    p.requires_grad_(True)
        elif adapter:
            raise ValueError("a LoRA adapter was given but LoRA is disabled (LORA.ENABLED False or rank 0)")
        else:
            self.t5 = base
        self.d_model = t5_config.d_model
        self.vocab_size = t5_config.vocab_size
        self.visual_proj = nn.Sequential(nn.Linear(visual_dim, self.d_model), nn.LayerNorm(self.d_model))
        self._cache_kw = _cache_kwarg(self.base.decoder)

    @classmethod
    def from_config(cls, cfg, visual_dim: int, vocab_size: int):
        lang = cfg.MODEL.PIXELLLM.LANGUAGE
        custom = dict(
            d_model=lang.D_MODEL,
            num_layers=lang.NUM_LAYERS,
            num_decoder_layers=lang.NUM_DECODER_LAYERS,
            num_heads=lang.NUM_HEADS,
            d_kv=lang.D_KV,
            d_ff=lang.D_FF,
        )
        return dict(
            t5_config=build_t5_config(lang.ARCH, lang.WEIGHTS, vocab_size, lang.DROPOUT, custom),
            visual_dim=visual_dim,
            weights=lang.WEIGHTS,
            freeze=lang.FREEZE,
            lora_rank=lang.LORA.RANK if lang.LORA.ENABLED else 0,
            lora_alpha=lang.LORA.ALPHA,
            lora_dropout=lang.LORA.DROPOUT,
            lora_target_modules=lang.LORA.TARGET_MODULES,
            adapter=lang.LORA.ADAPTER,
            text_weight=cfg.MODEL.PIXELLLM.LOSS.TEXT_WEIGHT,
            label_smoothing=cfg.MODEL.PIXELLLM.LOSS.LABEL_SMOOTHING,
            grad_checkpointing=lang.GRAD_CHECKPOINTING,
        )

    @property
    def base(self):
        """The transformers `T5ForConditionalGeneration` (with LoRA layers injected when enabled)."""
        return self.t5.get_base_model() if self.lora_enabled else self.t5

    # ------------------------------------------------------------------------------------------------ weights
    def load_weights(self) -> None:
        """Load the T5 weights folder and the PEFT adapter named at construction (if any)."""
        if self.weights:
            self.load_t5_folder(self.weights)
        if self.adapter:
            self.load_adapter(self.adapter)

    def load_t5_folder(self, folder: str) -> None:
        """Load HF T5 weights (model.safetensors, sharded safetensors or pytorch_model.bin) from a local folder into
        the base model; LoRA-wrapped layers receive the base weights. Missing / unexpected keys are logged by name;
        a shape mismatch is an error."""
        state = load_hf_folder_state_dict(folder)
        base = self.base
        own = base.state_dict()
        mapped = {}
        for key, value in state.items():
            if key not in own:
                # peft moves a wrapped Linear's weight to `<name>.base_layer.weight`
                alt = key.rsplit(".", 1)
                alt = f"{alt[0]}.base_layer.{alt[1]}" if len(alt) == 2 else key
                key = alt if alt in own else key
            mapped[key] = value
        # transformers 5 always ties lm_head to the input embeddings; an untied checkpoint (T5 v1.1 / Flan-T5)
        # needs its own head back.
        head = mapped.get("lm_head.weight")
        if head is not None and base.lm_head.weight is base.shared.weight and not torch.equal(head, mapped.get("shared.weight", head)):
            base.lm_head.weight = nn.Parameter(head.clone(), requires_grad=base.shared.weight.requires_grad)
            if hasattr(base.config, "scale_decoder_outputs"):
                base.config.scale_decoder_outputs = False
        for key, value in mapped.items():
            if key in own and own[key].shape != value.shape:
                raise ValueError(
                    f"T5 weights {folder!r}: {key} has shape {tuple(value.shape)}, the model expects {tuple(own[key].shape)}"
                )
        result = base.load_state_dict(mapped, strict=False)
        missing = [k for k in result.missing_keys if "lora_" not in k and not _tied_alias(k)]
        if missing:
            logger.warning("T5 weights %s: missing keys (left at init): %s", folder, ", ".join(missing))
        if result.unexpected_keys:
            logger.warning("T5 weights %s: unexpected keys (ignored): %s", folder, ", ".join(result.unexpected_keys))

    def load_adapter(self, folder: str) -> None:
        """Load a PEFT LoRA adapter saved with `save_pretrained` (adapter_config.json + adapter_model.safetensors
        or .bin). Its rank / alpha / target modules must match this model's."""
        from peft.utils import set_peft_model_state_dict

        if not self.lora_enabled:
            raise ValueError(f"cannot load adapter {folder!r}: LoRA is disabled")
        cfg_file = os.path.join(folder, "adapter_config.json")
        if not os.path.isfile(cfg_file):
            raise FileNotFoundError(f"PEFT adapter {folder!r}: no adapter_config.json")
        with open(cfg_file) as f:
            saved = json.load(f)
        ours = self.t5.peft_config["default"]
        for key in ("r", "lora_alpha"):
            if saved.get(key) != getattr(ours, key):
                raise ValueError(f"PEFT adapter {folder!r}: {key}={saved.get(key)} but the model uses {getattr(ours, key)}")
        for name in ("adapter_model.safetensors", "adapter_model.bin"):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                break
        else:
            raise FileNotFoundError(f"PEFT adapter {folder!r}: no adapter_model.safetensors or adapter_model.bin")
        state = load_state_dict_file(path)
        result = set_peft_model_state_dict(self.t5, state)
        unexpected = list(getattr(result, "unexpected_keys", []))
        if unexpected:
            raise ValueError(f"PEFT adapter {path!r}: keys that match no LoRA layer of the model: {unexpected}")
        lora_params = [n for n, _ in self.t5.named_parameters() if "lora_" in n]
        missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
        if missing:
            raise ValueError(f"PEFT adapter {path!r}: LoRA weights missing for {missing[:5]} (of {len(lora_params)})")

    def save_adapter(self, folder: str) -> None:
        """Write the LoRA adapter in PEFT's format (loadable by peft and by `load_adapter`)."""
        if not self.lora_enabled:
            raise ValueError("LoRA is disabled: no adapter to save")
        self.t5.save_pretrained(folder)

    # ------------------------------------------------------------------------------------------------ forward
    def embed_context(self, context_ids: torch.Tensor) -> torch.Tensor:
        return self.base.get_input_embeddings()(context_ids)

    def encode(self, visual_tokens: torch.Tensor, context_ids: torch.Tensor, pad_id: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            visual_tokens: (Q, V, visual_dim).
            context_ids: (Q, C) int64 context-prompt ids, padded with `pad_id` (C may be 0).
        Returns:
            hidden: (Q, V + C, d_model) encoder output.
            mask: (Q, V + C) int64 attention mask (1 = attend).
        """
        vis = self.visual_proj(visual_tokens)
        ctx = self.embed_context(context_ids)
        embeds = torch.cat([vis, ctx.to(vis.dtype)], dim=1)
        mask = torch.cat(
            [torch.ones(vis.shape[:2], dtype=torch.long, device=vis.device), (context_ids != pad_id).long()], dim=1
        )
        hidden = self.base.encoder(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        return hidden, mask

    def decode(
        self,
        encoder_hidden: torch.Tensor,
        encoder_mask: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        cache=None,
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[object]]:
        """
        Args:
            encoder_hidden: (Q, L, d_model); encoder_mask: (Q, L).
            decoder_input_ids: (Q, t) ids fed to the decoder (starting with BOS = 0 unless continuing a cache).
            cache: None for a full (teacher-forced) pass; a transformers `EncoderDecoderCache` to decode
                incrementally (it is updated in place and returned).
        Returns:
            hidden: (Q, t, d_model) final decoder states (after the final LayerNorm).
            logits: (Q, t, vocab).
            cache: the updated cache (None when none was given).
        """
        base = self.base
        kwargs = {self._cache_kw: cache, "use_cache": cache is not None}
        out = base.decoder(
            input_ids=decoder_input_ids,
            encoder_hidden_states=encoder_hidden,
            encoder_attention_mask=encoder_mask,
            **kwargs,
        )
        hidden = out.last_hidden_state
        scaled = hidden
        if getattr(base.config, "scale_decoder_outputs", base.config.tie_word_embeddings):
            scaled = hidden * (self.d_model**-0.5)
        logits = base.lm_head(scaled)
        return hidden, logits, cache

    def new_cache(self):
        """An empty KV cache for incremental decoding."""
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        return EncoderDecoderCache(DynamicCache(), DynamicCache())


def _tied_alias(key: str) -> bool:
    # Keys that alias `shared.weight` in HF T5 and are often absent from checkpoints.
    return key in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight")
