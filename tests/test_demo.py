"""``hopfield-gag demo`` end to end on a reduced setting (2 samples per digit / 20 grid prompts, 2 steps): the
default grid DiT and ``--model dit-digits``."""
from __future__ import annotations

import re

from hopfield_gag.cli import main


def test_demo_runs_end_to_end_and_points_to_its_report(tmp_path, capsys):
    out = tmp_path / "demo"
    status = main(["demo", "--out", str(out), "--per-class", "2", "--steps", "2", "--capture-per-class", "1",
                   "--no-progress"])
    assert status == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    report = out / "report.md"
    assert last == f"report: {report.resolve()}"
    text = report.read_text()
    from hopfield_gag.models.demo import MARKER

    assert (out / MARKER).is_file()  # marked as the demo's own, so a rerun may replace it with --force only
    assert main(["demo", "--out", str(out), "--no-progress"]) == 2 and report.read_text() == text
    for png in ("samples_dense.png", "samples_gag.png"):
        assert (out / png).stat().st_size > 100 and f"]({png})" in text
    # the grid DiT by default; both methods judged by the canvas judge (cell accuracy, exact, ...)
    assert "Model `dit-grid`" in text and "| method | cell accuracy | exact |" in text
    # both methods judged, one margin row per cross-attention layer of the DiT (4 blocks)
    assert re.search(r"^\| dense \| [01]\.\d\d \| [01]\.\d\d \|", text, re.M)
    assert re.search(r"^\| gag \| [01]\.\d\d \| [01]\.\d\d \|", text, re.M)
    rows = re.findall(r"^\| `blocks\.(\d)\.attn2` \| (\d+) \| (.*) \|$", text, re.M)
    assert [r[0] for r in rows] == ["0", "1", "2", "3"]
    for _, n, cells in rows:
        assert int(n) == 2 * 2  # 2 steps x 2 CFG branches
        fractions = [float(c.split("%")[0]) for c in cells.split(" | ")]
        # P-sharpen, P-align (proved) and the cap bound hold on every token; c >= 0 is reported, not assumed
        assert fractions[0] == fractions[1] == fractions[3] == 100.0


def test_demo_keeps_the_digit_model_available(tmp_path, capsys):
    out = tmp_path / "digits"
    assert main(["demo", "--model", "dit-digits", "--out", str(out), "--per-class", "2", "--steps", "1",
                 "--capture-per-class", "1", "--no-progress"]) == 0
    text = (out / "report.md").read_text()
    assert "Model `dit-digits`" in text and "| method | accuracy | Fréchet distance | diversity |" in text
    assert re.search(r"^\| gag \| [01]\.\d\d \| \d", text, re.M)
    assert main(["demo", "--model", "unet-grid", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "--model" in capsys.readouterr().err


# ------------------------------------------------------------------------------- --out (issue 21 item 10)
import json  # noqa: E402

import pytest  # noqa: E402

from hopfield_gag.models.demo import MARKER, DemoOutputError, prepare_output  # noqa: E402


def _previous_demo(out):
    """What a finished demo run leaves, plus a file of the user's."""
    from hopfield_gag.capture import ActivationStore

    out.mkdir()
    (out / MARKER).write_text("{}")
    for name in ("report.md", "samples_dense.png", "samples_gag.png"):
        (out / name).write_text("old " + name)
    ActivationStore.create(out / "activations", model_id="m", config_hash="c").mark_complete()
    (out / "notes.txt").write_text("the user's")
    return out


def _tree(path):
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None) for p in sorted(path.rglob("*"))}


@pytest.fixture
def no_sampling(monkeypatch):
    import hopfield_gag.models as models

    def boom(*a, **k):
        raise AssertionError("the demo started loading models before checking --out")

    monkeypatch.setattr(models, "load_model", boom)
    monkeypatch.setattr(models, "load_judge", boom)


def test_demo_refuses_a_non_empty_directory_it_did_not_write(tmp_path, capsys, no_sampling):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "activations").mkdir()
    (out / "activations" / "thesis.tex").write_text("years of work")
    (out / "report.md").write_text("my report")
    before = _tree(out)
    for extra in ([], ["--force"]):  # --force replaces only a previous *demo* output
        assert main(["demo", "--out", str(out), "--no-progress", *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not a previous demo output" in err and MARKER in err, err
    assert _tree(out) == before
    (tmp_path / "afile").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "afile")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_demo_needs_force_to_replace_its_previous_output(tmp_path, capsys, no_sampling):
    out = _previous_demo(tmp_path / "demo")
    before = _tree(out)
    assert main(["demo", "--out", str(out), "--no-progress"]) == 2
    assert "previous demo output; pass --force" in capsys.readouterr().err
    assert _tree(out) == before


def test_force_removes_only_what_the_demo_wrote(tmp_path):
    out = _previous_demo(tmp_path / "demo")
    prepare_output(out, force=True)
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "notes.txt"]
    assert (out / "notes.txt").read_text() == "the user's"
    assert "written_by" in json.loads((out / MARKER).read_text())
    # a foreign file inside the activation store: refused, nothing deleted
    out = _previous_demo(tmp_path / "demo2")
    (out / "activations" / "mine.txt").write_text("keep")
    before = _tree(out)
    with pytest.raises(DemoOutputError, match=r"activations/ holds files the demo did not write.*mine\.txt"):
        prepare_output(out, force=True)
    assert _tree(out) == before
    # a symlinked activations directory is not followed
    out = tmp_path / "demo3"
    out.mkdir()
    (out / MARKER).write_text("{}")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "shard-000000.safetensors").write_text("someone's")
    (out / "activations").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(DemoOutputError, match="not the demo's activation store"):
        prepare_output(out, force=True)
    assert (tmp_path / "elsewhere" / "shard-000000.safetensors").read_text() == "someone's"


def test_fresh_empty_or_marker_only_directories_need_no_force(tmp_path):
    assert (prepare_output(tmp_path / "new" / "deep") / MARKER).is_file()
    (tmp_path / "empty").mkdir()
    assert (prepare_output(tmp_path / "empty") / MARKER).is_file()
    assert (prepare_output(tmp_path / "empty") / MARKER).is_file()  # a run that stopped before writing


def test_run_demo_checks_its_numbers_before_any_work(tmp_path, no_sampling):
    from hopfield_gag.models.demo import run_demo

    for bad, match in ((dict(lam=-1.0), "lam"), (dict(eta=float("nan")), "eta"), (dict(per_class=1), "per_class"),
                       (dict(steps=0), "steps"), (dict(lam="10"), "lam")):
        with pytest.raises((ValueError, TypeError), match=match):
            run_demo(out=tmp_path / "o", progress=False, **bad)
    assert not (tmp_path / "o").exists()
