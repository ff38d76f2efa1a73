"""The command line as a user meets it (issue 21 item 11, issue 18 step 3): every user error is one line on
stderr and exit status 2, found before any expensive work; closed pipes end quietly; help is plain text and
complete."""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hopfield_gag.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_expensive_work(monkeypatch):
    """Every route to real work raises: a test passing with it proves the error came first."""
    import hopfield_gag.models as models
    import hopfield_gag.models.denoisers as denoisers
    import hopfield_gag.models.demo as demo
    import hopfield_gag.studies.figures as figures

    def boom(*a, **k):
        raise AssertionError("expensive work started before the arguments were checked")

    for mod, name in ((models, "load_model"), (models, "load_judge"), (denoisers, "load_denoiser"),
                      (demo, "run_demo"), (figures, "make_all")):
        monkeypatch.setattr(mod, name, boom)


def _one_line(capsys, *needles):
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hopfield-gag: error: "), cap.err
    for needle in needles:
        assert re.search(needle, lines[0]), (needle, lines[0])
    assert "Traceback" not in cap.err
    return lines[0]


CAPTURE = ["capture", "--model", "dit-digits", "--steps", "2"]
BAD_ARGS = [
    (["demo", "--lam", "-1"], r"--lam: must be a finite number >= 0, got '-1'"),
    (["demo", "--eta", "nan"], r"--eta: must be a finite number > 0, got 'nan'"),
    (["demo", "--eta", "0"], r"--eta: must be a finite number > 0"),
    (["demo", "--zeta", "2"], r"--zeta: must be a finite number >= 0 and <= 1"),
    (["demo", "--steps", "0"], r"--steps: must be an int >= 1, got '0'"),
    (["demo", "--per-class", "1"], r"--per-class: must be an int >= 2"),
    (["demo", "--cfg-scale", "inf"], r"--cfg-scale: must be a finite number"),
    (["demo", "--seed", "1.5"], r"--seed: must be an int >= 0"),
    (CAPTURE[:-1] + ["0", "--out", "X"], r"--steps: must be an int >= 1, got '0'"),
    (CAPTURE[:-1] + ["two", "--out", "X"], r"--steps: must be an int >= 1, got 'two'"),
    (CAPTURE + ["--out", "X", "--window", "a,b"], r"--window: .*fraction in \[0, 1\].*'a,b'"),
    (CAPTURE + ["--out", "X", "--window", "0.5"], r"--window: .*fraction"),
    (CAPTURE + ["--out", "X", "--window", "0.8,0.2"], r"--window: START must be below STOP"),
    (CAPTURE + ["--out", "X", "--heads", "0,x"], r"--heads: must be comma-separated ints.*'0,x'"),
    (CAPTURE + ["--out", "X", "--heads", "1,1"], r"--heads: indices must be distinct"),
    (CAPTURE + ["--out", "X", "--batch", "0"], r"--batch: must be an int >= 1, got '0'"),
    (CAPTURE + ["--out", "X", "--tokens", "-3"], r"--tokens: must be an int >= 1"),
    (CAPTURE + ["--out", "X", "--memory-budget", "0"], r"--memory-budget: must be a finite number > 0"),
    (CAPTURE + ["--out", "X", "--cfg", "nan"], r"--cfg: must be a finite number"),
    (CAPTURE + ["--out", "X", "--labels", "3,12"], r"--labels: must be comma-separated ints in \[0, 10\)"),
    (CAPTURE + ["--out", "X", "--layers", "blocks.(0"], r"--layers: 'blocks.\(0' is not a valid regular expression"),
    (CAPTURE + ["--out", "X", "--compute", "nope"], r"--compute: invalid choice: 'nope'"),
    (CAPTURE + ["--out", "X", "--dtype", "int8"], r"--dtype: invalid choice"),
    (CAPTURE + ["--out", "X", "--batch", "2"], r"--batch applies to diffusers model directories"),
    (["capture", "--steps", "2"], r"required: --model, --out"),
    (["figures", "--only", "nope"], r"unknown figure function\(s\) nope; expected some of .*fig_anderson"),
    (["selfcheck", "--seed", "x"], r"--seed: must be an int >= 0"),
    (["selfcheck", "--only", "nope"], r"unknown check\(s\): nope"),
    (["store"], r"required: <store command>"),
    (["store", "info"], r"required: dir"),
    (["nope"], r"invalid choice: 'nope'"),
    ([], r"required: <command>"),
]


@pytest.mark.parametrize("argv,message", BAD_ARGS, ids=[" ".join(a) or "nothing" for a, _ in BAD_ARGS])
def test_bad_arguments_are_one_line_and_status_2_before_any_work(argv, message, tmp_path, monkeypatch, capsys,
                                                                   no_expensive_work):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    _one_line(capsys, message)
    assert list(tmp_path.iterdir()) == [], "nothing may be written on a user error"


# ----------------------------------------------------------------------------------- capture inputs
def _model_dir(tmp_path, config, weights=True, pipeline=False):
    d = tmp_path / "model"
    d.mkdir()
    if config is not None:
        (d / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if weights:
        (d / "diffusion_pytorch_model.safetensors").write_bytes(b"not really")
    if pipeline:
        (d / "model_index.json").write_text("{}")
    return d


@pytest.mark.parametrize("case,config,weights,pipeline,message", [
    ("not json", "{not json", True, False, r"config\.json is not valid JSON"),
    ("json list", "[1, 2]", True, False, r"names class None; supported denoisers"),
    ("unsupported class", {"_class_name": "VQModel"}, True, False, r"names class 'VQModel'; supported"),
    ("no weights", {"_class_name": "UNet2DConditionModel"}, False, False, r"holds no weights"),
    ("no config", None, True, False, r"no config\.json"),
    ("pipeline dir", {"_class_name": "UNet2DConditionModel"}, True, True, r"is a diffusers \*pipeline\* directory"),
])
def test_capture_model_directory_problems_are_named_before_loading(case, config, weights, pipeline, message,
                                                                    tmp_path, capsys, no_expensive_work):
    model = _model_dir(tmp_path, config, weights, pipeline)
    out = tmp_path / "out"
    assert main(["capture", "--model", str(model), "--steps", "2", "--out", str(out)]) == 2
    _one_line(capsys, message, r"--model")
    assert not out.exists()


def test_capture_model_path_that_is_not_a_directory(tmp_path, capsys, no_expensive_work):
    assert main(["capture", "--model", str(tmp_path / "nowhere"), "--steps", "2", "--out", str(tmp_path / "o")]) == 2
    _one_line(capsys, r"expected a shipped model name")


def test_capture_weights_diffusers_cannot_load_are_one_line(tmp_path, capsys):
    """A config and a weights file that diffusers rejects: still one line and status 2 (no traceback)."""
    pytest.importorskip("diffusers")
    model = _model_dir(tmp_path, {"_class_name": "UNet2DConditionModel"})
    assert main(["capture", "--model", str(model), "--steps", "2", "--out", str(tmp_path / "o")]) == 2
    _one_line(capsys, r"diffusers could not load the UNet2DConditionModel")
    assert not (tmp_path / "o").exists()


def test_capture_out_is_checked_before_the_model_is_loaded(tmp_path, capsys, no_expensive_work):
    (tmp_path / "file").write_text("mine")
    assert main(CAPTURE + ["--out", str(tmp_path / "file")]) == 2
    _one_line(capsys, r"exists and is not a directory")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("mine")
    assert main(CAPTURE + ["--out", str(tmp_path / "folder")]) == 2
    _one_line(capsys, r"not empty and holds no activation store")
    from hopfield_gag.capture import ActivationStore

    ActivationStore.create(tmp_path / "store", model_id="m", config_hash="c")
    assert main(CAPTURE + ["--out", str(tmp_path / "store")]) == 2
    _one_line(capsys, r"already holds a capture; pass --resume")
    assert (tmp_path / "file").read_text() == "mine" and (tmp_path / "folder" / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------------------- pipes
PIPE_SCRIPT = """
import os, sys
from hopfield_gag.cli import main
codes = []
for argv in ([\"selfcheck\", \"--list\"], [\"store\", \"info\", \"--json\", sys.argv[1]]):
    r, w = os.pipe()  # `... | head` whose reader has already left: every write fails with EPIPE
    os.close(r)
    os.dup2(w, 1)
    os.close(w)
    codes.append(main(argv))
print(\"codes\", codes, file=sys.stderr)
"""


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`hopfield-gag selfcheck --list | head` and `hopfield-gag store info --json DIR | head`: no
    BrokenPipeError, neither from the command nor from the interpreter's last flush."""
    from hopfield_gag.capture import ActivationStore

    ActivationStore.create(tmp_path / "s", model_id="m", config_hash="c")
    proc = subprocess.run([sys.executable, "-c", PIPE_SCRIPT, str(tmp_path / "s")], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "codes [0, 0]", proc.stderr


# ------------------------------------------------------------------------------------------ help
def _subparsers(parser, prefix=()):
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subparsers(sub, prefix + (name,))


SUBCOMMANDS = [" ".join(p) for p, _ in _subparsers(build_parser())]


def test_every_subcommand_and_argument_has_help():
    missing = []
    for prefix, parser in _subparsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{' '.join(prefix)} {c.dest}" for c in action._choices_actions if not c.help]
            elif not (action.help or "").strip():
                missing.append(f"{' '.join(prefix)} {action.dest}")
    assert not missing, f"no help: {missing}"
    assert {"capture", "store info", "store verify", "demo", "figures", "selfcheck"} <= set(SUBCOMMANDS)


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_is_plain_text(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*command.split(), "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: hopfield-gag")
    rst = re.findall(r"``|:(?:func|mod|class|meth|math|data):`|\.\. \w+::", text)
    assert not rst, f"RST markup in `{command} --help`: {rst}"


def test_the_entry_point_and_module_run(tmp_path, monkeypatch, capsys):
    """pyproject's console script names hopfield_gag.cli:main; `python -m hopfield_gag.cli` runs it too."""
    import runpy

    text = (REPO / "pyproject.toml").read_text()
    assert 'hopfield-gag = "hopfield_gag.cli:main"' in text
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["hopfield-gag", "demo", "--steps", "0"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("hopfield_gag.cli", run_name="__main__")
    assert exc.value.code == 2
    _one_line(capsys, r"--steps: must be an int >= 1")
    assert list(tmp_path.iterdir()) == []
