"""Render a run's curves (loss, learning rate, validation metrics) from its CSV log to a PNG.

    python tools/plot_logs.py runs/ssdlite_shapes            # writes runs/ssdlite_shapes/curves.png
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from mnv2_vision.commands.cli import add_debug_flag, exit_status, guarded, make_parser
from mnv2_vision.files import save_figure

# The validation panel holds the 0..1 metrics (mAP, mIoU, accuracy) on one axis: a count on it (val/num_images 96,
# the multi-task run's val/num_seg_images 16) flattened every curve to a line at 0, so counts (``num_*``), losses,
# per-class columns and any column with a value outside [0, 1] are left out of it.
PANELS = (
    ("loss", lambda k: k.startswith("train/loss") or k == "val/loss"),
    ("learning rate", lambda k: k.startswith("lr-")),
    ("validation", lambda k: k.startswith("val/") and k != "val/loss" and not k.split("/")[-1].startswith("num_")
     and "/ap_" not in k and "/iou_" not in k and "/acc_" not in k),
)
UNIT_PANELS = ("validation",)  # panels whose curves must all lie in [0, 1]


def panel_columns(series: dict[str, list[tuple[int, float]]]) -> list[tuple[str, list[str]]]:
    """``[(panel title, its columns), ...]`` for the panels that have any: ``PANELS``' picks, and in
    ``UNIT_PANELS`` only the columns whose every value lies in [0, 1]."""
    panels = []
    for title, pick in PANELS:
        keys = sorted(k for k in series if pick(k))
        if title in UNIT_PANELS:
            keys = [k for k in keys if all(0.0 <= y <= 1.0 for _, y in series[k])]
        if keys:
            panels.append((title, keys))
    return panels


def read_metrics(path: Path) -> dict[str, list[tuple[int, float]]]:
    """``metrics.csv`` → {column: [(step, value), ...]} for every numeric, non-empty cell."""
    series: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = int(float(row.get("step") or 0))
            for k, v in row.items():
                if k in ("step", "epoch") or v in (None, ""):
                    continue
                try:
                    x = float(v)
                except ValueError:
                    continue
                if math.isfinite(x):
                    series.setdefault(k, []).append((step, x))
    return series


@guarded
def main(argv: Sequence[str] | None = None) -> Path:
    p = make_parser(__doc__)
    p.add_argument("run_dir", help="a run folder written by tools/train_*.py (holds metrics.csv)")
    p.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/curves.png)")
    args = add_debug_flag(p).parse_args(argv)
    run = Path(args.run_dir)
    csv_path = run / "metrics.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"no metrics.csv in {run} (is it a run folder of tools/train_*.py?)")
    series = read_metrics(csv_path)
    panels = panel_columns(series)
    if not panels:
        raise FileNotFoundError(f"{csv_path} holds no loss, learning-rate or validation columns yet")
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for k in keys:
            xs, ys = zip(*series[k])
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=k)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(run.name)
    fig.tight_layout()
    out = Path(args.out) if args.out else run / "curves.png"
    save_figure(fig, out, dpi=100)
    plt.close(fig)
    print(f"wrote {out}")
    return out


def console() -> int:
    """The ``mnv2-plot-logs`` command and ``python tools/plot_logs.py``: ``main`` with its exit status."""
    return exit_status(main())


if __name__ == "__main__":
    raise SystemExit(console())
