"""Smoke test of tools/benchmark.py at tiny sizes: every row present, numbers sane. No timed assertions."""
import json
from pathlib import Path

import pytest
import torch

from mnv2_vision.perf import network as bench
from mnv2_vision.perf.timing import matmul_madd_rate, time_round_robin
from mnv2_vision.models import build_model

from helpers import tool as _tool

VARIANTS = ("eager", "fused", "onnxruntime fp32", "onnxruntime int8")


def _pair_checkpoint(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    """A train_multitask-style checkpoint of a small pair (α = 0.35, 5 + 5 classes, trained at 64²)."""
    from mnv2_vision.config import load_config, to_dict

    cfg = load_config("multitask_shapes", ["model.num_classes=5", "model.seg_num_classes=5", "model.width_mult=0.35",
                                           "data.image_size=64"])
    pair = build_model(cfg.model.name, num_classes=5, seg_num_classes=5, width_mult=0.35)
    ckpt = tmp_path / "pair.ckpt"
    torch.save({"hyper_parameters": {"config": to_dict(cfg)},
                "state_dict": {f"model.{k}": v for k, v in pair.state_dict().items()}}, ckpt)
    return ckpt, pair


def test_benchmark_tool_rows(tmp_path, shapes_root):
    out = tmp_path / "bench.json"
    ckpt, pair = _pair_checkpoint(tmp_path)
    _tool("benchmark").main(["--det-size", "64", "--seg-size", "65", "--runs", "1", "--warmup", "0",
                             "--calib-images", "1", "--peers", "--data", "--data-images", "1", "--no-memory",
                             "--matmul-size", "256", "--json", str(out), "--topk", "20", "--detections", "10",
                             "--mt-ckpt", str(ckpt)])
    result = json.loads(out.read_text())
    rows = {(r["model"], r["variant"]): r for r in result["latency"]}
    expected = [(m, v) for m in ("ssdlite320_mobilenet_v2", "deeplabv3_mobilenet_v2 (lite)") for v in VARIANTS]
    expected += [(f"{m} (torchvision)", "eager") for m in ("ssdlite320_mobilenet_v3_large", "lraspp_mobilenet_v3_large",
                                                           "deeplabv3_mobilenet_v3_large")]
    # --mt-ckpt: the pair's network at its training size, next to SSDLite and DeepLab of its width and classes.
    tag = " @64 (pair.ckpt)"
    expected += [(m + tag, v) for m in ("ssdlite320_deeplabv3_mobilenet_v2 (os32)", "deeplabv3_mobilenet_v2 (lite)",
                                        "ssdlite320_mobilenet_v2") for v in VARIANTS[:3]]
    assert sorted(rows) == sorted(expected)
    pair_row = rows[(f"ssdlite320_deeplabv3_mobilenet_v2 (os32){tag}", "fused")]
    det_row = rows[(f"ssdlite320_mobilenet_v2{tag}", "fused")]
    seg_row = rows[(f"deeplabv3_mobilenet_v2 (lite){tag}", "fused")]
    assert pair_row["params_m"] == pytest.approx(sum(p.numel() for p in pair.parameters()) / 1e6, abs=1e-6)
    assert result["ratios"][f"multitask fused / (ssdlite + deeplab fused, one after the other){tag}"] == \
        pytest.approx(pair_row["median_ms"] / (det_row["median_ms"] + seg_row["median_ms"]), rel=1e-6)
    madds_ratio = result["ratios"][f"multitask MAdds / ssdlite MAdds{tag}"]
    assert madds_ratio == pytest.approx(pair_row["madds_b"] / det_row["madds_b"], rel=1e-6) and 1.0 < madds_ratio < 1.3
    # Parameter counts are independent of the input size: docs/design.md#check-figures.
    assert rows[("ssdlite320_mobilenet_v2", "eager")]["params_m"] == pytest.approx(4.50, abs=0.01)
    assert rows[("deeplabv3_mobilenet_v2 (lite)", "fused")]["params_m"] == pytest.approx(2.11, abs=0.01)
    assert rows[("lraspp_mobilenet_v3_large (torchvision)", "eager")]["params_m"] == pytest.approx(3.22, abs=0.01)
    assert rows[("deeplabv3_mobilenet_v3_large (torchvision)", "eager")]["params_m"] == pytest.approx(11.03, abs=0.01)
    for r in rows.values():
        assert r["median_ms"] > 0 and r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
        # x_floor is rounded in the JSON
        assert r["floor_ms"] > 0 and r["x_floor"] == pytest.approx(r["median_ms"] / r["floor_ms"], rel=0.02)
        assert r["madds_b"] > 0
    # MAdds scale with the input area (64² vs 320²): 0.804 B · (64/320)² ≈ 0.032 B (+ the extras' fixed 1×1 maps).
    assert 0.025 < rows[("ssdlite320_mobilenet_v2", "eager")]["madds_b"] < 0.045
    assert result["floor"]["matmul_gmadds_per_s"] > 1.0
    assert result["floor"]["postprocess"]["topk_candidates"] == 20
    assert set(result["ratios"]) >= {"ssdlite onnxruntime fp32 / floor", "ssdlite int8 / fp32 (onnxruntime)",
                                     "ssdlite fused / torchvision ssdlite320_mobilenet_v3_large",
                                     "deeplab fused / torchvision lraspp_mobilenet_v3_large"}
    assert all(v > 0 for v in result["ratios"].values())
    pipelines = result["data_pipeline"]
    assert len(pipelines) >= 6 and all(r["candidates"]["ours"]["images_per_s"] > 0 for r in pipelines.values())
    assert all(r["ratios"] and all(v > 0 for v in r["ratios"].values()) for r in pipelines.values())
    assert result["machine"]["threads"] == 2
    kernels = result["onnxruntime_fp32_kernels"]
    assert sorted(kernels) == ["deeplabv3_mobilenet_v2 (lite)", "ssdlite320_mobilenet_v2"]
    for name, parts in kernels.items():
        convs = {r["part"]: r for r in parts if r["madds"] is not None}
        assert set(convs) == {"conv 1×1", "conv depthwise", "conv other"}
        # Executed MAdds: the model's, plus ONNX Runtime's channel padding (a few per cent), never less.
        executed = sum(r["madds"] for r in convs.values()) / 1e9
        fp32 = rows[(name, "onnxruntime fp32")]["madds_b"]
        assert fp32 <= executed < 1.15 * fp32
        assert all(r["of_matmul_rate"] == pytest.approx(r["gmadds_per_s"] / result["floor"]["matmul_gmadds_per_s"])
                   for r in convs.values())
    assert any(r["part"] == "NonMaxSuppression" for r in kernels["ssdlite320_mobilenet_v2"])


def test_training_throughput_and_timing_helpers():
    model = build_model("ssdlite320_mobilenet_v2", num_classes=4, width_mult=0.35)
    before = [p.detach().clone() for p in model.parameters()]
    ips = bench.training_throughput(model, None, batch=2, size=64, rounds=1, block=2, warmup=0)
    assert set(ips) == {"ours", "ours NCHW"} and ips["ours"] > 0 and ips["ours NCHW"] > 0
    assert not model.training  # left in eval mode
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the step really updated
    # trained as DetectionModule trains on a CPU: channels-last parameters
    assert model.backbone.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    calls = []
    timing = time_round_robin({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, runs=3, warmup=1)
    assert calls == ["a", "b"] * 4  # interleaved rounds
    assert timing["a"]["runs"] == 3 and timing["a"]["median_ms"] >= 0
    assert len(timing["a"]["samples_ms"]) == 3 and sorted(timing["a"]["samples_ms"])[1] == timing["a"]["median_ms"]
    calls.clear()
    timing = time_round_robin({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, runs=2, warmup=0,
                              block=3)
    assert calls == ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3  # blocks of 3, the first of each untimed
    assert timing["a"]["runs"] == timing["b"]["runs"] == 4
    with pytest.raises(ValueError, match="block"):
        time_round_robin({"a": lambda: None}, block=0)
    assert matmul_madd_rate(size=128, runs=2) > 1e6


def test_synthetic_targets_are_valid_boxes():
    targets = bench.synthetic_targets(3, 100, num_classes=5)
    for t in targets:
        b = t["boxes"]
        assert b.shape == (3, 4) and (b[:, 2:] > b[:, :2]).all() and (b >= 0).all() and (b <= 100).all()
        assert ((t["labels"] >= 1) & (t["labels"] <= 4)).all()


def test_isolated_training_throughput_runs_each_candidate_in_its_own_process():
    ips = bench.isolated_training_throughput(("ours", "ours NCHW"), batch=2, size=64, rounds=1, steps=1, warmup=0)
    assert set(ips) == {"ours", "ours NCHW"} and all(v > 0 for v in ips.values())
    with pytest.raises(ValueError, match="unknown training candidates"):
        bench.training_steps(build_model("ssdlite320_mobilenet_v2", num_classes=3, width_mult=0.35), None,
                             only=("theirs",))



def test_runtime_tables_one_per_model_with_consistent_ratios(tmp_path, shapes_root, capsys):
    """--runtimes-only at tiny sizes: one table per model with the PyTorch CPU graph and each installed format in
    fp32 and int8 (OpenVINO where installed; else skipped with its extra), the LR-ASPP peer in DeepLab's; every
    ratio the quotient of the table's own numbers; fp32 outputs equal eager."""
    from mnv2_vision.perf.formats import available
    from mnv2_vision.perf.runtimes import PEER, PYTORCH, TARGETS

    out = tmp_path / "runtimes.json"
    _tool("benchmark").main(["--runtimes-only", "--formats", "onnxruntime,openvino", "--det-size", "64",
                             "--seg-size", "65", "--runs", "2", "--warmup", "0", "--block", "2", "--calib-images", "1",
                             "--matmul-size", "256", "--topk", "20", "--detections", "10", "--json", str(out)])
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    rt = result["runtimes"]
    usable, skipped = available(["onnxruntime", "openvino"])
    assert rt["formats"] == usable and sorted(rt["skipped"]) == sorted(skipped)
    assert all("pip install 'mnv2_vision[" in line for line in rt["skipped"].values())
    assert list(rt["tables"]) == ["ssdlite", "deeplab", "pair"]
    assert printed.count("| runtime | ms (median) |") == 3
    rate = rt["matmul_gmadds_per_s"] * 1e9
    for key, table in rt["tables"].items():
        rows = {r["runtime"]: r for r in table["rows"]}
        expected = [PYTORCH] + [f"{f} {p}" for f in usable for p in ("fp32", "int8")] + ([PEER] if key == "deeplab"
                                                                                        else [])
        assert list(rows) == expected
        assert table["input"] == ([65, 65] if key == "deeplab" else [64, 64])
        assert table["floor_ms"] == pytest.approx(table["madds_b"] * 1e9 / rate * 1e3, rel=1e-9)
        for name, r in rows.items():
            assert 0 < r["p10_ms"] <= r["median_ms"] <= r["p90_ms"] and r["post_ms"] > 0
            assert r["x_floor"] == pytest.approx(r["median_ms"] / (r["madds_b"] * 1e9 / rate * 1e3), rel=1e-9)
            if r["precision"] == "int8":
                fp32 = rows[name.replace("int8", "fp32")]
                assert r["int8_over_fp32"] == pytest.approx(r["median_ms"] / fp32["median_ms"], rel=1e-9)
                assert 0 < r["rel_diff"] < 1.0  # quantisation error, not garbage
            else:
                assert r["int8_over_fp32"] is None
                if name != PEER:
                    assert r["rel_diff"] <= 1e-4, (key, name)  # the same network, to float rounding
        if key == "deeplab":  # the peer: torchvision's LR-ASPP has fewer MAdds than DeepLab-lite at the same size
            assert rows[PEER]["rel_diff"] is None and 0 < rows[PEER]["madds_b"] < table["madds_b"]
        else:
            assert all(r["madds_b"] == table["madds_b"] for r in rows.values())
    # MAdds scale with the input area: SSDLite 0.804 B at 320² → ≈ 0.032 B at 64² (+ the extras' fixed 1×1 maps).
    assert 0.025 < rt["tables"]["ssdlite"]["madds_b"] < 0.045
    assert rt["tables"]["ssdlite"]["madds_b"] < rt["tables"]["pair"]["madds_b"]
    targets = rt["targets"]
    for key, (floor_max, int8_max) in TARGETS.items():
        rows = [r for r in rt["tables"][key]["rows"] if r["runtime"] != PEER]
        fastest = min(r["median_ms"] for r in rows if r["precision"] == "fp32")
        t = targets[f"{key} fp32 × floor"]
        assert t["value"] == min(r["x_floor"] for r in rows if r["precision"] == "fp32") and t["limit"] == floor_max
        t = targets[f"{key} int8 / fastest fp32"]
        assert t["value"] == pytest.approx(min(r["median_ms"] for r in rows if r["precision"] == "int8") / fastest)
        assert t["limit"] == int8_max
    deeplab = {r["runtime"]: r for r in rt["tables"]["deeplab"]["rows"]}
    t = targets["deeplab pytorch cpu graph / lraspp"]
    assert t["value"] == pytest.approx(deeplab[PYTORCH]["median_ms"] / deeplab[PEER]["median_ms"]) and t["limit"] == 0.8
    assert all(t["holds"] == (t["value"] <= t["limit"]) for t in targets.values())
    assert result["machine"]["threads"] == 2 and "onnxruntime" in result["machine"]


def test_runtime_formats_registry_rejects_unknown_names():
    from mnv2_vision.perf.formats import FORMATS, available
    from mnv2_vision.perf.runtimes import runtime_tables

    assert sorted(FORMATS) == ["litert", "onnxruntime", "openvino"]
    with pytest.raises(ValueError, match="unknown runtime formats"):
        available(["onnxruntime", "tensorrt"])
    with pytest.raises(ValueError, match="unknown models"):
        runtime_tables(["yolo"], 64, 64, ["onnxruntime"], None, 1, 1, 1, 0, 1, 64, Path("."))


@pytest.mark.slow
def test_runtime_tables_litert_rows(tmp_path, shapes_root):
    """The LiteRT entry (litert-torch conversion, ~1 min a file; the int8 graph quantised end to end, its input and
    outputs (de)quantised by the runner): DeepLab-lite's fp32 file gives the eager logits, int8 a small error."""
    pytest.importorskip("litert_torch", reason="the litert extra (litert-torch, ai-edge-litert) is not installed")
    pytest.importorskip("ai_edge_litert", reason="the litert extra (litert-torch, ai-edge-litert) is not installed")
    from mnv2_vision.ops.postprocess import PostprocessSettings
    from mnv2_vision.perf.runtimes import PYTORCH, runtime_tables

    result = runtime_tables(["deeplab"], 64, 65, ["litert"], PostprocessSettings(0.001, 0.6, 20, 10), 1, 1, 1, 0, 1,
                            128, tmp_path, peer=False)
    rows = {r["runtime"]: r for r in result["tables"]["deeplab"]["rows"]}
    assert list(rows) == [PYTORCH, "litert fp32", "litert int8"] and result["skipped"] == {}
    assert rows["litert fp32"]["rel_diff"] <= 1e-4
    assert 1e-6 < rows["litert int8"]["rel_diff"] < 0.2  # quantised (not the fp32 graph), and not garbage
    assert rows["litert int8"]["int8_over_fp32"] == pytest.approx(
        rows["litert int8"]["median_ms"] / rows["litert fp32"]["median_ms"])
