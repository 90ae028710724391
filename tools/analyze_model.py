#!/usr/bin/env python
"""Parameter counts of a config's model per component (total / trainable), built on the meta device so even the
paper-scale model (SAM ViT-H + EVA02-L + Flan-T5-XL) is counted in seconds without allocating its weights.

    python tools/analyze_model.py --config-file configs/Base-PixelLLM.yaml [--json] [KEY VALUE ...]
"""
import argparse
import json

from pixelllm_d2.utils.cli import add_debug_flag, quiet_dependency_warnings, run_tool


def component_counts(model):
    """{component name: {"total", "trainable"}} over the model's direct children (the backbone and the language
    model split into their children: T5 and visual projection, or the GIT decoder's parts), plus overall totals and the LoRA trainable count."""
    groups = {}
    for name, module in model.named_children():
        if name == "backbone":
            for sub, m in module.named_children():
                groups[f"backbone.{sub}"] = m
        elif name == "language":
            for sub, m in module.named_children():
                groups[f"language.{sub}"] = m
        else:
            groups[name] = module
    comps = {}
    for name, module in groups.items():
        params = list(module.parameters())
        if not params:
            continue
        comps[name] = {
            "total": sum(p.numel() for p in params),
            "trainable": sum(p.numel() for p in params if p.requires_grad),
        }
    params = list(model.parameters())
    return {
        "components": comps,
        "total": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
        "lora_trainable": sum(p.numel() for n, p in model.named_parameters() if "lora_" in n and p.requires_grad),
        "visual_tokens_per_prompt": int(model.prompt_extractor.num_queries),
    }


def format_table(stats) -> str:
    rows = [(k, v["total"], v["trainable"]) for k, v in stats["components"].items()]
    rows.append(("TOTAL", stats["total"], stats["trainable"]))
    w = max(len(r[0]) for r in rows)
    lines = [f"{'component':<{w}}  {'total':>15}  {'trainable':>15}", "-" * (w + 34)]
    for name, total, trainable in rows:
        lines.append(f"{name:<{w}}  {total:>15,}  {trainable:>15,}")
    lines.append(f"{'LoRA (trainable)':<{w}}  {'':>15}  {stats['lora_trainable']:>15,}")
    lines.append(f"visual tokens per prompt: {stats['visual_tokens_per_prompt']}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    add_debug_flag(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    quiet_dependency_warnings()
    run_tool(_analyze, args, "analyze_model.py")


def _analyze(args):
    from pixelllm_d2.config import get_cfg
    from pixelllm_d2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    model = build_model(cfg, device="meta")
    stats = component_counts(model)
    print(json.dumps(stats, indent=2) if args.json else format_table(stats))


if __name__ == "__main__":
    main()
