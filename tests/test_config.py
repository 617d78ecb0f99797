"""Config: YAML + dataclasses, --set overrides with precedence, clear errors that name the key."""
import subprocess
import sys
from pathlib import Path

import pytest

from mnv2_vision.checkpoint import model_kwargs
from mnv2_vision.commands.cli import base_parser, guarded, setup_run
from mnv2_vision.lit.runfolder import write_config
from mnv2_vision.config import (Config, ConfigError, config_from_dict, list_configs, load_config, save_config,
                                to_dict)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list_configs())
def test_every_shipped_config_validates(name):
    cfg = load_config(name)
    model_kwargs(cfg.model)  # every set model field applies to the named builder


def test_precedence(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 0.5\ndata:\n  batch_size: 7\n")
    assert Config().optim.lr == 0.01
    cfg = load_config(f)
    assert cfg.optim.lr == 0.5 and cfg.data.batch_size == 7 and cfg.optim.momentum == 0.9
    cfg = load_config(f, ["optim.lr=0.1", "optim.lr=0.2"])
    assert cfg.optim.lr == 0.2 and cfg.data.batch_size == 7


def test_set_parses_and_checks_types():
    cfg = load_config(None, ["optim.lr=1", "data.mean=[0.5, 0.5, 0.5]", "model.num_classes=null",
                             "trainer.devices=2", "data.root=2017", "eval.ms_scales=[1, 1.5]"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.data.mean == (0.5, 0.5, 0.5) and cfg.model.num_classes is None
    assert cfg.trainer.devices == 2 and cfg.data.root == "2017" and cfg.eval.ms_scales == (1.0, 1.5)
    with pytest.raises(ConfigError, match=r"data\.batch_size.*expected int.*'abc'"):
        load_config(None, ["data.batch_size=abc"])
    with pytest.raises(ConfigError, match=r"data\.batch_size.*expected int"):
        load_config(None, ["data.batch_size=2.5"])
    with pytest.raises(ConfigError, match=r"data\.mean.*3 values"):
        load_config(None, ["data.mean=[1, 2]"])
    with pytest.raises(ConfigError, match=r"trainer\.deterministic.*expected bool"):
        load_config(None, ["trainer.deterministic=3"])


def test_unknown_keys_name_the_key_and_suggest():
    with pytest.raises(ConfigError, match=r"'optim\.lrr'.*did you mean lr"):
        load_config(None, ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"'optimm'.*did you mean optim"):
        load_config(None, ["optimm.lr=0.1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["optim.lr"])
    with pytest.raises(ConfigError, match=r"optim\.name='adam'"):
        load_config(None, ["optim.name=adam"])


def test_unknown_key_in_file_names_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("data:\n  batchsize: 3\n")
    with pytest.raises(ConfigError, match=r"data\.batchsize.*bad\.yaml.*batch_size"):
        load_config(f)


def test_missing_config_name_lists_available():
    with pytest.raises(ConfigError, match=r"no config named 'ssdlite_cocoo'"):
        load_config("ssdlite_cocoo")


def test_model_field_that_does_not_apply_is_an_error():
    cfg = load_config(None, ["model.name=mobilenet_v2", "model.aspp=full"])
    with pytest.raises(ConfigError, match=r"model\.aspp='full' does not apply to model 'mobilenet_v2'"):
        model_kwargs(cfg.model)


def test_round_trip(tmp_path):
    cfg = load_config(None, ["optim.lr=0.3", "eval.ms_scales=[1.0]", "model.pretrained=/x/y.pth"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(path) == cfg
    assert config_from_dict(to_dict(cfg)) == cfg


def test_cli_setup_run_saves_resolved_config(tmp_path, capsys):
    args = base_parser("t").parse_args(["--cfg", str(_write(tmp_path)), "--set", "seed=3",
                                        "--out", str(tmp_path / "o")])
    cfg, run = setup_run(args)
    with run:
        assert not (run.path / "config.yaml").exists()  # written once the data is found (write_config)
        write_config(cfg, run.path)
    assert cfg.seed == 3 and load_config(tmp_path / "o" / "config.yaml").seed == 3
    printed = capsys.readouterr().out
    assert "seed: 3" not in printed and f"config: {tmp_path / 'o' / 'config.yaml'}" in printed  # one line, no dump
    with pytest.raises(SystemExit) as e:  # --print-config still shows the whole resolved config
        setup_run(base_parser("t").parse_args(["--cfg", str(_write(tmp_path)), "--set", "seed=3", "--print-config"]))
    assert e.value.code == 0 and "seed: 3" in capsys.readouterr().out


def test_cli_errors_exit_nonzero_with_message(tmp_path, capsys):
    @guarded
    def main(argv=None):
        return setup_run(base_parser("t").parse_args(argv))

    for argv, needle in ((["--cfg", "no_such_config"], "no_such_config"),
                         (["--cfg", str(_write(tmp_path)), "--set", "optim.lrr=1"], "optim.lrr"),
                         (["--cfg", str(_write(tmp_path)), "--set", "optim.lr=fast"], "optim.lr")):
        with pytest.raises(SystemExit) as e:
            main(argv + ["--out", str(tmp_path / "o")])
        assert e.value.code == 2
        assert needle in capsys.readouterr().err


def test_profile_tool_rejects_unknown_argument():
    r = subprocess.run([sys.executable, str(ROOT / "tools/complexity.py"), "mobilenet_v2", "--set", "widht=1"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "widht" in r.stderr


def test_profile_tool_prints_counts():
    r = subprocess.run([sys.executable, str(ROOT / "tools/complexity.py"), "mobilenet_v2", "--set", "width_mult=0.5"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "params: 1,968,680" in r.stdout and "features.18" not in r.stdout
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line.startswith("layer")}
    assert list(rows) == [f"layer{i}" for i in range(1, 20)]  # the documented tap names, layer1 = the stem conv
    assert rows["layer1"][1] == "16×112×112" and rows["layer19"][1] == "1280×7×7"  # width 0.5: 32·0.5 = 16



def test_complexity_table_rows_add_up_for_a_detector():
    # SSDLite walks the body block by block to reach the expansion tap; every block's MAdds still count (they
    # used to show 0 from layer3 on).
    from mnv2_vision.models import build_model
    from mnv2_vision.perf.complexity import profile_model

    prof = profile_model(build_model("ssdlite320_mobilenet_v2", num_classes=91), (320, 320))
    rows = {r.name: r for r in prof.rows}
    assert rows["backbone.layer15"].out_shape == (1, 160, 10, 10) and rows["backbone.layer15"].madds > 0
    assert sum(r.madds for r in prof.rows) == prof.madds == 804_397_504  # docs: 0.804 B MAdds at 320²


def _write(tmp_path):
    f = tmp_path / "base.yaml"
    f.write_text("task: classification\n")
    return f


def test_tools_start_despite_profile_name():
    # `python tools/X.py` puts tools/ first on sys.path: no tool may share a name with a standard library module
    # that torch imports (tools/profile.py did, through cProfile; it is tools/complexity.py now).
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "plot_logs.py"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, 'tools'); import torch._dynamo, profile; "
                        "assert hasattr(profile, 'Profile'), profile"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]


def test_export_int8_max_drop_is_a_validated_key():
    assert Config().export.int8_max_drop == 0.01  # tools/export.py's gate unless the config or --int8-max-drop says
    assert load_config(None, ["export.int8_max_drop=0.03"]).export.int8_max_drop == 0.03
    with pytest.raises(ConfigError, match=r"export\.int8_max_drop must be in \[0, 1\], got -0\.5"):
        load_config(None, ["export.int8_max_drop=-0.5"])
    with pytest.raises(ConfigError, match=r"'export\.int8_max_dorp'.*did you mean int8_max_drop"):
        load_config(None, ["export.int8_max_dorp=0.1"])
    # a checkpoint's config from before the key existed reads with the default
    old = {k: v for k, v in to_dict(Config()).items() if k != "export"}
    assert config_from_dict(old).export.int8_max_drop == 0.01
