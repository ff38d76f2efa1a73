"""study_guidance: APG against hand-computed cases and CFG, the study on a tiny grid (CSV columns, pairing,
paired deltas), the variant grid and pruning rule, the attention maps and the where-it-helps figure."""
import csv
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from hopfield_gag.studies.apg import APG
from hopfield_gag.studies.guidance import (
    GUIDANCE_COLUMNS,
    GuidanceConfig,
    GuidedVariant,
    Variant,
    _NoiseProbe,
    full_variant_grid,
    headline,
    plot_where_it_helps,
    prune_variants,
    study_guidance,
)


# ------------------------------------------------------------------------------------------------ APG
def test_apg_hand_computed_projection():
    # t = 0, x = 0: x1 = v. diff = (1, -1); x1_c = (1, 0) -> parallel (1, 0), orthogonal (0, -1).
    # eta = 0: x1 = x1_u + w * (0, -1) = (0, 1 - w); w = 2 -> (0, -1); v = x1 / (1 - 0)
    apg = APG(eta=0.0, momentum=0.0)
    v_c = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    v_u = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    out = apg(v_u, v_c, 2.0, torch.zeros(1, 2, dtype=torch.float64), 0.0)
    assert torch.equal(out, torch.tensor([[0.0, -1.0]], dtype=torch.float64))


def test_apg_hand_computed_momentum_threshold_and_time():
    # step 1 at t = 0.5 with x = (0, 0): x1 = 0.5 v. x1_c = (1, 0), x1_u = (0, 0): diff (1, 0), all parallel.
    # eta = 0.5: update = 0.5 * (1, 0); x1 = (0, 0) + 2 * (0.5, 0) = (1, 0); v = x1 / 0.5 = (2, 0)
    apg = APG(eta=0.5, momentum=-0.5, norm_threshold=0.0)
    x = torch.zeros(1, 2, dtype=torch.float64)
    out = apg(torch.zeros(1, 2, dtype=torch.float64), torch.tensor([[2.0, 0.0]], dtype=torch.float64), 2.0, x, 0.5)
    assert torch.allclose(out, torch.tensor([[2.0, 0.0]], dtype=torch.float64), rtol=0, atol=1e-15)
    # step 2 at t = 0: diff (0, 2) with x1_c = (0, 2); momentum: running = (0, 2) - 0.5 * (1, 0) = (-0.5, 2)
    # parallel to (0, 1): (0, 2); orthogonal (-0.5, 0); update = (-0.5, 0) + 0.5 * (0, 2) = (-0.5, 1)
    # x1 = x1_u + 2 * update = (0, 0) + (-1, 2)
    out = apg(torch.zeros(1, 2, dtype=torch.float64), torch.tensor([[0.0, 2.0]], dtype=torch.float64), 2.0, x, 0.0)
    assert torch.allclose(out, torch.tensor([[-1.0, 2.0]], dtype=torch.float64), rtol=0, atol=1e-15)
    # norm threshold r = 0.5 on diff (3, 4) (norm 5): diff -> (0.3, 0.4); eta = 1 keeps everything
    apg = APG(eta=1.0, momentum=0.0, norm_threshold=0.5)
    out = apg(torch.zeros(1, 2, dtype=torch.float64), torch.tensor([[3.0, 4.0]], dtype=torch.float64), 1.0, x, 0.0)
    assert torch.allclose(out, torch.tensor([[0.3, 0.4]], dtype=torch.float64), rtol=0, atol=1e-15)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), w=st.floats(0.0, 8.0), t=st.floats(0.0, 0.95))
def test_apg_without_projection_momentum_or_cap_is_cfg(seed, w, t):
    # eta = 1, no momentum, no cap: x1_u + w (x1_c - x1_u) mapped back to velocity = v_u + w (v_c - v_u)
    g = torch.Generator().manual_seed(seed)
    v_u, v_c, x = (torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    out = APG(eta=1.0, momentum=0.0)(v_u, v_c, w, x, t)
    ref = v_u + w * (v_c - v_u)
    assert torch.allclose(out, ref, rtol=1e-12, atol=1e-12 * (1 + w) / (1 - t))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), w=st.floats(1.5, 8.0))
def test_apg_eta0_removes_the_parallel_component(seed, w):
    # the guided x1 minus x1_u is w times a vector orthogonal to x1_c (per sample)
    g = torch.Generator().manual_seed(seed)
    v_u, v_c, x = (torch.randn(2, 1, 3, 3, generator=g, dtype=torch.float64) for _ in range(3))
    out = APG(eta=0.0, momentum=0.0)(v_u, v_c, w, x, 0.0)
    upd = (x + out) - (x + v_u)
    dots = (upd * (x + v_c)).flatten(1).sum(-1)
    assert torch.allclose(dots, torch.zeros(2, dtype=torch.float64), atol=1e-10)


@pytest.mark.parametrize("kw, msg", [({"eta": -1.0}, "eta"), ({"momentum": 1.0}, "momentum"),
                                     ({"norm_threshold": -0.1}, "norm_threshold"), ({"eta": math.nan}, "eta")])
def test_apg_rejects_bad_parameters(kw, msg):
    with pytest.raises(ValueError, match=msg):
        APG(**kw)


def test_apg_rejects_bad_inputs():
    a = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="t must"):
        APG()(a, a, 2.0, a, 1.0)
    with pytest.raises(ValueError, match="one shape"):
        APG()(a, torch.zeros(1, 3), 2.0, a, 0.0)


# ------------------------------------------------------------------------------------------- variants
def test_full_grid_has_the_issue_settings_with_unique_names():
    grid = full_variant_grid()
    names = [v.name for v in grid]
    assert len(names) == len(set(names)) == 41
    fam = [v.family for v in grid]
    assert fam.count("pladis") == 3 and fam.count("gag") == 24 and fam.count("gag+") == 12
    assert fam.count("aa") == 1 and fam.count("dense") == 1


@pytest.mark.parametrize("kw, msg", [({"method": "foo"}, "method"), ({"method": "gag", "lam": 1.0}, "exactly one"),
                                     ({"method": "gag", "lam": 1.0, "eta": 1.0, "kappa": 1.0}, "exactly one"),
                                     ({"method": "pladis"}, "lam"), ({"window": "middle"}, "window"),
                                     ({"rule": "magic"}, "rule")])
def test_variant_rejects_bad_settings(kw, msg):
    with pytest.raises(ValueError, match=msg):
        Variant(**kw)


def test_kappa_variant_sets_eta_per_layer_from_the_calibration():
    cal = {"a": {"m": 2.0, "c_neg": 0.1}, "b": {"m": 8.0, "c_neg": 0.3}}
    fn = GuidedVariant(Variant("gag", lam=5.0, kappa=0.25), cal)
    assert fn.per_layer["a"].eta == 0.5 and fn.per_layer["b"].eta == 2.0
    with pytest.raises(ValueError, match="calibration"):
        GuidedVariant(Variant("gag", lam=5.0, kappa=0.25), None)
    only = GuidedVariant(Variant("gag", lam=5.0, eta=15.0, rule="c+layers"), cal).only
    assert only == {"a"}  # median P(c<0) = 0.2: only layer a is at or below it


def test_prune_keeps_helpers_references_and_best_per_family():
    def row(variant, family, dexact, ci, dfd=0.0, fci=1.0):
        return {"variant": variant, "family": family, "model": "m", "steps": 1, "guidance": "cfg", "w": 1.0,
                "dexact_mean": dexact, "dexact_ci": ci, "dfd_cells_mean": dfd, "dfd_cells_ci": fci}

    rows = [row("dense", "dense", "", ""), row("pladis l2", "pladis", 0.0, 0.1), row("pladis l3", "pladis", -0.5, 0.1),
            row("pladis l1.5", "pladis", -0.01, 0.1), row("gag l1 e15 z0", "gag", 0.0, 0.1, dfd=-5.0, fci=1.0),
            row("gag l2 e15 z0", "gag", 0.01, 0.1), row("gag l5 e15 z0", "gag", -0.02, 0.1),
            row("gag l10 e15 z0", "gag", -0.9, 0.1), row("aa", "aa", 0.0, 0.1)]
    kept, why = prune_variants(rows, keep_per_family=1)
    assert why["pladis l3"].startswith("pruned: only hurts")  # interval excludes 0, but below it
    assert "gag l10 e15 z0" in kept and why["gag l10 e15 z0"] == "kept: reference setting"
    assert why["gag l1 e15 z0"].startswith("kept: helps")  # Frechet down with an interval excluding 0
    assert why["gag l2 e15 z0"].startswith("kept: best of gag")
    assert "gag l5 e15 z0" not in kept and why["gag l5 e15 z0"].startswith("pruned")
    assert kept[0] == "dense" and "aa" in kept
    capped, why = prune_variants(rows, keep_per_family=1, max_kept=5)
    # references first, then helpers, then the best per family (in table order); aa falls over the cap
    assert capped == ["dense", "pladis l2", "gag l1 e15 z0", "gag l2 e15 z0", "gag l10 e15 z0"]
    assert why["aa"].startswith("pruned: over the cap")


# --------------------------------------------------------------------------------------- the study
@pytest.fixture(scope="module")
def fast_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("guidance")
    cfg = GuidanceConfig.fast()
    return cfg, study_guidance(cfg, out), out


def test_study_csv_columns_and_rows(fast_study):
    cfg, rows, out = fast_study
    with open(out / "guidance.csv") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == GUIDANCE_COLUMNS
        got = list(reader)
    assert len(got) == len(rows) == len(cfg.models) * len(cfg.steps) * len(cfg.guidance) * len(cfg.variants)
    assert all(int(r["seeds"]) == len(cfg.seeds) for r in got)
    for r in rows:
        assert 0.0 <= r["exact_mean"] <= 1.0 and r["fd_cells_mean"] >= 0.0 and r["time_ratio_mean"] > 0.0
    assert (out / "guidance_where.png").stat().st_size > 5_000


def test_study_pairs_noise_and_prompts_per_seed(fast_study):
    _, rows, _ = fast_study
    groups = {}
    for r in rows:
        groups.setdefault((r["model"], r["split"], r["steps"], r["guidance"], r["w"]), []).append(r)
    for rs in groups.values():
        assert len({r["noise_fp"] for r in rs}) == 1, "variants of one seed must start from the same noise"
        assert len({r["prompt_fp"] for r in rs}) == 1
    # CFG and APG runs of one seed start from the same noise too
    assert len({r["noise_fp"] for r in rows}) == 1


def test_noise_probe_tells_seeds_apart():
    from hopfield_gag.models import load_model, sample

    model = load_model("dit-digits")
    fps = []
    for seed in (0, 0, 1):
        probe = _NoiseProbe(model, 2)
        try:
            sample(model, [1, 2], steps=1, cfg_scale=2.0, seed=seed)
        finally:
            probe.close()
        fps.append(probe.fp)
    assert fps[0] == fps[1] != fps[2]


def test_paired_delta_is_the_difference_of_means(fast_study):
    _, rows, _ = fast_study
    dense = {(r["guidance"], r["w"]): r for r in rows if r["variant"] == "dense"}
    for r in rows:
        if r["variant"] == "dense":
            assert r["dexact_mean"] == ""
            continue
        d = dense[(r["guidance"], r["w"])]
        for m in ("exact", "fd_cells", "sharp"):
            assert r[f"d{m}_mean"] == pytest.approx(r[f"{m}_mean"] - d[f"{m}_mean"], rel=1e-9, abs=1e-9)


def test_headline_and_where_figure(fast_study, tmp_path):
    _, rows, _ = fast_study
    head = headline(rows)
    assert {h["steps"] for h in head} == {1} and all(h["variant"] != "dense" for h in head)
    best = max((r for r in rows if r["variant"] != "dense"), key=lambda r: r["dexact_mean"])
    assert head[0]["delta"] == best["dexact_mean"]
    paths = plot_where_it_helps(rows, tmp_path, "w.png")
    assert paths and paths[0].stat().st_size > 5_000


def test_full_figure_replots_the_committed_table(fast_study, tmp_path):
    from hopfield_gag.studies._io import read_csv, write_csv
    from hopfield_gag.studies.figures import fig_guidance_where

    _, rows, _ = fast_study
    write_csv(rows, GUIDANCE_COLUMNS, tmp_path, "guidance_fine.csv")
    back = read_csv(tmp_path / "guidance_fine.csv")
    assert [r["variant"] for r in back] == [r["variant"] for r in rows]
    assert all(b["exact_mean"] == pytest.approx(r["exact_mean"], rel=1e-5) for b, r in zip(back, rows))
    paths = fig_guidance_where(tmp_path, fast=False)
    assert paths[0].name == "guidance_where.png" and paths[0].stat().st_size > 5_000
