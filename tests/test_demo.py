"""``hopfield-gag demo`` end to end on a reduced setting (2 samples per digit, 2 steps)."""
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
    for png in ("samples_dense.png", "samples_gag.png"):
        assert (out / png).stat().st_size > 100 and f"]({png})" in text
    # both methods judged, one margin row per cross-attention layer of the DiT (4 blocks)
    assert re.search(r"^\| dense \| [01]\.\d\d \|", text, re.M) and re.search(r"^\| gag \| [01]\.\d\d \|", text, re.M)
    rows = re.findall(r"^\| `blocks\.(\d)\.attn2` \| (\d+) \| (.*) \|$", text, re.M)
    assert [r[0] for r in rows] == ["0", "1", "2", "3"]
    for _, n, cells in rows:
        assert int(n) == 2 * 2  # 2 steps x 2 CFG branches
        fractions = [float(c.split("%")[0]) for c in cells.split(" | ")]
        # P-sharpen, P-align (proved) and the cap bound hold on every token; c >= 0 is reported, not assumed
        assert fractions[0] == fractions[1] == fractions[3] == 100.0
