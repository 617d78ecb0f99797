"""Evaluate a classifier checkpoint: top-1, top-5, per-class accuracy and a confusion-matrix PNG.

    python tools/eval_cls.py --ckpt runs/mobilenet_v2_shapes/ckpt/last.ckpt
    python tools/eval_cls.py --ckpt best.ckpt --root /data/imagenet --split val --out runs/eval_imagenet

The model, data format, input size and normalisation come from the config stored in the checkpoint; ``--root`` and
``--split`` point it at other data. Writes ``metrics.json`` and ``confusion.png`` to ``--out`` (default: ``eval/``
next to the checkpoint's ``ckpt/`` folder). An image that cannot be read is left out and listed; the others are
scored, and the command exits with status 1 (the rule of every tool that scores images, ``commands/cli.py``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from torch import Tensor
from torch.utils.data import DataLoader

from mnv2_vision.checkpoint import load_model
from mnv2_vision.commands.cli import add_debug_flag, exit_status, guarded, make_parser
from mnv2_vision.data import resolve_root
from mnv2_vision.data.classification.datamodule import TransformedDataset, classification_eval_collate
from mnv2_vision.data.classification.datasets import read_classification_split
from mnv2_vision.data.classification.transforms import classification_transform
from mnv2_vision.errors import DataError
from mnv2_vision.files import output_folder, save_figure, write_json
from mnv2_vision.lit.classification import evaluate_classifier
from mnv2_vision.lit.common import skipped_note


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], path: Path, title: str) -> Path:
    """Row-normalised confusion matrix (rows: true class); counts written in the cells for up to 20 classes."""
    k = len(classes)
    rows = matrix.sum(1, keepdims=True)
    norm = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    side = min(24.0, 3.0 + 0.45 * k)
    fig, ax = plt.subplots(figsize=(side, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if k <= 40:
        ax.set_xticks(range(k), classes, rotation=90)
        ax.set_yticks(range(k), classes)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if matrix[i, j]:
                    ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center",
                            color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


def _usable(loader: DataLoader, skipped: list[str]) -> Iterator[tuple[Tensor, Tensor]]:
    """The loader's batches without their unusable images, which are appended to ``skipped``."""
    for images, labels, bad in loader:
        skipped += bad
        if len(labels):
            yield images, labels


@guarded
def main(argv: Sequence[str] | None = None) -> dict:
    p = make_parser(__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="a checkpoint written by tools/train_cls.py")
    p.add_argument("--root", default=None, help="dataset folder (default: the checkpoint config's data.root)")
    p.add_argument("--split", default=None, help="split to evaluate (default: the config's data.val_split)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the config's data.val_batch_size")
    p.add_argument("--out", default=None, help="output folder (default: <run>/eval)")
    args = add_debug_flag(p).parse_args(argv)

    cfg, model, hparams = load_model(args.ckpt)
    if cfg.task != "classification":
        raise SystemExit(f"error: {args.ckpt} holds a {cfg.task!r} model; tools/eval_cls.py evaluates classifiers")
    ckpt = Path(args.ckpt)
    default_out = (ckpt.parent.parent if ckpt.parent.name == "ckpt" else ckpt.parent) / "eval"
    out = output_folder(args.out or default_out)  # before the evaluation, not after it
    classes = [str(c) for c in hparams.get("classes") or range(model.num_classes)]
    d = cfg.data
    root = Path(args.root) if args.root else resolve_root(d)
    split = args.split or d.val_split
    dataset = read_classification_split(d.format, root, split)
    found = list(dataset.classes)  # type: ignore[attr-defined]
    if found != classes:
        raise ValueError(f"{root}/{split} has classes {found[:5]}… but the checkpoint was trained on "
                         f"{classes[:5]}… ({len(classes)} classes)")
    tf = classification_transform(d.augment, False, d.image_size, d.crop_scale, d.mean, d.std)

    # an unreadable image is left out and listed (exit status 1, commands/cli.py); the others are scored in full
    loader = DataLoader(TransformedDataset(dataset, tf, None, on_bad="drop"),
                        batch_size=args.batch_size or d.val_batch_size, num_workers=d.num_workers,
                        collate_fn=classification_eval_collate)
    skipped: list[str] = []
    res = evaluate_classifier(model, _usable(loader, skipped), len(classes))
    if res["images"] == 0:
        raise DataError(f"none of the {len(skipped)} images of {root}/{split} could be read{skipped_note(skipped)}; "
                        "run tools/check_data.py on this dataset")
    matrix = res["confusion"].numpy()
    png = plot_confusion(matrix, classes, out / "confusion.png",
                         f"{cfg.model.name} on {split}: top-1 {res['top1']:.3f} ({res['images']} images)")
    per_class = dict(zip(classes, res["per_class"]))
    print(f"{args.ckpt} on {root}/{split} ({res['images']} images, {len(classes)} classes{skipped_note(skipped)})")
    print(f"top-1 {res['top1']:.4f}  top-5 {res['top5']:.4f}")
    width = max(len(c) for c in classes)
    for c, acc in per_class.items():
        print(f"  {c:<{width}}  {acc:.4f}  ({int(matrix[classes.index(c)].sum())} images)")
    result = {"checkpoint": str(ckpt), "root": str(root), "split": split, "images": res["images"],
              "top1": res["top1"], "top5": res["top5"], "per_class": per_class, "confusion": matrix.tolist(),
              "confusion_png": str(png), "num_images": res["images"], "skipped_images": skipped}
    write_json(out / "metrics.json", result)
    print(f"wrote {out / 'metrics.json'} and {png}")
    return result


def console() -> int:
    """The ``mnv2-eval-cls`` command and ``python tools/eval_cls.py``: ``main`` with its exit status."""
    return exit_status(main(), scored=True)  # skipped images: 1 (commands/cli.py, the rule for every scoring tool)


if __name__ == "__main__":
    raise SystemExit(console())
