"""Dense captioning: the detector (proposal generator + prompt ROI head) and the captioner, joined. The ROI head
receives visual tokens as arguments; this glue encodes the boxes it samples or keeps."""
from typing import Dict, List, Tuple

import torch

from ...structures import Queries, pad_to

__all__ = ["densecap_losses", "densecap_inference"]


def _detector_parts(model, task: str):
    if model.roi_heads is None or model.proposal_generator is None:
        raise ValueError(f"a {task!r} input reached a model built without MODEL.DENSECAP_ON")
    return model.proposal_generator, model.roi_heads


def densecap_losses(model, features, batched_inputs: List[Dict], dense: List[int], share: float) -> Tuple[Dict, Queries, torch.Tensor]:
    """Training on the images `dense` of the batch.

    Args:
        model: the `PixelLLM`. features: its `ImageFeatures` of the batch.
        batched_inputs: the model inputs; those of `dense` carry "gt_boxes" (N, 4) and "gt_target_ids" (N, T).
        share: the batch share of these images (multiplies the detector losses).
    Returns:
        the detector losses; the caption queries (foreground proposals, each with its matched GT region's text and,
        in `token_boxes`, that region's box for every text token); their visual tokens.
    """
    rpn, roi_heads = _detector_parts(model, batched_inputs[dense[0]]["task"])
    gt_boxes, gt_text = [], []
    for i in dense:
        x = batched_inputs[i]
        if "gt_boxes" not in x or "gt_target_ids" not in x:
            raise ValueError(f"input {i} ({x.get('file_name', 'no file_name')}): dense-caption training needs gt_boxes and gt_target_ids")
        gt_boxes.append(torch.as_tensor(x["gt_boxes"], dtype=torch.float32, device=model.device).reshape(-1, 4))
        gt_text.append(torch.as_tensor(x["gt_target_ids"], dtype=torch.long, device=model.device))
    sizes = features.sizes
    proposals, losses = rpn(features.fused[dense], [sizes[i] for i in dense], gt_boxes)
    sampled = roi_heads.sample(proposals, gt_boxes, dense)
    visual = model.encode_boxes(features, sampled["image_index"], sampled["boxes"])
    losses.update(roi_heads.losses(visual, sampled, gt_boxes))
    losses = {k: v * share for k, v in losses.items()}

    rows = sampled["caption"].nonzero(as_tuple=True)[0]
    image_index, gt_index = sampled["image_index"][rows], sampled["matched"][rows]
    pos = {img: k for k, img in enumerate(dense)}
    pairs = [(pos[int(i)], int(j)) for i, j in zip(image_index, gt_index)]
    tok = model.tokenizer
    if pairs:
        width = max(gt_text[k].shape[1] for k, _ in pairs)
        target = torch.cat([pad_to(gt_text[k][j][None], width, tok.pad_id) for k, j in pairs])
        matched = torch.stack([gt_boxes[k][j] for k, j in pairs])
    else:
        target = torch.zeros(0, 1, dtype=torch.long, device=model.device)
        matched = sampled["boxes"][rows]
    real = (target != tok.pad_id) & (target != tok.eos_id)
    n = len(rows)
    q = Queries(
        tok.pad_id,
        image_index=image_index,
        image_wh=torch.tensor([[sizes[int(i)][1], sizes[int(i)][0]] for i in image_index], dtype=torch.float32,
                              device=model.device).reshape(n, 2),
        boxes=sampled["boxes"][rows],
        context_ids=torch.cat([model.context_ids(batched_inputs[int(i)]["task"], 1) for i in image_index])
        if n else torch.zeros(0, 1, dtype=torch.long, device=model.device),
        target_ids=target,
        token_boxes=matched[:, None, :] * real[..., None].to(matched.dtype),
        task=[batched_inputs[int(i)]["task"] for i in image_index],
    )
    return losses, q, visual[rows]


def densecap_inference(model, features, batched_inputs: List[Dict], dense: List[int], decode: Dict) -> List[Dict]:
    """Detect, then caption every kept box of every image `dense` in one batched, KV-cached decode.

    Returns:
        per image {"results": per detection {"token_ids", "token_corners", "score"}, "pred_boxes" (D, 4) resized
        pixels, "scores" (D,)}, detections best first (after the ROI head's rescoring with the captions).
    """
    rpn, roi_heads = _detector_parts(model, batched_inputs[dense[0]]["task"])
    sizes = [features.sizes[i] for i in dense]
    proposals, _ = rpn(features.fused[dense], sizes)
    counts = [len(p) for p in proposals]
    if sum(counts) == 0:
        dets = [(p.new_zeros(0, 4), p.new_zeros(0)) for p in proposals]
    else:
        index = torch.cat([torch.full((n,), dense[k], dtype=torch.long, device=model.device) for k, n in enumerate(counts)])
        dets = roi_heads.detect(model.encode_boxes(features, index, torch.cat(proposals)), proposals, sizes)
    outs = [dict(results=[], pred_boxes=b, scores=s) for b, s in dets]
    kept = [len(b) for b, _ in dets]
    if sum(kept) == 0:
        return outs
    boxes = torch.cat([b for b, _ in dets])
    index = torch.cat([torch.full((n,), i, dtype=torch.long, device=model.device) for i, n in zip(dense, kept)])
    wh = torch.tensor([[features.sizes[i][1], features.sizes[i][0]] for i in index.tolist()], dtype=torch.float32,
                      device=model.device)
    tok = model.tokenizer
    q = Queries(tok.pad_id, image_index=index, image_wh=wh, boxes=boxes,
                context_ids=torch.cat([model.context_ids(batched_inputs[i]["task"], 1) for i in index.tolist()]),
                task=[batched_inputs[i]["task"] for i in index.tolist()])
    results = model.generate(features, q, decode=decode, visual=model.encode_boxes(features, index, boxes))
    start = 0
    for out, n in zip(outs, kept):
        out["results"] = results[start : start + n]
        start += n
        if n:
            log_prob = torch.tensor([r["score"] for r in out["results"]], device=model.device)
            order, out["scores"] = roi_heads.rescore(out["scores"], log_prob)
            out["pred_boxes"] = out["pred_boxes"][order]
            out["results"] = [out["results"][k] for k in order.tolist()]
    return outs
