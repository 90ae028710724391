#!/usr/bin/env python
"""The picture of docs/DETECTRON2.md: detectron2's `DefaultPredictor` and `Visualizer` on the README's trained
checkpoint (needs detectron2 on the path), and the check that a refer input gives PixelLLMPredictor's boxes.

    PYTHONPATH=/path/to/detectron2 python dev/detectron2_demo.py [--output docs/demo/detectron2]
"""
import argparse
import os

import cv2
import torch

import pixelllm_d2.d2 as pd2
from detectron2.config import get_cfg
from detectron2.engine import DefaultPredictor
from detectron2.utils.visualizer import Visualizer
from pixelllm_d2.config import get_cfg as our_cfg
from pixelllm_d2.predictor import PixelLLMPredictor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=os.path.join(ROOT, "configs", "shapes", "pixelllm_tiny_shapes.yaml"))
    parser.add_argument("--weights", default=os.path.join(ROOT, "output", "pixelllm_tiny_shapes", "model_final.pth"))
    parser.add_argument("--input", default=os.path.join(ROOT, "docs", "demo", "inputs", "shapes_scene.png"))
    parser.add_argument("--output", default="demo_output/detectron2")
    args = parser.parse_args()
    cfg = get_cfg()
    pd2.add_pixelllm_config(cfg)
    cfg.merge_from_file(args.config_file, allow_unsafe=False)
    cfg.MODEL.WEIGHTS = args.weights
    predictor = DefaultPredictor(cfg)
    bgr = cv2.imread(args.input)
    instances = predictor(bgr)["instances"]
    print(f"DefaultPredictor: {len(instances)} instances; best: {list(instances.pred_object_descriptions)[:5]}")
    os.makedirs(args.output, exist_ok=True)
    rgb = bgr[:, :, ::-1]
    plain = Visualizer(rgb, scale=3.0).draw_instance_predictions(instances[:8]).get_image()
    captioned = pd2.CaptionVisualizer(rgb, scale=3.0).draw_instance_predictions(instances, max_instances=8).get_image()
    cv2.imwrite(os.path.join(args.output, "visualizer.png"), plain[:, :, ::-1])
    cv2.imwrite(os.path.join(args.output, "caption_visualizer.png"), captioned[:, :, ::-1])

    texts = ["the red circle", "the blue square", "the green triangle"]
    image = torch.as_tensor(rgb.transpose(2, 0, 1).copy()).float()
    (out,) = predictor.model([{"image": image, "height": rgb.shape[0], "width": rgb.shape[1], "task": "refer", "text": texts}])
    ours = our_cfg()
    ours.merge_from_file(args.config_file)
    ours.MODEL.WEIGHTS = args.weights
    reference = PixelLLMPredictor(ours)(rgb, task="refer", text=texts)["pred_boxes"]
    diff = (out["instances"].pred_boxes.tensor - reference).abs().max().item()
    print(f"refer through detectron2 vs PixelLLMPredictor: largest box difference {diff:.6f} px")
    print(f"wrote {args.output}/visualizer.png and caption_visualizer.png")


if __name__ == "__main__":
    main()
