"""Drawing predictions on images (for ``tools/predict.py`` and notebooks): boxes with labels, and label-map overlays."""
from __future__ import annotations

import colorsys
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["class_color", "draw_detections", "overlay_segmentation", "plot_pr_curves"]


def class_color(label: int) -> tuple[int, int, int]:
    """A saturated colour per label, spread around the hue circle by the golden ratio (neighbours differ)."""
    h = (int(label) * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray | Sequence[Sequence[float]],
    labels: Sequence[int],
    scores: Sequence[float] | None = None,
    names: Sequence[str] | dict[int, str] | None = None,
    line_width: int = 2,
    track_ids: Sequence[int] | None = None,
) -> np.ndarray:
    """A copy of RGB uint8 ``image`` ``(H, W, 3)`` with xyxy ``boxes`` drawn, each captioned "name score".

    Args:
        image: the image the boxes are in (original pixels).
        boxes: ``(D, 4)`` xyxy.
        labels: ``(D,)`` class labels; colours and names are looked up by label.
        scores: ``(D,)`` confidences, printed after the name when given.
        names: label → name (a sequence indexed by label, or a dict); the label number otherwise.
        track_ids: ``(D,)`` track ids, printed after the name as ``#id`` (none for ``-1``, an unconfirmed box).
    """
    img = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    for i, (box, label) in enumerate(zip(boxes, labels)):
        label = int(label)
        color = class_color(label)
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle([x0, y0, x1, y1], outline=color, width=line_width)
        if isinstance(names, dict):
            name = names.get(label, str(label))
        elif names is not None and 0 <= label < len(names):
            name = names[label]
        else:
            name = str(label)
        if track_ids is not None and int(track_ids[i]) >= 0:
            name = f"{name} #{int(track_ids[i])}"
        text = name if scores is None else f"{name} {float(scores[i]):.2f}"
        tx0, ty0, tx1, ty1 = draw.textbbox((x0, y0), text, font=font)
        th = ty1 - ty0
        ty = y0 - th - 2 if y0 - th - 2 >= 0 else y0  # above the box when there is room
        draw.rectangle([x0, ty, x0 + (tx1 - tx0) + 4, ty + th + 2], fill=color)
        draw.text((x0 + 2, ty), text, fill=(0, 0, 0), font=font)
    return np.asarray(img)


def overlay_segmentation(image: np.ndarray, label_map: np.ndarray, palette: Sequence[int] | None = None,
                         alpha: float = 0.5, ignore_index: int = 255) -> np.ndarray:
    """Blend a ``(H, W)`` label map over RGB uint8 ``image``; background (0) and ``ignore_index`` stay unblended.

    ``palette`` is a flat list of RGB triplets indexed by label (VOC's 256-colour map by default).
    """
    if label_map.shape[:2] != image.shape[:2]:
        raise ValueError(f"label map {label_map.shape[:2]} and image {image.shape[:2]} differ in size")
    if palette is None:
        from .data.io.labels import voc_palette

        palette = voc_palette()
    lut = np.zeros((256, 3), np.uint8)
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:256]
    lut[: len(pal)] = pal
    labels = np.asarray(label_map).astype(np.int64).clip(0, 255)
    colors = lut[labels].astype(np.float32)
    blend = (1 - alpha) * image.astype(np.float32) + alpha * colors
    fg = ((labels != 0) & (labels != ignore_index))[..., None]
    return np.where(fg, blend, image.astype(np.float32)).round().astype(np.uint8)


def plot_pr_curves(pr: dict, category_names: dict[int, str], path: str, title: str = "") -> str:
    """Precision–recall curves (``evaluate_coco(...)["pr"]``): one panel per IoU threshold, one line per category
    with its AP in the legend, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("iou50", "iou75") if k in pr]
    if not keys:
        raise ValueError("no precision–recall data to plot (the evaluation had no detections)")
    recall = np.asarray(pr["recall"])
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for cat_id, precision in pr[key].items():
            p = np.asarray(precision, dtype=float)
            if np.isnan(p).all():
                continue  # no ground truth of this category
            ap = float(np.nan_to_num(p).mean())
            ax.plot(recall, np.nan_to_num(p), label=f"{category_names.get(int(cat_id), cat_id)} (AP {ap:.3f})")
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
               title=f"{title} IoU 0.{key[3:]}".strip())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    from .files import save_figure

    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return str(path)
