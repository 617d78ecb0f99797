"""Run an ablation study: every variant of a base config trained with the same seed, schedule and data.

    python tools/ablate.py --cfg shapes_bottleneck            # configs/studies/shapes_bottleneck.yaml, CPU minutes
    python tools/ablate.py --cfg cifar10_expansion --out runs/ablate/t
    python tools/ablate.py --cfg paper_fig6_shortcut --print   # list the variants and their resolved model

A study (``configs/studies/*.yaml``) names a ``base`` config, ``set`` overrides for all variants and ``variants``:
named lists of ``--set`` overrides. Each variant trains into ``<out>/<variant>/`` (a normal train_cls run folder);
then ``<out>/results.md`` (variant, params, MAdds, best and final validation top-1, wall time) and ``<out>/curves.png``
(validation top-1 per epoch, all variants) are written. A re-run skips variants already finished with the same
resolved config and retrains the others from scratch (an unfinished or changed variant's folder is replaced).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from mnv2_vision.checkpoint import build_from_config, model_kwargs
from mnv2_vision.commands.cli import add_debug_flag, exit_status, guarded, make_parser
from mnv2_vision.config import Study, load_study, to_dict
from mnv2_vision.files import save_figure, write_json, write_text
from mnv2_vision.lit.driver import train
from mnv2_vision.perf.complexity import count_madds, count_params
from mnv2_vision.lit.runfolder import RunFolder


def run_variant(study: Study, name: str, out: Path) -> dict:
    """Train one variant (or return its finished result) and add its params, MAdds and overrides to the result."""
    cfg = study.config(name)
    folder = out / name
    done = folder / "result.json"
    if done.is_file():
        previous = json.loads(done.read_text())
        if previous.get("study_config") == to_dict(cfg):
            print(f"[ablate] {name}: finished earlier, skipped ({done})", flush=True)
            return previous
        print(f"[ablate] {name}: the config changed since the last run; training again", flush=True)
    if folder.exists():
        shutil.rmtree(folder)  # an unfinished or outdated run: start clean so logs and checkpoints are this run's
    print(f"[ablate] {name}: training with {' '.join(study.common + study.variants[name]) or 'the base config'}",
          flush=True)
    result = train(cfg, folder, next_steps=False)
    model = build_from_config(cfg, num_classes=len(result["classes"]), pretrained=False)
    result.update(variant=name, overrides=list(study.variants[name]), params=count_params(model),
                  madds=count_madds(model, (cfg.data.image_size, cfg.data.image_size)), study_config=to_dict(cfg))
    write_json(done, result)  # written last: its presence marks the variant finished
    return result


def write_table(study: Study, results: list[dict], path: Path) -> Path:
    common = f", for every variant: `{' '.join(study.common)}`" if study.common else ""
    lines = [f"# Ablation study `{study.name}`", "",
             f"Base config `{study.base}`{common}. Same seed, schedule and data for every variant; top-1 on the "
             "validation split.", "",
             "| variant | overrides | params | MAdds | best top-1 | final top-1 | epochs | wall time |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        overrides = " ".join(f"`{o}`" for o in r["overrides"]) or "(base)"
        lines.append(f"| {r['variant']} | {overrides} | {r['params'] / 1e6:.3f} M | {r['madds'] / 1e6:.1f} M | "
                     f"{r['best_top1']:.4f} | {r['final_top1']:.4f} | {r['epochs']} | "
                     f"{r['wall_time_s'] / 60:.1f} min |")
    write_text(path, "\n".join(lines) + "\n")
    return path


def plot_curves(study: Study, results: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        h = r["history"]
        ax.plot([e["epoch"] for e in h], [e["top1"] for e in h], marker="o", markersize=3, label=r["variant"])
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1")
    ax.set_title(f"ablation study {study.name} (base {study.base})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


@guarded
def main(argv: Sequence[str] | None = None) -> list[dict]:
    p = make_parser(__doc__.splitlines()[0])
    p.add_argument("--cfg", required=True, help="study name in configs/studies/ or a path to a study YAML")
    p.add_argument("--out", default=None, help="study folder (default: runs/ablate/<study>)")
    p.add_argument("--only", default=None, help="comma-separated variants to run now (the table lists every finished)")
    p.add_argument("--print", action="store_true", help="print each variant's overrides and model and exit")
    args = add_debug_flag(p).parse_args(argv)
    study = load_study(args.cfg)
    names = list(study.variants)
    if args.only:
        unknown = set(args.only.split(",")) - set(names)
        if unknown:
            raise KeyError(f"--only: unknown variants {sorted(unknown)}; the study has {names}")
        names = [n for n in names if n in args.only.split(",")]
    if args.print:  # no data needed: models get model.num_classes, or 1000 when the dataset would decide
        for n in names:
            cfg = study.config(n)
            k = cfg.model.num_classes or 1000
            model, size = build_from_config(cfg, num_classes=k, pretrained=False), cfg.data.image_size
            print(f"{n}: {' '.join(study.variants[n]) or '(base)'} → {cfg.model.name} {model_kwargs(cfg.model)} at "
                  f"{size}²: {count_params(model) / 1e6:.3f} M params, {count_madds(model, (size, size)) / 1e6:.1f} M "
                  f"MAdds ({k} classes)")
        return []
    out = Path(args.out) if args.out else Path("runs") / "ablate" / study.name
    with RunFolder(out, existing_ok=True):  # one study process per folder; finished variants are kept
        results = [run_variant(study, n, out) for n in names]
        if args.only:  # the table still shows every finished variant, in study order
            for n in study.variants:
                f = out / n / "result.json"
                if n not in names and f.is_file():
                    r = json.loads(f.read_text())
                    if r.get("study_config") == to_dict(study.config(n)):
                        results.append(r)
            order = list(study.variants)
            results.sort(key=lambda r: order.index(r["variant"]))
        table = write_table(study, results, out / "results.md")
        plot_curves(study, results, out / "curves.png")
        write_json(out / "results.json", [{k: v for k, v in r.items() if k != "study_config"} for r in results])
        print(table.read_text(), end="")
        print(f"[ablate] wrote {table} and {out / 'curves.png'}")
        return results


def console() -> int:
    """The ``mnv2-ablate`` command and ``python tools/ablate.py``: ``main`` with its exit status."""
    return exit_status(main())


if __name__ == "__main__":
    raise SystemExit(console())
