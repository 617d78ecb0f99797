"""Evaluate a segmentation checkpoint on its validation split: mIoU, pixel accuracy and per-class IoU.

    python tools/eval_seg.py --ckpt runs/deeplabv3_voc/ckpt/last.ckpt
    python tools/eval_seg.py --ckpt CKPT --ms-flip                      # scales eval.ms_scales + left-right flip
    python tools/eval_seg.py --ckpt CKPT --save-dir preds/              # also write palette PNG label maps
    python tools/eval_seg.py --ckpt CKPT --set data.root=/data/VOCdevkit --set data.val_split=val

The model and data settings come from the config stored in the checkpoint; ``--set`` overrides them. mIoU comes
from one confusion matrix over the whole split (255 ignored; classes absent from both targets and predictions are
left out of the mean). An image that cannot be read is left out and listed; the others are scored, and the command
exits with status 1 (the rule of every tool that scores images, ``mnv2_vision/commands/cli.py``).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

# `profile` (imported by torch via cProfile). Search the repository root instead.

import torch

from mnv2_vision.checkpoint import load_model
from mnv2_vision.commands.cli import add_debug_flag, exit_status, guarded, make_parser
from mnv2_vision.config import load_config, save_config
from mnv2_vision.data.io.labels import IGNORE_INDEX, write_label
from mnv2_vision.eval.miou import ConfusionMatrix
from mnv2_vision.files import output_folder, write_json
from mnv2_vision.lit.common import skipped_note
from mnv2_vision.data.classes import segmentation_class_names
from mnv2_vision.lit.segmentation import build_seg_datamodule, predict_batch


def _predictions(cfg, model, hparams, scales, flip, device, skipped: list[str]):
    """(prediction, label map, id) per usable validation image, the unusable ones appended to ``skipped``: a
    segmenter runs each image at its own size; the multi-task pair at its training size, upsampled to the image's
    (as its validation does)."""
    if cfg.task == "multitask":
        from mnv2_vision.lit.multitask import build_mt_datamodule, segmentation_pairs

        datamodule = build_mt_datamodule(cfg, category_ids=hparams.get("category_ids"))
        yield from segmentation_pairs(model, datamodule.val_dataloader(), scales, flip, device, skipped)
        return
    datamodule = build_seg_datamodule(cfg)
    datamodule.setup("validate")
    skipped += [f"{i} (image or label file missing)" for i in datamodule.val_dataset().missing]
    for batch in datamodule.val_dataloader():
        skipped += [str(s) for s in batch["skipped"]]  # unusable images are left out, never replaced
        if not batch["id"]:
            continue
        preds = predict_batch(model, batch["image"].to(device), batch["size"], scales, flip)
        for pred, mask, (h, w), image_id in zip(preds, batch["mask"], batch["size"].tolist(), batch["id"]):
            yield pred, mask[:h, :w].to(device), image_id


@guarded
def main(argv: Sequence[str] | None = None) -> dict:
    p = make_parser(__doc__)
    p.add_argument("--ckpt", required=True, help="a checkpoint written by tools/train_seg.py or train_multitask.py")
    p.add_argument("--ms-flip", action="store_true", help="multi-scale (eval.ms_scales) + flip (eval.flip) inference")
    p.add_argument("--save-dir", default=None, help="write <id>.png colour-palette prediction maps here")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the stored config")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--fuse", action="store_true",
                   help="fused inference: BatchNorm folded into the convs, channels-last, inference mode")
    args = add_debug_flag(p).parse_args(argv)

    cfg, model, hparams = load_model(args.ckpt)
    if args.set:  # the stored config, then the overrides, through the normal loader (same checks as training)
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load_config(save_config(cfg, Path(tmp) / "ckpt_config.yaml"), args.set)
    names = tuple(hparams.get("class_names") or segmentation_class_names(cfg))
    model = model.to(args.device)
    if args.fuse:
        from mnv2_vision.deploy.fuse import fuse_for_inference

        model = fuse_for_inference(model)
    scales, flip = (tuple(cfg.eval.ms_scales), cfg.eval.flip) if args.ms_flip else ((1.0,), False)
    save_dir = output_folder(args.save_dir, "--save-dir") if args.save_dir else None

    confmat = ConfusionMatrix(len(names), IGNORE_INDEX, device=args.device)
    skipped: list[str] = []
    num_images = 0
    for pred, mask, image_id in _predictions(cfg, model, hparams, scales, flip, args.device, skipped):
        confmat.update(pred, mask)
        num_images += 1
        if save_dir is not None:
            write_label(save_dir / f"{image_id}.png", pred.cpu().numpy())
    metrics = confmat.compute()

    mode = f"multi-scale {list(scales)}" + (" + flip" if flip else "") if args.ms_flip else "single-scale"
    print(f"{args.ckpt}: {num_images} images of split {cfg.data.val_split!r}, {mode}{skipped_note(skipped)}")
    print(f"mIoU {metrics.miou:.4f}   pixel accuracy {metrics.pixel_acc:.4f}")
    for name, iou in metrics.per_class(names).items():
        print(f"  {name:<14} {iou:.4f}" if iou == iou else f"  {name:<14}    -   (absent)")
    result = {"miou": metrics.miou, "pixel_acc": metrics.pixel_acc, "per_class_iou": metrics.per_class(names),
              "ms_flip": args.ms_flip, "scales": list(scales), "flip": flip, "ckpt": str(args.ckpt),
              "num_images": num_images, "skipped_images": skipped}
    if save_dir is not None:
        write_json(save_dir / "metrics.json", result, indent=1)
    return result


def console() -> int:
    """The ``mnv2-eval-seg`` command and ``python tools/eval_seg.py``: ``main`` with its exit status."""
    return exit_status(main(), scored=True)  # skipped images: 1 (commands/cli.py, the rule for every scoring tool)


if __name__ == "__main__":
    raise SystemExit(console())
