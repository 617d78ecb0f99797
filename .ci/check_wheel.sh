#!/usr/bin/env bash
# The wheel as a user gets it: build it, install it into a fresh venv outside the source tree, and use it from
# there — a console command with a named config (configs ship inside the wheel), a tiny training run, and a
# predictor call on its checkpoint. Called by .ci/run after the test suite (make wheel-check).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$repo/.venv/bin/python" -m pip wheel --no-deps --no-build-isolation -q -w "$work/dist" "$repo"
wheel="$(ls "$work"/dist/mnv2_vision-*.whl)"
echo "wheel: $(basename "$wheel") ($(unzip -l "$wheel" | tail -1 | awk '{print $2}') files, configs: $(unzip -l "$wheel" | grep -c 'configs/.*\.yaml'))"

"$python" -m venv "$work/venv"
"$work/venv/bin/pip" install -q --upgrade pip
"$work/venv/bin/pip" install -q "$wheel"

cd "$work"  # nothing of the source tree on the path
export MNV2_CACHE="${MNV2_CACHE:-$repo/.cache}"
"$work/venv/bin/mnv2-train-det" --cfg ssdlite_shapes --print-config | grep -q "synthetic: true"
"$work/venv/bin/mnv2-train-det" --cfg ssdlite_shapes --out "$work/run" --set data.subset=8 \
    --set data.image_size=64 --set model.width_mult=0.35 --set trainer.max_epochs=1 --set data.num_workers=0 \
    --set data.batch_size=4 > "$work/train.log" 2>&1 || { tail -20 "$work/train.log"; exit 1; }
"$work/venv/bin/python" - "$work/run" "$repo/tools" <<'PY'
import sys
from pathlib import Path

from importlib.metadata import entry_points

import mnv2_vision
from mnv2_vision.data.synthetic import ensure_shapes

run = Path(sys.argv[1])
assert "site-packages" in mnv2_vision.__file__, mnv2_vision.__file__
commands = [e for e in entry_points(group="console_scripts") if e.name.startswith("mnv2-")]
for e in commands:  # every console command imports from the installed package
    assert callable(e.load()), e
tools = {p.stem for p in Path(sys.argv[2]).glob("*.py")}
names = {e.name[len("mnv2-"):].replace("-", "_") for e in commands}
assert tools <= names, f"tools without a console command: {sorted(tools - names)}"
model = mnv2_vision.load(run / "ckpt" / "last.ckpt")
image = sorted((ensure_shapes() / "coco" / "val2017").glob("*.jpg"))[0]
[result] = model.predict(image)
assert {"boxes", "scores", "labels", "names", "category_ids"} <= set(result), sorted(result)
assert result["boxes"].shape[1:] == (4,) and len(result["names"]) == len(result["labels"])
print(f"wheel check: {len(commands)} console commands, mnv2-train-det and mnv2_vision.load work from "
      f"{mnv2_vision.__file__}: {model}, "
      f"{len(result['boxes'])} detections on {image.name}")
PY
