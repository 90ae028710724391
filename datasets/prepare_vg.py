#!/usr/bin/env python
"""Convert Visual Genome's native region descriptions into GRiT's LVIS-style json (what `vg_train` / `vg_test` read).

    python datasets/prepare_vg.py --region-descriptions region_descriptions.json --image-data image_data.json \
        --out datasets/vg/train.json [--splits densecap_splits.json --split train]

Input (visualgenome.org, v1.0 / v1.2): `region_descriptions.json` = [{"id": image_id, "regions": [{"region_id",
"image_id", "x", "y", "width", "height", "phrase"}]}], `image_data.json` = [{"image_id" (or "id"), "width",
"height", "url"}]. `--splits` takes DenseCap's split file ({"train": [ids], "val": [...], "test": [...]}) to keep
one split (DenseCap / GRiT: 77,398 train / 5,000 test images).

Output: {"images": [{"id", "file_name" (the url's basename, e.g. "1.jpg"), "width", "height"}], "annotations":
[{"id" (region_id), "image_id", "bbox" [x, y, w, h], "caption", "category_id": 1, "area", "iscrowd": 0}],
"categories": [{"id": 1, "name": "object"}]}. Phrases are lower-cased with white space collapsed and a trailing
period removed; boxes are clipped to the image. Regions with an empty phrase or an unusable box, and images
without size, are dropped and counted (the first few printed). The output is written atomically.
"""
import argparse
import json
import os
import sys

from pixelllm_d2.utils.file_io import atomic_write
from pixelllm_d2.data.validation import ValidationReport, check_image_size, check_text, check_xywh_box


def _clean_phrase(phrase) -> str:
    text, err = check_text(phrase)
    return "" if err else text.lower().rstrip(".").strip()


def convert(region_descriptions: list, image_data: list, keep_ids=None, source: str = "") -> tuple:
    """VG native lists -> (GRiT json dict, ValidationReport of what was dropped)."""
    report = ValidationReport(source)
    sizes = {}
    for i, img in enumerate(image_data):
        image_id = img.get("image_id", img.get("id")) if isinstance(img, dict) else None
        err = "missing image_id" if image_id is None else check_image_size(img.get("width"), img.get("height"))
        if err:
            report.add("image_data", f"[{i}]", "bad image entry", err)
            continue
        sizes[image_id] = img
    images, annotations = [], []
    for i, entry in enumerate(region_descriptions):
        image_id = entry.get("id", entry.get("image_id")) if isinstance(entry, dict) else None
        if keep_ids is not None and image_id not in keep_ids:
            continue
        if image_id not in sizes:
            report.add("region_descriptions", f"[{i}] (image {image_id})", "unknown image", "no size in image_data")
            continue
        img = sizes[image_id]
        w, h = img["width"], img["height"]
        url = img.get("url") or ""
        file_name = os.path.basename(url) or f"{image_id}.jpg"
        images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
        for j, r in enumerate(entry.get("regions", [])):
            where = f"[{i}].regions[{j}] (region {r.get('region_id')})"
            box = [r.get("x"), r.get("y"), r.get("width"), r.get("height")]
            xyxy, err = check_xywh_box(box, w, h)
            if err:
                report.add("region_descriptions", where, "bad box", err)
                continue
            caption = _clean_phrase(r.get("phrase"))
            if not caption:
                report.add("region_descriptions", where, "empty caption", f"phrase {r.get('phrase')!r}")
                continue
            bw, bh = xyxy[2] - xyxy[0], xyxy[3] - xyxy[1]
            annotations.append(
                {"id": r.get("region_id", len(annotations)), "image_id": image_id,
                 "bbox": [xyxy[0], xyxy[1], bw, bh], "caption": caption, "category_id": 1,
                 "area": bw * bh, "iscrowd": 0}
            )
    report.num_records = len(images)
    out = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
    return out, report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--region-descriptions", required=True)
    parser.add_argument("--image-data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--splits", help="DenseCap split json ({split: [image ids]})")
    parser.add_argument("--split", help="the split of --splits to keep")
    args = parser.parse_args(argv)
    if bool(args.splits) != bool(args.split):
        parser.error("--splits and --split go together")
    with open(args.region_descriptions) as f:
        regions = json.load(f)
    with open(args.image_data) as f:
        image_data = json.load(f)
    keep = None
    if args.splits:
        with open(args.splits) as f:
            keep = set(json.load(f)[args.split])
    out, report = convert(regions, image_data, keep, source=args.region_descriptions)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with atomic_write(args.out, "w") as f:
        json.dump(out, f)
    print(f"wrote {args.out}: {len(out['images'])} images, {len(out['annotations'])} regions")
    print(report.summary())
    for p in report.problems[:10]:
        print(f"  dropped: {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
