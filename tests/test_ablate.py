"""tools/ablate.py: a tiny study end to end (table, plot, skipping finished variants) and every shipped study file."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnv2_vision.checkpoint import build_from_config
from mnv2_vision.config import ConfigError, config_dir, load_study
from mnv2_vision.perf.complexity import count_madds, count_params

from helpers import tool as _tool


@pytest.mark.parametrize("path", sorted((config_dir() / "studies").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_studies_resolve(path):
    study = load_study(path)
    assert len(study.variants) >= 2
    for name in study.variants:
        assert study.config(name).task == "classification"


def _write_data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for split in ("train", "val"):
        for k, name in enumerate(("dark", "light")):
            (root / split / name).mkdir(parents=True)
            for i in range(6):
                arr = np.full((32, 32, 3), 40 + 170 * k, np.uint8)
                arr[i * 4:(i + 1) * 4] = 128
                Image.fromarray(arr).save(root / split / name / f"{i}.jpg")
    return root


def _write_study(path: Path, root: Path, t_small: int) -> Path:
    path.write_text(
        "base: mobilenet_v2_shapes\n"
        f"set: [data.synthetic=false, data.root={root}, data.image_size=32, model.width_mult=0.35,\n"
        "      trainer.max_epochs=2, trainer.check_val_every_n_epoch=1, data.batch_size=6, data.val_batch_size=12]\n"
        "variants:\n"
        "  paper: []\n"
        f"  small_t: [model.expand_ratio={t_small}]\n")
    return path


def test_tiny_study_table_plot_and_skip(tmp_path, capsys):
    ablate = _tool("ablate")
    out = tmp_path / "out"
    root = _write_data(tmp_path)
    study_path = _write_study(tmp_path / "tiny.yaml", root, 2)
    results = ablate.main(["--cfg", str(study_path), "--out", str(out)])
    assert [r["variant"] for r in results] == ["paper", "small_t"]
    study = load_study(study_path)
    table = (out / "results.md").read_text()
    for r in results:
        model = build_from_config(study.config(r["variant"]), num_classes=2, pretrained=False)
        assert r["params"] == count_params(model) and r["madds"] == count_madds(model, (32, 32))
        assert len(r["history"]) == 2 and r["best_top1"] == max(h["top1"] for h in r["history"])
        row = next(line for line in table.splitlines() if line.startswith(f"| {r['variant']} |"))
        assert f"{r['params'] / 1e6:.3f} M" in row and f"{r['best_top1']:.4f}" in row
        assert f"{r['final_top1']:.4f}" in row
    assert results[1]["params"] < results[0]["params"]  # t = 2 is smaller than the paper's t = 6
    assert Image.open(out / "curves.png").format == "PNG"

    # a re-run trains nothing; changing one variant retrains only that one
    stamps = {v: (out / v / "result.json").stat().st_mtime_ns for v in ("paper", "small_t")}
    capsys.readouterr()
    again = ablate.main(["--cfg", str(study_path), "--out", str(out)])
    log = capsys.readouterr().out
    assert log.count("finished earlier, skipped") == 2 and "training with" not in log
    assert [r["best_top1"] for r in again] == [r["best_top1"] for r in results]
    assert {v: (out / v / "result.json").stat().st_mtime_ns for v in stamps} == stamps
    _write_study(study_path, root, 3)
    changed = ablate.main(["--cfg", str(study_path), "--out", str(out)])
    log = capsys.readouterr().out
    assert "paper: finished earlier, skipped" in log and "small_t: the config changed" in log
    assert (out / "paper" / "result.json").stat().st_mtime_ns == stamps["paper"]
    assert changed[1]["params"] != results[1]["params"]
    assert json.loads((out / "results.json").read_text())[1]["overrides"] == ["model.expand_ratio=3"]


def test_study_errors_name_file_and_variant(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: mobilenet_v2_shapes\nvariants:\n  ok: []\n  typo: [model.shortcuts=none]\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: variant 'typo'.*model\.shortcuts"):
        load_study(bad)
    bad.write_text("base: mobilenet_v2_shapes\nvariant:\n  ok: []\n")
    with pytest.raises(ConfigError, match="keys base, set"):
        load_study(bad)
    with pytest.raises(ConfigError, match="study not found"):
        load_study("no_such_study")
