#!/usr/bin/env python
"""Check a dataset before training on it: schema, boxes, captions, traces, and that every image decodes.

    python tools/validate_dataset.py --dataset vg_train
    python tools/validate_dataset.py --file datasets/vg/train.json --format vg --image-root datasets/vg/images
    python tools/validate_dataset.py --file "datasets/refcoco/refs(unc).p" --format refcoco --split val \
        --image-root datasets/coco/train2014

Prints the counts per kind of problem and the first offending records (file and record); exits 1 when anything
is wrong. The loaders run the same checks and skip (and count) the bad records.
"""
import argparse
import os
import sys

from pixelllm_d2.data import MetadataCatalog
from pixelllm_d2.data.datasets.shapes import ensure_shapes
from pixelllm_d2.data.validate import FORMATS, validate_source


def _dataset_sources(name: str):
    """(format, file, keyword arguments) for each file behind a registered dataset."""
    meta = MetadataCatalog.get(name)
    if meta.get("format") is None:
        raise SystemExit(f"dataset {name!r} is not registered (or has no 'format' metadata)")
    if meta.get("shapes_root"):
        sizes = meta.shapes_sizes
        ensure_shapes(os.path.dirname(meta.shapes_root), sizes["train"], sizes["val"])
    fmt, root = meta.format, meta.image_root
    if fmt == "ln":
        return [("ln", f, dict(image_root=root, image_file_format=meta.image_file_format,
                                image_info_json=meta.image_info_json)) for f in meta.jsonl_files]
    if fmt == "refcoco":
        kw = dict(image_root=root, instances_json=meta.instances_json, split=meta.split)
        return [("refcoco", meta.refs_file, kw)]
    if fmt == "mdetr_refcoco":
        return [("refcoco", meta.json_file, dict(image_root=root))]
    if fmt == "coco_karpathy":
        return [("coco_karpathy", meta.json_file, dict(image_root=root, split=s)) for s in meta.splits]
    return [(fmt, meta.json_file, dict(image_root=root))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="a registered dataset name (see DatasetCatalog.list())")
    src.add_argument("--file", help="an annotation file")
    parser.add_argument("--format", choices=FORMATS, help="format of --file")
    parser.add_argument("--image-root", help="image folder of --file (default: the file's folder)")
    parser.add_argument("--instances", help="refcoco: instances.json (default: next to the refs file)")
    parser.add_argument("--split", help="refcoco / coco_karpathy: check only this split")
    parser.add_argument("--image-file-format", help="ln: file name pattern, default '{image_id:012d}.jpg'")
    parser.add_argument("--image-info", help="ln: COCO-style json giving image sizes")
    parser.add_argument("--no-images", action="store_true", help="skip decoding the images")
    parser.add_argument("--max-shown", type=int, default=20, help="offending records to print")
    args = parser.parse_args(argv)
    if args.file and not args.format:
        parser.error("--file needs --format")

    if args.dataset:
        sources = _dataset_sources(args.dataset)
    else:
        sources = [(args.format, args.file, dict(image_root=args.image_root, instances_json=args.instances,
                                                 split=args.split, image_file_format=args.image_file_format,
                                                 image_info_json=args.image_info))]
    bad = 0
    for fmt, file, kw in sources:
        report = validate_source(fmt, file, check_images=not args.no_images, **kw)
        bad += len(report)
        print(report.summary())
        for p in report.problems[: args.max_shown]:
            print(f"  {p}")
        if len(report) > args.max_shown:
            print(f"  ... and {len(report) - args.max_shown} more")
    print("FAILED" if bad else "OK")
    return 1 if bad else 0


if __name__ == "__main__":
    from pixelllm_d2.utils.cli import run_tool

    sys.exit(run_tool(lambda argv: main(argv), sys.argv[1:], "validate_dataset.py"))
