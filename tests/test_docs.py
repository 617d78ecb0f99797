"""Every code block of README.md and docs/ runs, or says why it cannot (issue #24).

Each fenced ``python``, ``bash``, ``sh`` or ``console`` block either carries a visible note right above it (in docs/
an admonition ``!!! note "Not run in the tests"``, in the README a quote ``> **Not run in the tests:** ...``) whose
text gives the reason, or it runs here:

- a Python block is executed;
- a shell block is read command by command: ``python tools/<tool>.py ...``, ``mnv2-<tool> ...`` and ``python -m
  mnv2_vision...`` run in this process through the function the script and the console command call (``console()``
  of ``mnv2_vision/commands/<tool>.py``), so a documented command with a stale flag, config name or path fails here;
  every command must exit 0. ``mkdir -p``, ``touch`` and ``&&`` are understood; any other command needs the note;
- a console block (``$ command`` lines, each followed by its output) also checks that every output line shown
  appears in what the command printed (``...`` stands for any text), and ``$ echo $?`` the exit status before it.

The blocks run in a scratch folder standing in for a user's: ``HOME`` points into it, so ``~/.cache/mnv2_vision`` (the
shapes cache) holds a small copy of the built-in shapes dataset there; a ``runs/<config>/ckpt/last.ckpt`` a block
names is a checkpoint of that config written as training writes it (random weights, width 0.35, the shapes'
classes) next to a small ``metrics.csv``; an image file a block names is one of the shapes' validation images.
Blocks run in the order of their page (one may read what the one before it wrote, e.g. an exported model); blocks
that read ``$MNV2_REAL_DATA`` skip without it.
"""
from __future__ import annotations

import importlib
import os
import re
import runpy
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from mnv2_vision.checkpoint import build_from_config
from mnv2_vision.config import list_configs, load_config, to_dict
from mnv2_vision.data.synthetic import VERSION, generate_shapes

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
RUNNABLE = ("python", "bash", "sh", "console")
NOTE = "Not run in the tests"
SHAPE_NAMES = ("circle", "square", "star", "triangle")  # the shapes dataset's classes, COCO ids 1, 3, 4, 7
REAL = os.environ.get("MNV2_REAL_DATA")


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    note: str | None  # the text of the "Not run in the tests" note above the block, if any

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def _note_above(lines: list[str], fence: int) -> str | None:
    """The reason given by a "Not run in the tests" note in the paragraph right above line ``fence`` (0-based):
    an admonition header followed by its indented text, or a quote whose first line names the note."""
    end = fence
    while end > 0 and not lines[end - 1].strip():
        end -= 1
    start = end
    while start > 0 and lines[start - 1].strip():
        start -= 1
    chunk = [line.strip() for line in lines[start:end]]
    if not chunk:
        return None
    if chunk[0].startswith(f'!!! note "{NOTE}"'):
        return " ".join(chunk[1:]).strip() or None
    if all(line.startswith(">") for line in chunk) and f"**{NOTE}:**" in chunk[0]:
        text = " ".join(line.lstrip("> ") for line in chunk)
        return text.split(f"**{NOTE}:**", 1)[1].strip() or None
    return None


def blocks_of(page: Path) -> list[Block]:
    """The fenced blocks of ``page`` in a language this test runs (indented fences inside list items included)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^(\s*)```\s*([\w-]*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = len(m.group(1)), m.group(2).lower(), i
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        i += 1
        if lang in RUNNABLE:
            blocks.append(Block(page, start + 1, lang, "\n".join(body) + "\n", _note_above(lines, start)))
    return blocks


ALL_BLOCKS = [b for page in PAGES for b in blocks_of(page)]
RUN_BLOCKS = [b for b in ALL_BLOCKS if b.note is None]


# ---------------------------------------------------------------------------------------------- the pages themselves
def test_readme_is_short_and_its_first_screen_has_no_dated_timings():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move details to docs/"
    dated = [line for line in lines[:30] if re.search(r"\b20\d\d-\d\d-\d\d\b", line)]
    assert not dated, f"README's first screen carries dated figures: {dated}"


def test_notes_give_a_reason_and_name_existing_tests():
    assert RUN_BLOCKS and len(RUN_BLOCKS) < len(ALL_BLOCKS)
    for block in ALL_BLOCKS:
        if block.note is None:
            continue
        assert len(block.note) >= 20, f"{block.name}: the note must say why the block cannot run here"
        for path, name in re.findall(r"(tests/test_\w+\.py)(?:::(\w+))?", block.note):
            assert (REPO / path).is_file(), f"{block.name}: its note names {path}, which does not exist"
            if name:
                assert f"def {name}(" in (REPO / path).read_text(), f"{block.name}: no test {name} in {path}"


def test_the_site_lists_every_page_and_every_module():
    """mkdocs.yml's nav holds every page of docs/, the API pages name modules that exist, and every module of the
    package and of the runtime (runtime/mnv2_runtime) but the tools' own code appears on an API page (``mkdocs build
    --strict`` runs in ``.ci/run``)."""
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())

    def pages(nav):
        for item in nav:
            values = item.values() if isinstance(item, dict) else [item]
            for v in values:
                yield from pages(v) if isinstance(v, list) else [v]

    listed = set(pages(config["nav"]))
    on_disk = {str(p.relative_to(REPO / "docs")) for p in (REPO / "docs").rglob("*.md")}
    assert listed == on_disk, f"not in the nav: {on_disk - listed}; missing files: {listed - on_disk}"
    documented = set()
    for page in (REPO / "docs" / "api").glob("*.md"):
        for module in re.findall(r"^::: ([\w.]+)$", page.read_text(), flags=re.M):
            path = REPO / ("runtime/" if module.startswith("mnv2_runtime") else "") / module.replace(".", "/")
            assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file(), f"{page.name}: {module}"
            documented.add(module)
    modules = set()
    for root, package in ((REPO, "mnv2_vision"), (REPO / "runtime", "mnv2_runtime")):  # runtime/: its own package
        modules |= {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
                    for p in (root / package).rglob("*.py") if p.stat().st_size and "commands" not in p.parts}
    modules -= {"mnv2_vision", "mnv2_vision.version", "mnv2_runtime.version"}
    assert not modules - documented, f"add these modules to a page of docs/api/: {sorted(modules - documented)}"


def test_the_install_lines_are_the_ones_the_wheel_check_runs():
    """Getting started shows, in order and to the letter, the install lines ``.ci/check_wheel.sh`` runs from a fresh
    clone (it prints them with ``--print-lines``): the documented route is the tested one."""
    import subprocess

    lines = subprocess.run(["bash", str(REPO / ".ci" / "check_wheel.sh"), "--print-lines"], capture_output=True,
                           text=True, check=True).stdout.splitlines()
    assert "pip install ." in lines and "pip wheel --no-deps -w dist ." in lines
    shown = [line.split("   #")[0].strip() for b in blocks_of(REPO / "docs" / "getting-started.md") if b.lang == "bash"
             for line in b.code.splitlines()]
    found = [line for line in shown if line in lines]
    assert found == lines, f"docs/getting-started.md should show these lines in this order: {lines}; it shows {found}"


def test_code_cites_the_papers_and_the_design_notes_not_a_missing_spec():
    pattern = "spec " + "§"  # built here so that this file does not cite it
    cited = [f"{p.relative_to(REPO)}:{n}" for folder in ("mnv2_vision", "tools", "tests", "configs")
             for p in sorted((REPO / folder).rglob("*")) if p.suffix in (".py", ".yaml")
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern in line]
    assert not cited, f"cite the paper's section or docs/design.md#anchor instead: {cited}"


# ---------------------------------------------------------------------------------------------- the scratch folder
@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A user's folder: ``home/.cache/mnv2_vision`` holds a small shapes dataset under the cache's own name."""
    root = tmp_path_factory.mktemp("docs")
    generate_shapes(root / "home" / ".cache" / "mnv2_vision" / f"shapes-v{VERSION}-seed0", num_train=4, num_val=4,
                    num_cls_train=2, num_cls_val=2)
    (root / "work").mkdir()
    return root


def _shapes(scratch: Path) -> Path:
    return scratch / "home" / ".cache" / "mnv2_vision" / f"shapes-v{VERSION}-seed0"


def _write_run(run: Path, name: str, shapes: Path) -> None:
    """``run/ckpt/last.ckpt`` of config ``name`` as a training tool writes it (random weights), and a metrics.csv."""
    base = load_config(name)
    task = base.task
    sets = ["model.width_mult=0.35", f"model.num_classes={4 if task == 'classification' else 5}",
            "data.num_workers=0"]
    if not base.data.synthetic:
        folder = {"voc": "VOC2012", "imagefolder": "classification"}.get(base.data.format, "coco")
        sets += ["model.pretrained=null", f"data.root={shapes / folder}"]
    if task == "multitask":
        sets += ["model.seg_num_classes=5", "data.masks=all", "data.seg_root=null"]
    cfg = load_config(name, sets)
    model = build_from_config(cfg, pretrained=False)
    names = ["background", *SHAPE_NAMES]
    hparams = {"classification": {"classes": list(SHAPE_NAMES)}, "segmentation": {"class_names": names}}.get(
        task, {"category_ids": [1, 3, 4, 7], "category_names": list(SHAPE_NAMES)})
    if task == "multitask":
        hparams["class_names"] = names
    (run / "ckpt").mkdir(parents=True)
    torch.save({"hyper_parameters": {"config": to_dict(cfg), **hparams},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, run / "ckpt" / "last.ckpt")
    (run / "metrics.csv").write_text("epoch,step,train/loss,lr-AdamW,val/map\n0,9,2.5,0.01,\n0,9,,,0.1\n"
                                     "1,19,1.5,0.005,\n1,19,,,0.3\n")


def _prepare(block: Block, scratch: Path) -> None:
    """Create what the block reads and would find on a user's machine: the runs and the images it names."""
    work, shapes = scratch / "work", _shapes(scratch)
    configs = set(list_configs())
    for name in set(re.findall(r"\bruns/(\w+)", block.code)) & configs:  # a config's default run folder
        if not (work / "runs" / name / "ckpt").exists():
            _write_run(work / "runs" / name, name, shapes)
    image = sorted((shapes / "coco" / "val2017").glob("*.jpg"))[0]
    for name in re.findall(r"[\"'\s]([\w.-]+\.jpg)\b", block.code):
        if not (work / name).exists():
            shutil.copy(image, work / name)


# ---------------------------------------------------------------------------------------------- running the blocks
class Shell:
    """Runs the commands of a shell or console block in this process; ``output`` holds what each printed."""

    def __init__(self, block: Block, capfd) -> None:
        self.block, self.capfd = block, capfd
        self.env: dict[str, str] = {}
        self.status = 0

    def expand(self, token: str) -> str:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in self.env.items():
                mp.setenv(k, v)
            return os.path.expanduser(os.path.expandvars(token))

    def run(self, tokens: list[str]) -> tuple[int, str]:
        """Run one command (a list of words, ``&&`` allowed) → (exit status, what it printed)."""
        self.capfd.readouterr()
        status = 0
        while tokens and status == 0:
            command, tokens = (tokens[:tokens.index("&&")], tokens[tokens.index("&&") + 1:]) if "&&" in tokens \
                else (tokens, [])
            status = self._one(command)
        out = self.capfd.readouterr()
        return status, out.out + out.err

    def _one(self, words: list[str]) -> int:
        if words == ["echo", "$?"]:
            print(self.status)
            return 0
        env = {}
        while words and re.match(r"^[A-Za-z_]\w*=", words[0]):
            key, value = words.pop(0).split("=", 1)
            env[key] = self.expand(value)
        if words[:1] == ["export"]:
            for word in words[1:]:
                key, value = word.split("=", 1)
                self.env[key] = self.expand(value)
            return 0
        words = [self.expand(w) for w in words]
        if words[:2] == ["mkdir", "-p"]:
            for w in words[2:]:
                Path(w).mkdir(parents=True, exist_ok=True)
            return 0
        if words[:1] == ["touch"]:
            for w in words[1:]:
                Path(w).touch()
            return 0
        with pytest.MonkeyPatch.context() as mp:
            for k, v in {**self.env, **env}.items():
                mp.setenv(k, v)
            if words[0] in ("python", "python3") and words[1:2] == ["-m"]:
                mp.setattr(sys, "argv", [words[2], *words[3:]])
                return _exit_code(lambda: runpy.run_module(words[2], run_name="__main__", alter_sys=True))
            if words[0] in ("python", "python3") and re.fullmatch(r"tools/\w+\.py", words[1]):
                assert (REPO / words[1]).is_file(), f"{self.block.name}: no {words[1]}"
                tool, args = Path(words[1]).stem, words[2:]
            elif words[0].startswith("mnv2-"):
                tool, args = {"profile": "complexity"}.get(words[0][5:], words[0][5:].replace("-", "_")), words[1:]
                assert f'"{words[0][5:]}"' in (REPO / "setup.py").read_text() or words[0] == "mnv2-profile", \
                    f"{self.block.name}: {words[0]} is no console command of setup.py"
            else:
                raise AssertionError(f"{self.block.name}: cannot run `{' '.join(words)}` in the tests; give the block "
                                     f'a `!!! note "{NOTE}"` saying why')
            console = importlib.import_module(f"mnv2_vision.commands.{tool}").console
            mp.setattr(sys, "argv", [words[1] if words[0].startswith("python") else words[0], *args])
            return _exit_code(console)


def _exit_code(call) -> int:
    try:
        result = call()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def _shell_commands(code: str) -> list[tuple[str, list[str]]]:
    """(command line, expected output lines) of a shell block: its lines, continuations joined, no output shown."""
    out: list[tuple[str, list[str]]] = []
    pending = ""
    for raw in code.splitlines():
        line = pending + raw
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        out.append((line, []))
    return out


def _console_commands(code: str) -> list[tuple[str, list[str]]]:
    """(command line, expected output lines) of a console block: each ``$ `` line and the lines after it."""
    out: list[tuple[str, list[str]]] = []
    for line in code.splitlines():
        if line.startswith("$ "):
            out.append((line[2:], []))
        elif out:
            out[-1][1].append(line)
    return out


def _shown(expected: str, printed: str) -> bool:
    """Whether the output line ``expected`` (``...`` for any text) is one of the lines ``printed``."""
    pattern = ".*".join(re.escape(part) for part in expected.strip().split("..."))
    return any(re.fullmatch(pattern, line.strip()) for line in printed.splitlines())


def _run_shell(block: Block, capfd) -> None:
    shell = Shell(block, capfd)
    commands = _console_commands(block.code) if block.lang == "console" else _shell_commands(block.code)
    unchecked, printed = None, ""
    for line, expected in commands:
        tokens = shlex.split(line, comments=True)
        if not tokens:
            continue
        status, printed = shell.run(tokens)
        if tokens == ["echo", "$?"]:
            assert expected and expected[0].strip() == str(shell.status), \
                f"{block.name}: exit status {shell.status}, the page shows {expected[:1]}"
            unchecked = None
            continue
        assert unchecked is None, f"{block.name}: `{unchecked}` exited with {shell.status}\n{printed[-3000:]}"
        shell.status = status
        if status != 0:
            unchecked = line
        missing = [e for e in expected if e.strip() and not _shown(e, printed)]
        assert not missing, f"{block.name}: `{line}` did not print {missing}; it printed:\n{printed[-3000:]}"
    assert unchecked is None, f"{block.name}: `{unchecked}` exited with {shell.status}\n{printed[-3000:]}"


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=[b.name for b in RUN_BLOCKS])
def test_block_runs(block, scratch, capfd, monkeypatch):
    if "$MNV2_REAL_DATA" in block.code and not REAL:
        pytest.skip("reads the real subsets: MNV2_REAL_DATA is not set")
    monkeypatch.setenv("HOME", str(scratch / "home"))
    for var in ("MNV2_CACHE", "MNV2_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(scratch / "work")
    _prepare(block, scratch)
    if block.lang == "python":
        exec(compile(block.code, block.name, "exec"), {"__name__": "__main__"})
    else:
        _run_shell(block, capfd)
