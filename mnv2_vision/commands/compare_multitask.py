"""The multi-task pair against the two single-task demos on the built-in shapes, with the same step budget each.

    python tools/compare_multitask.py                                   # the pair (default sharing) vs the demos
    python tools/compare_multitask.py --sharing os32 os16 twin          # the stride-sharing trade-off table

Trains, in this process, the SSDLite demo (``ssdlite_shapes``), the DeepLab demo (``deeplabv3_shapes``) and the pair
(``multitask_shapes``, once per ``--sharing``) for ``--steps`` optimiser steps each (the configs' own schedules
stretched over that budget, no validation while training), then scores their final weights on the same ground
truth: COCO mAP on the COCO validation split for both detectors; mIoU on the VOC-layout label maps (255 boundary
bands ignored, the DeepLab demo's own metric) for both segmenters; the pair's own validation mIoU (masks painted from
the COCO instances, no boundary band) is reported too. Then parameters, MAdds and fused batch-1 latency at 320² of
the deployment-sized models (α = 1, 91 COCO / 21 VOC classes, random weights, the networks alone: post-processing is
the same after SSDLite and after the pair) on ``--threads`` threads, and the CPU time of everything (user + system
of this process). Writes ``<out>/comparison.md`` and ``<out>/comparison.json``.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from mnv2_vision.commands import eval_seg
from mnv2_vision.commands.cli import add_debug_flag, exit_status, guarded, make_parser
from mnv2_vision.config import load_config
from mnv2_vision.data.synthetic import ensure_shapes
from mnv2_vision.files import write_json, write_text
from mnv2_vision.lit.driver import train
from mnv2_vision.lit.runfolder import RunFolder
from mnv2_vision.perf.pair import pair_cost_rows

COMMON = ["data.num_workers=0"]


def _budget(cfg_name: str, steps: int, overrides: Sequence[str]) -> list[str]:
    """Overrides that stop ``cfg_name`` after exactly ``steps`` optimiser steps (its LR schedule stretched over them)
    and skip validation while training: every model is scored once, on its final weights. ``max_epochs`` covers the
    steps (the detection module sizes its warm-up in epochs, so it needs a finite epoch count)."""
    cfg = load_config(cfg_name, overrides)
    images = json.loads((ensure_shapes() / "meta.json").read_text())["counts"]["train_images"]
    per_epoch = max(1, min(images, cfg.data.subset or images) // cfg.data.batch_size)  # the last batch is dropped
    return [f"trainer.max_epochs={math.ceil(steps / per_epoch)}", f"trainer.max_steps={steps}",
            f"trainer.check_val_every_n_epoch={10 ** 6}"]


def _train(label: str, cfg_name: str, out: Path, overrides: list[str]) -> tuple[dict, float, float]:
    print(f"\n=== {label}: --cfg {cfg_name} {' '.join(f'--set {kv}' for kv in overrides)}", flush=True)
    cpu, wall = time.process_time(), time.time()
    # overwrite: a rerun of this comparison replaces its own earlier runs in --out.
    with RunFolder(out, overwrite=True) as run:
        result = train(load_config(cfg_name, [*COMMON, *overrides]), run.path, next_steps=False)
    print(f"=== {label}: {(time.process_time() - cpu) / 60:.1f} CPU min, {(time.time() - wall) / 60:.1f} min wall",
          flush=True)
    return result, time.process_time() - cpu, time.time() - wall


def _eval_seg(ckpt: Path, overrides: Sequence[str]) -> dict:
    """``eval_seg`` of ``ckpt`` with config overrides, in this process."""
    return eval_seg.main(["--ckpt", str(ckpt), *(a for kv in [*COMMON, *overrides] for a in ("--set", kv))])


@guarded
def main(argv: Sequence[str] | None = None) -> dict:
    p = make_parser(__doc__)
    p.add_argument("--steps", type=int, default=400,
                   help="optimiser steps for every model (400: the three runs fit in ~10 CPU-minutes)")
    p.add_argument("--sharing", nargs="+", default=["os32"], choices=["os32", "os16", "twin"],
                   help="stride-sharing options of the pair to train (models/multitask.py)")
    p.add_argument("--out", default="runs/compare_multitask")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads for the latency timing")
    p.add_argument("--latency-runs", type=int, default=4, help="rounds of 5 timed calls per model (0: skip)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every training run (repeatable), e.g. data.subset=16 for a smoke run")
    args = add_debug_flag(p).parse_args(argv)

    cpu0, wall0 = time.process_time(), time.time()
    out = Path(args.out)
    runs: dict[str, dict] = {}

    def budget(cfg_name: str) -> list[str]:
        return [*args.set, *_budget(cfg_name, args.steps, args.set)]

    # Detection and the pair end with a final evaluation: of the final weights here (no best without validation).
    det, cpu, wall = _train("SSDLite demo", "ssdlite_shapes", out / "ssdlite", budget("ssdlite_shapes"))
    runs["ssdlite"] = {"map": det["map"], "map50": det["map50"], "cpu_s": cpu, "wall_s": wall}
    _, cpu, wall = _train("DeepLab demo", "deeplabv3_shapes", out / "deeplab", budget("deeplabv3_shapes"))
    cpu_eval = time.process_time()
    seg = _eval_seg(out / "deeplab" / "ckpt" / "last.ckpt", args.set)
    runs["deeplab"] = {"miou_voc": seg["miou"], "cpu_s": cpu + time.process_time() - cpu_eval, "wall_s": wall}
    for sharing in args.sharing:
        run_dir = out / f"pair_{sharing}"
        mt, cpu, wall = _train(f"pair, sharing {sharing}", "multitask_shapes", run_dir,
                               [*budget("multitask_shapes"), f"model.sharing={sharing}"])
        # The same label maps the DeepLab demo is scored on: the VOC layout of the same validation scenes.
        voc = _eval_seg(run_dir / "ckpt" / "last.ckpt", ["data.masks=null", "data.seg_root=shapes", *args.set])
        runs[f"pair {sharing}"] = {"map": mt["map"], "map50": mt["map50"], "miou_voc": voc["miou"],
                                   "miou_painted": mt["miou"], "cpu_s": cpu, "wall_s": wall}
    train_cpu = time.process_time() - cpu0
    both: dict[str, float] = {}
    if args.latency_runs > 0:
        print(f"\n=== latency and complexity at 320² ({args.threads} threads)", flush=True)
        speed = pair_cost_rows(args.sharing, args.threads, args.latency_runs)
        for name, row in speed.items():
            runs.setdefault(name, {}).update(row)
        both = {k: speed["ssdlite"][k] + speed["deeplab"][k] for k in ("params_m", "madds_b", "fused_ms")}
    ratios = {}
    for name, r in runs.items():
        if name.startswith("pair"):
            ratios[name] = {"map / ssdlite": r["map"] / max(runs["ssdlite"]["map"], 1e-12),
                            "miou_voc / deeplab": r["miou_voc"] / max(runs["deeplab"]["miou_voc"], 1e-12)}
            if both:
                ratios[name].update({"fused_ms / (ssdlite + deeplab)": r["fused_ms"] / both["fused_ms"],
                                     "madds / ssdlite": r["madds_b"] / runs["ssdlite"]["madds_b"]})
    total_cpu = time.process_time() - cpu0
    result = {"steps": args.steps, "threads": args.threads, "runs": runs, "ssdlite + deeplab": both,
              "ratios": ratios, "train_cpu_min": train_cpu / 60, "total_cpu_min": total_cpu / 60,
              "total_wall_min": (time.time() - wall0) / 60, "command": " ".join(["python tools/compare_multitask.py",
                                                                                *(argv or sys.argv[1:])])}
    table = _table(result)
    print("\n" + table)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "comparison.md", table + "\n")
    write_json(out / "comparison.json", result, indent=1)
    print(f"wrote {out / 'comparison.md'} and {out / 'comparison.json'}")
    return result


def _table(result: dict) -> str:
    def f(v, fmt):
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    lines = [f"{result['steps']} steps each on the shapes; params / MAdds / fused network latency (batch 1) at 320² "
             f"with α = 1 and COCO / VOC heads ({result['threads']} threads)",
             "| model | params (M) | MAdds (B) | fused ms | mAP | mAP50 | mIoU (VOC maps) | mIoU (painted) | "
             "train CPU min |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    both = result["ssdlite + deeplab"]
    rows = [("SSDLite demo", result["runs"]["ssdlite"]), ("DeepLab demo", result["runs"]["deeplab"]),
            ("SSDLite + DeepLab, one after the other", {**both, "cpu_s": None}),
            *((k, v) for k, v in result["runs"].items() if k.startswith("pair"))]
    for name, r in rows:
        cpu = r.get("cpu_s")
        lines.append(f"| {name} | {f(r.get('params_m'), '.2f')} | {f(r.get('madds_b'), '.3f')} | "
                     f"{f(r.get('fused_ms'), '.1f')} | {f(r.get('map'), '.3f')} | {f(r.get('map50'), '.3f')} | "
                     f"{f(r.get('miou_voc'), '.3f')} | {f(r.get('miou_painted'), '.3f')} | "
                     f"{f(cpu / 60 if cpu is not None else None, '.1f')} |")
    lines.append("")
    for name, r in result["ratios"].items():
        lines.append(f"- {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()))
    lines.append(f"- CPU time (user + system) of the whole run: {result['total_cpu_min']:.1f} min "
                 f"(training and scoring {result['train_cpu_min']:.1f} min); wall {result['total_wall_min']:.1f} min; "
                 f"torch threads {torch.get_num_threads()}")
    return "\n".join(lines)


def console() -> int:
    """The ``mnv2-compare-multitask`` command and ``python tools/compare_multitask.py``: ``main``, exit status."""
    return exit_status(main())


if __name__ == "__main__":
    raise SystemExit(console())
