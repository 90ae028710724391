#!/usr/bin/env python
"""Score a saved predictions file against ground truth, without a model.

    python tools/evaluate.py --task densecap --gt vg_test.json --pred predictions.json --out results.json

--gt is the ground truth in the dataset's own format (`pixelllm_d2/evaluation/ground_truth.py`): the GRiT / LVIS
VG json for densecap and VG loca, the refer json for refer and RefCOCOg loca, the COCO captions json for caption,
the trace json for trace; an eval-only run writes the file it used as `groundtruth.json`. --pred is a COCO-style
list of records (`image_id`, `bbox`, `score`, `caption`, ...; `pixelllm_d2/evaluation/records.py`), ours or
another system's: records without `bbox_mode` need --box-format, and boxes in a resized frame (GRiT / DenseCap:
longest side 720) need --pred-longest-side. Metrics are fractions (0-1; CIDEr may exceed 1), point_l1 is in units of the image size.
"""
import argparse
import logging
import sys

from pixelllm_d2.evaluation.records import BOX_FORMATS
from pixelllm_d2.evaluation.report import json_ready, load_json, results_table, write_json_atomic
from pixelllm_d2.evaluation.scoring import SCORERS, evaluate_predictions
from pixelllm_d2.utils.logger import setup_logger

logger = logging.getLogger("pixelllm_d2.evaluate")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=sorted(SCORERS), help="which metrics to compute")
    parser.add_argument("--gt", required=True, help="ground-truth json in the dataset's own format")
    parser.add_argument("--pred", required=True, help="predictions json: a list of COCO-style records")
    parser.add_argument("--out", default="", help="write the flat results dict to this json file")
    parser.add_argument("--box-format", choices=sorted(BOX_FORMATS), default=None,
                        help="box format of prediction records that carry no 'bbox_mode' (COCO / GRiT: xywh)")
    parser.add_argument("--pred-longest-side", type=float, default=0,
                        help="prediction boxes are in a frame whose longest side is this many pixels (GRiT / "
                             "DenseCap: 720); they are scaled to the original image. Default: original pixels")
    parser.add_argument("--skip-meteor", action="store_true",
                        help="leave METEOR out (and the metrics built on it: densecap mAP); the rest is computed")
    parser.add_argument("--repeats", type=int, default=0,
                        help="N >= 2: also report mean and std of every metric over N bootstrap resamples of the "
                             "images (drawn with replacement)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")
    return parser


def main(argv=None) -> dict:
    """Run the tool on `argv` (default: sys.argv) and return the results dict."""
    args = get_parser().parse_args(argv)
    setup_logger(name="pixelllm_d2")
    gt = load_json(args.gt, "ground truth")
    predictions = load_json(args.pred, "predictions")
    results = json_ready(evaluate_predictions(
        args.task, gt, predictions, skip_meteor=args.skip_meteor, box_format=args.box_format,
        pred_longest_side=args.pred_longest_side, repeats=args.repeats, seed=args.seed,
        gt_source=args.gt, pred_source=args.pred,
    ))
    logger.info(results_table(results, f"{args.task} metrics of {args.pred} (fractions; point_l1 in image-size units):"))
    for key in [k[: -len("_boot_mean")] for k in results if k.endswith("_boot_mean")]:
        logger.info(f"{key} = {results[key + '_boot_mean']:.4f} ± {results[key + '_boot_std']:.4f} (bootstrap mean ± "
                    f"std over {args.repeats} resamples of the images, seed {args.seed})")
    if args.out:
        write_json_atomic(args.out, results)
        logger.info(f"Wrote {args.out}")
    return results


if __name__ == "__main__":
    from pixelllm_d2.utils.cli import run_tool

    # RuntimeError: Java missing for METEOR / the PTB tokenizer
    run_tool(lambda argv: main(argv), sys.argv[1:], "evaluate.py", errors=(RuntimeError,))
