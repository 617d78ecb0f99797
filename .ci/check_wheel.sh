#!/usr/bin/env bash
# The README's install lines as a new user runs them, and their result used. A `git clone` of this repository (its
# committed HEAD: commit first) into a temp folder, a fresh venv made there, then exactly the documented commands:
# `pip install .` from the clone; then the wheel, built in the clone and installed. After each, from outside the
# clone: every console command loads, a named config comes from the installed package, a tiny training run (after
# the first) and a predictor call on its checkpoint. Everything the lines write into the clone must be git-ignored
# (`pip wheel .` without --no-deps once dropped 76 dependency wheels, 3 GB, into the repo root).
# Called by .ci/run (make wheel-check). `bash .ci/check_wheel.sh --print-lines` prints the documented lines, one a
# line, for a docs test to find them in the docs.
set -euo pipefail

# ------------------------------------------------------------------------------------------- the documented lines
# From a clone (`git clone <URL> mnv2_vision && cd mnv2_vision`), in this order:
VENV_LINES=('python3 -m venv .venv' '. .venv/bin/activate')
# A CPU-only machine first installs the CPU build of torch (PyPI's default is the ~6 GB CUDA build). Not run here:
# this machine cannot reach download.pytorch.org (its local index serves the CUDA build).
CPU_TORCH_LINE='pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu'
CLONE_INSTALL_LINES=('pip install .')
# The wheel, built in the clone (into dist/, without the dependencies' wheels) and installed:
WHEEL_LINES=('pip wheel --no-deps -w dist .' 'pip install dist/mnv2_vision-*.whl')

if [ "${1:-}" = "--print-lines" ]; then
  printf '%s\n' "${VENV_LINES[@]}" "$CPU_TORCH_LINE" "${CLONE_INSTALL_LINES[@]}" "${WHEEL_LINES[@]}"
  exit 0
fi

repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
log="$work/install.log"
export MNV2_CACHE="${MNV2_CACHE:-$repo/.cache}"

run_documented() {  # each line exactly as written, in the current shell (the venv stays active); output to the log
  local line
  for line in "$@"; do
    echo "\$ $line"
    eval "$line" >> "$log" 2>&1 || { echo "failed: $line"; tail -30 "$log"; exit 1; }
  done
}

use_installed() {  # $1: a run folder holding ckpt/last.ckpt; run from outside the clone
  (cd "$work" && python - "$1" "$repo/tools" <<'PY'
import sys
from importlib.metadata import entry_points
from pathlib import Path

import mnv2_runtime
import mnv2_vision
from mnv2_vision.data.synthetic import ensure_shapes

run = Path(sys.argv[1])
assert "site-packages" in mnv2_vision.__file__, mnv2_vision.__file__
# the runtime without PyTorch ships inside the package too (mnv2_vision imports its metadata rules and pipeline)
runtime = Path(mnv2_runtime.__file__).parent
assert "site-packages" in str(runtime) and (runtime / "backends" / "onnx.py").is_file(), runtime
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
print(f"  {len(commands)} console commands and mnv2_vision.load work from {mnv2_vision.__file__}: {model}, "
      f"{len(result['boxes'])} detections on {image.name}")
PY
  )
  (cd "$work" && mnv2-train-det --cfg ssdlite_shapes --print-config | grep -q "synthetic: true")
}

only_ignored_files() {  # what the documented lines wrote into the clone is git-ignored
  local left
  left="$(git -C "$clone" status --porcelain)"
  [ -z "$left" ] || { echo "the install lines left files git does not ignore in the clone:"; echo "$left"; exit 1; }
}

clone="$work/mnv2_vision"
git clone -q "$repo" "$clone"
cd "$clone"
echo "in a clone of $repo ($(git rev-parse --short HEAD)), a fresh venv:"
run_documented "${VENV_LINES[@]}"
echo "(not run here: $CPU_TORCH_LINE)"
run_documented "${CLONE_INSTALL_LINES[@]}"
only_ignored_files
(cd "$work" && mnv2-train-det --cfg ssdlite_shapes --out "$work/run" --set data.subset=8 --set data.image_size=64 \
    --set model.width_mult=0.35 --set trainer.max_epochs=1 --set data.num_workers=0 --set data.batch_size=4 \
    > "$work/train.log" 2>&1) || { tail -20 "$work/train.log"; exit 1; }
use_installed "$work/run"

pip uninstall -y -q mnv2_vision  # the same venv: the wheel must install the package afresh
run_documented "${WHEEL_LINES[@]}"
wheel="$(ls dist/mnv2_vision-*.whl)"
echo "  wheel: $(basename "$wheel") ($(unzip -l "$wheel" | tail -1 | awk '{print $2}') files, configs:" \
     "$(unzip -l "$wheel" | grep -c 'configs/.*\.yaml')); dist/ holds $(ls dist | wc -l) file(s)"
[ "$(ls dist | wc -l)" = 1 ] || { echo "pip wheel wrote more than the package's wheel: $(ls dist)"; exit 1; }
only_ignored_files
use_installed "$work/run"
echo "wheel check: the documented install lines work from a clone"
