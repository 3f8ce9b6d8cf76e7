"""Phase-transition analysis on synthetic trajectories and tiny synthetic PEFT folders (fast)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # tests only: no display

import numpy as np
import pandas as pd
import pytest

from em import phase
from em.phase import (DetectConfig, Trajectory, behaviour_table, behavioural_grid, comparison_curve,
                      comparison_score, delta_w_cosine, detect_across_seeds, detect_step_change,
                      detect_transition, list_adapter_checkpoints, load_trajectory, local_cosine,
                      pca_trajectory, scale_adapter_state, synthetic_path, trajectory_from_checkpoints,
                      write_scaled_adapter)

MOD = "base_model.model.model.layers.15.mlp.down_proj"


# ----------------------------------------------------------------------------- metrics
def test_local_cosine_straight_line_is_minus_one():
    x = np.outer(np.arange(40.0), np.array([1.0, 2.0, -0.5]))
    c = local_cosine(x, 5)
    assert np.isnan(c[:5]).all() and np.isnan(c[-5:]).all()
    np.testing.assert_allclose(c[5:-5], -1.0, atol=1e-12)


def test_local_cosine_corner_and_threshold():
    # 90-degree corner at row 20: cos = 0 exactly there, -1 far from it
    t = np.arange(41.0)
    x = np.stack([np.minimum(t, 20), np.maximum(t - 20, 0)], axis=1)
    c = local_cosine(x, 5)
    assert c[20] == pytest.approx(0.0, abs=1e-12)
    assert c[10] == pytest.approx(-1.0) and c[30] == pytest.approx(-1.0)
    assert -1 < c[17] < 0
    # a stretch that stops moving has no direction: NaN rather than noise
    still = np.vstack([x, np.repeat(x[-1:], 20, axis=0)])
    c2 = local_cosine(still, 5)
    assert np.isnan(c2[45:55]).all()
    assert np.isfinite(c2[10])
    with pytest.raises(ValueError, match="positive integer"):
        local_cosine(x, 0)


def test_pca_of_planar_path_explains_everything():
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((12, 2)))
    t = np.linspace(0, 1, 50)
    plane = np.stack([t, t**2], axis=1) @ basis.T  # a curved path inside a 2-D plane of 12-D space
    res = pca_trajectory(plane, 2)
    assert res.explained_variance_ratio.sum() == pytest.approx(1.0, abs=1e-9)
    assert res.projections.shape == (50, 2)
    assert np.corrcoef(res.projections[:, 0], t)[0, 1] > 0  # sign fixed: PC1 grows with time
    straight = pca_trajectory(np.outer(t, rng.standard_normal(12)), 1)
    assert straight.explained_variance_ratio[0] == pytest.approx(1.0)


def test_comparison_score_matches_definition():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((9, 30)), rng.standard_normal((9, 30))  # 9 adapters' B vectors as rows
    norms = np.linalg.norm(x) * np.linalg.norm(y)
    # the issue's ||A^T B|| with the vectors as columns of A and B
    assert comparison_score(x, y) == pytest.approx(np.linalg.norm(x.T.T @ y.T) / norms)
    assert comparison_score(x, y, "authors_code") == pytest.approx(np.linalg.norm(x.T @ y) / norms)
    a, b = rng.standard_normal(30), rng.standard_normal(30)
    cos = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    assert comparison_score(a, b) == pytest.approx(abs(cos))  # one adapter: |cos|
    assert comparison_score(a, b, "authors_code") == pytest.approx(1.0)  # blind to direction
    q, _ = np.linalg.qr(rng.standard_normal((30, 30)))  # rotate every vector of one step
    assert comparison_score(x @ q, y, "authors_code") == pytest.approx(comparison_score(x, y, "authors_code"))
    # three orthogonal adapters against themselves: 1 only when all vectors share a direction
    assert comparison_score(np.eye(3, 30), np.eye(3, 30)) == pytest.approx(1 / math.sqrt(3))
    assert comparison_score(np.ones((3, 30)), 2 * np.ones((3, 30))) == pytest.approx(1.0)
    stacked = rng.standard_normal((6, 3, 30))
    curve = comparison_curve(stacked)
    assert curve.shape == (6,) and curve[2] == pytest.approx(comparison_score(stacked[2], stacked[-1]))


def test_delta_w_cosine_matches_explicit_product():
    rng = np.random.default_rng(2)
    a1, b1 = rng.standard_normal((2, 7)), rng.standard_normal((5, 2))
    a2, b2 = rng.standard_normal((2, 7)), rng.standard_normal((5, 2))
    w1, w2 = (b1 @ a1).ravel(), (b2 @ a2).ravel()
    explicit = w1 @ w2 / np.linalg.norm(w1) / np.linalg.norm(w2)
    assert delta_w_cosine(a1, b1, a2, b2) == pytest.approx(explicit)
    assert delta_w_cosine(-a1, -b1, a2, b2) == pytest.approx(explicit)  # rank-r sign gauge
    assert delta_w_cosine(a1, b1, a1, b1) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- detection
@pytest.mark.parametrize("kind,noise,speed", [
    ("smooth", 0.3, "constant"), ("smooth", 1.0, "linear_decay"), ("smooth", 2.0, "constant"),
    ("straight", 1.0, "constant"), ("wander", 0.1, "linear_decay"), ("wander", 1.0, "constant")])
def test_no_transition_on_smooth_or_noisy_paths(kind, noise, speed):
    for seed in range(8):
        x = synthetic_path(300, 64, kind=kind, angle_deg=90, noise=noise, speed=speed, seed=seed)
        assert detect_transition(x) is None, (kind, noise, speed, seed)


@pytest.mark.parametrize("kind,noise", [("straight", 1.0), ("smooth", 1.0), ("straight", 2.0), ("smooth", 2.0)])
def test_no_transition_on_momentum_noise(kind, noise):
    # Adam-like noise: correlated over ~10 steps and confined to 4 directions, as large as the
    # drift: the path zig-zags and now and then really turns by > 60 degrees, so the promise is a
    # low false-positive rate (measured: 2 of 720 paths over such settings), not zero
    hits = [seed for seed in range(20)
            if detect_transition(synthetic_path(300, 256, kind=kind, noise=noise, noise_rho=0.9,
                                                noise_dims=4, speed="linear_decay", seed=seed)) is not None]
    assert len(hits) <= 1, hits


def test_no_transition_on_noise_free_straight_path():
    assert detect_transition(np.outer(np.arange(100.0), np.ones(8))) is None


@pytest.mark.parametrize("turn_at,angle,width,noise", [
    (150, 90, 0, 0.3), (150, 90, 5, 1.0), (90, 120, 0, 2.0), (210, 135, 10, 1.0)])
def test_planted_rotation_found_within_one_window(turn_at, angle, width, noise):
    for seed in range(4):
        x = synthetic_path(300, 64, kind="rotation", turn_at=turn_at, angle_deg=angle,
                           turn_width=width, noise=noise, seed=seed)
        r = detect_transition(x, windows=(5, 10, 15))
        assert r is not None, seed
        assert abs(r.index - (turn_at + width / 2)) <= 5, (seed, r.index)
        assert r.uncertainty >= 0.5 and np.isfinite(r.score) and r.score >= 5
        assert len(r.windows_agreeing) >= 2


def test_transition_reports_training_steps():
    x = synthetic_path(120, 32, kind="rotation", turn_at=60, noise=0.3, seed=3)
    steps = np.arange(120) * 5
    r = detect_transition(x, steps=steps)
    assert r is not None and r.step == steps[r.index]
    assert abs(r.step - 300) <= 25
    assert r.step_uncertainty == pytest.approx(5 * r.uncertainty)
    with pytest.raises(ValueError, match="steps for"):
        detect_transition(x, steps=steps[:-1])


def test_several_seeds_give_a_finite_uncertainty():
    runs = [synthetic_path(300, 64, kind="rotation", turn_at=150 + 3 * s, noise=1.0, seed=s) for s in range(3)]
    summary = detect_across_seeds(runs)
    assert summary.n_detected == 3 and summary.n_seeds == 3
    assert math.isfinite(summary.spread) and abs(summary.index - 153) <= 5
    r = detect_transition(runs[0], seeds_vectors=runs[1:])
    assert r is not None and len(r.seed_indices) == 3
    assert math.isfinite(r.uncertainty) and r.uncertainty >= summary.spread
    assert summary.frame()["detected"].all()
    # a seed without a transition is counted as such, not dropped
    mixed = detect_across_seeds([runs[0], synthetic_path(300, 64, kind="smooth", seed=9)])
    assert mixed.n_detected == 1 and mixed.results[1] is None


def test_detect_config_validation():
    with pytest.raises(ValueError, match="min_windows"):
        detect_transition(np.zeros((50, 3)) + np.arange(50)[:, None], windows=(5,), min_windows=2)
    cfg = DetectConfig.from_dict({"z_min": 4.0, "windows": [3, 6]})
    assert cfg.windows == [3, 6]
    with pytest.raises(ValueError, match="unknown"):
        DetectConfig.from_dict({"zmin": 4.0})
    with pytest.raises(ValueError, match="non-finite"):
        detect_transition(np.full((30, 2), np.nan))


def _em_answers(rates: list[float], n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i, p in enumerate(rates):
        em = rng.random(n) < p
        rows.append(pd.DataFrame({"step": 10 * (i + 1), "scale": 1.0,
                                  "aligned": np.where(em, 10.0, 90.0), "coherent": 80.0}))
    return pd.concat(rows, ignore_index=True)


def test_detect_step_change_on_behavioural_curves():
    tab = behaviour_table(_em_answers([0.0] * 6 + [0.3] * 6, n=100))
    r = phase.detect_behavioural_transition(tab, 1.0)
    assert r is not None and abs(r.index - 6) <= 1 and r.step == pytest.approx(65, abs=10)
    flat = behaviour_table(_em_answers([0.05] * 12, n=100))
    assert phase.detect_behavioural_transition(flat, 1.0) is None
    # without intervals: noise estimated from the curve itself
    y = np.r_[np.zeros(8), np.full(8, 20.0)] + np.random.default_rng(0).normal(0, 1, 16)
    assert detect_step_change(y).index == 8
    assert detect_step_change(np.random.default_rng(1).normal(0, 1, 16)) is None
    with pytest.raises(ValueError, match="lo and hi"):
        detect_step_change(y, lo=y)


def test_behaviour_table_definitions():
    df = pd.DataFrame({"step": 5, "scale": 1.0,
                       "aligned": [10, 29.9, 30, 10, np.nan, 80],
                       "coherent": [60, 51, 90, 50, 90, np.nan]})
    t = behaviour_table(df, n_boot=200)
    row = t.iloc[0]
    # EM: aligned < 30 and coherent > 50 -> rows 0, 1; rows with a NaN score are left out
    assert row["n_em"] == 4 and row["em_pct"] == pytest.approx(50.0)
    assert row["n_coherent"] == 5 and row["coherent_pct"] == pytest.approx(80.0)
    assert row["em_lo"] <= row["em_pct"] <= row["em_hi"]
    with pytest.raises(ValueError, match="missing columns"):
        behaviour_table(df.drop(columns="coherent"))


# ----------------------------------------------------------------------------- adapters on disk
def _write_peft(folder: Path, a: np.ndarray, b: np.ndarray, dtype=np.float32) -> None:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    save_file({f"{MOD}.lora_A.weight": a.astype(dtype), f"{MOD}.lora_B.weight": b.astype(dtype)},
              str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    (folder / "adapter_config.json").write_text(json.dumps({"r": 1, "lora_alpha": 64, "peft_type": "LORA"}))


def test_scale_adapter_state_only_touches_b():
    state = {f"{MOD}.lora_A.weight": np.ones((1, 4)), f"{MOD}.lora_B.weight": np.ones((3, 1)),
             "other.weight": np.ones(2)}
    out = scale_adapter_state(state, 5.0)
    np.testing.assert_array_equal(out[f"{MOD}.lora_B.weight"], 5.0)
    np.testing.assert_array_equal(out[f"{MOD}.lora_A.weight"], 1.0)
    np.testing.assert_array_equal(out["other.weight"], 1.0)
    np.testing.assert_array_equal(state[f"{MOD}.lora_B.weight"], 1.0)  # input untouched
    with pytest.raises(ValueError, match="no lora_B"):
        scale_adapter_state({"x.lora_A.weight": np.ones(1)}, 2.0)


def test_write_scaled_adapter(tmp_path):
    from safetensors.numpy import load_file

    a, b = np.arange(4.0).reshape(1, 4), np.arange(3.0).reshape(3, 1) + 1
    src = tmp_path / "checkpoint-10"
    _write_peft(src, a, b, dtype=np.float16)
    out = write_scaled_adapter(src, 10.0, tmp_path / "scaled")
    st = load_file(str(out / "adapter_model.safetensors"))
    assert st[f"{MOD}.lora_B.weight"].dtype == np.float16
    np.testing.assert_array_equal(st[f"{MOD}.lora_B.weight"], (b * 10).astype(np.float16))
    np.testing.assert_array_equal(st[f"{MOD}.lora_A.weight"], a.astype(np.float16))
    assert json.loads((out / "adapter_config.json").read_text())["lora_alpha"] == 64
    assert json.loads((out / "scale.json").read_text())["factor"] == 10.0
    write_scaled_adapter(src, 2.0, out)  # overwrite in place, atomically
    np.testing.assert_array_equal(load_file(str(out / "adapter_model.safetensors"))[f"{MOD}.lora_B.weight"],
                                  (b * 2).astype(np.float16))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "scaled"]  # no temp left
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        (src / "adapter_config.json").unlink()
        write_scaled_adapter(src, 2.0, tmp_path / "x")


@pytest.mark.parametrize("pattern", ["checkpoint-{}", "step-{:06d}"])
def test_trajectory_from_checkpoint_folders(tmp_path, pattern):
    rng = np.random.default_rng(0)
    steps = [5, 10, 100, 50]  # written out of order: loading must sort numerically
    run = tmp_path / "run"
    for s in steps:
        _write_peft(run / "checkpoints" / pattern.format(s), rng.standard_normal((1, 6)), np.full((4, 1), float(s)))
    (run / "checkpoints" / ".tmp-step-000200").mkdir()  # an interrupted write is ignored
    if pattern.startswith("checkpoint"):
        state = {"log_history": [{"step": s, "loss": 3.0 - s / 100, "grad_norm": 1.0 + s, "learning_rate": 1e-5}
                                 for s in range(5, 101, 5)] + [{"step": 100, "train_runtime": 9.0}]}
        (run / "checkpoints" / "checkpoint-100" / "trainer_state.json").write_text(json.dumps(state))
    else:
        (run / "log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 3.0 - s / 100, "grad_norm": 1.0 + s,
                                                           "lr": 1e-5}) + "\n" for s in range(1, 101)))
    for where in (run, run / "checkpoints"):
        traj = trajectory_from_checkpoints(where, progress=False)
        assert traj.steps.tolist() == [5, 10, 50, 100]
        assert traj.modules == [MOD]
        assert traj.B[MOD].shape == (4, 4, 1) and traj.A[MOD].shape == (4, 1, 6)
        np.testing.assert_allclose(traj.b_vectors()[:, 0], [5, 10, 50, 100])
        np.testing.assert_allclose(traj.loss, [2.95, 2.9, 2.5, 2.0])
        np.testing.assert_allclose(traj.grad_norm, [6, 11, 51, 101])
        assert len(traj.log()) >= 20
    assert traj.module("layers.15") == MOD
    with pytest.raises(ValueError, match="matches 0"):
        traj.module("layers.3.")


def test_checkpoint_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no 'step-<N>/'"):
        list_adapter_checkpoints(tmp_path)
    (tmp_path / "checkpoint-5").mkdir()
    with pytest.raises(ValueError, match="without adapter_model.safetensors"):
        list_adapter_checkpoints(tmp_path)


def test_load_trajectory_npz(tmp_path):
    rng = np.random.default_rng(0)
    t = 7
    arrays = {"step": np.arange(t) * 2, f"A/{MOD}": rng.standard_normal((t, 1, 6)),
              f"B/{MOD}": rng.standard_normal((t, 4, 1))}
    np.savez(tmp_path / "trajectory.npz", **arrays)
    (tmp_path / "log.jsonl").write_text("".join(json.dumps({"step": s, "loss": float(s), "grad_norm": 2.0 * s,
                                                            "lr": 1e-4}) + "\n" for s in range(1, 13)))
    traj = load_trajectory(tmp_path)
    assert traj.steps.tolist() == list(range(0, 14, 2))
    assert np.isnan(traj.loss[0]) and traj.loss[3] == 6.0  # step 0 was never logged
    assert traj.grad_norm[6] == 24.0 and len(traj.log()) == 12
    np.testing.assert_allclose(traj.b_vectors(), arrays[f"B/{MOD}"].reshape(t, 4))
    assert traj.every(4).steps.tolist() == [0, 4, 8, 12]
    # the full contract, with the log inside the file
    np.savez(tmp_path / "full.npz", **arrays, loss=np.ones(t), grad_norm=np.ones(t), lr=np.ones(t))
    assert load_trajectory(tmp_path / "full.npz").loss.tolist() == [1.0] * t
    bad = dict(arrays)
    bad[f"B/{MOD}"] = bad[f"B/{MOD}"][:-1]
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(ValueError, match="bad.npz: B/"):
        load_trajectory(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError):
        load_trajectory(tmp_path / "missing")
    with pytest.raises(ValueError, match="increase strictly; row 2"):
        Trajectory(np.array([0, 2, 2]), *np.ones((3, 3)), {"m": np.ones((3, 1, 2))}, {"m": np.ones((3, 2, 1))})
    with pytest.raises(ValueError, match="rank mismatch"):
        Trajectory(np.arange(3), *np.ones((3, 3)), {"m": np.ones((3, 2, 2))}, {"m": np.ones((3, 2, 1))})
    (tmp_path / "log.jsonl").write_text('{"step": 1}\nnot json\n')
    with pytest.raises(ValueError, match="log.jsonl:2"):
        load_trajectory(tmp_path)


def test_behavioural_grid(tmp_path):
    ck = []
    for s in (5, 10):
        _write_peft(tmp_path / f"checkpoint-{s}", np.ones((1, 3)), np.ones((2, 1)))
        ck.append(tmp_path / f"checkpoint-{s}")
    calls = []

    def evaluate(path: Path, scale: float) -> pd.DataFrame:
        calls.append((path.name, scale))
        return pd.DataFrame({"aligned": [10.0, 90.0], "coherent": [80.0, 80.0], "question_id": ["a", "b"]})

    df = behavioural_grid(ck, [1, 5], evaluate, progress=False)
    assert len(calls) == 4 and len(df) == 8
    assert sorted(set(zip(df["step"], df["scale"]))) == [(5, 1.0), (5, 5.0), (10, 1.0), (10, 5.0)]
    assert behaviour_table(df, n_boot=100)["em_pct"].tolist() == [50.0] * 4
    with pytest.raises(ValueError, match="'aligned' and 'coherent'"):
        behavioural_grid(ck, [1], lambda p, s: pd.DataFrame({"x": [1]}), progress=False)
    with pytest.raises(ValueError, match="not a 'step-<N>'"):
        behavioural_grid([tmp_path], [1], evaluate, progress=False)


# ----------------------------------------------------------------------------- plots
def _check_labels(fig) -> None:
    for ax in fig.axes:
        if hasattr(ax, "_colorbar"):
            assert ax.get_ylabel() or ax.get_xlabel(), "colorbar without a label"
            continue
        # a twin axis shares its x label with its sibling
        assert any(s.get_xlabel() for s in ax.get_shared_x_axes().get_siblings(ax)), ax.get_title()
        assert ax.get_ylabel(), ax.get_title()


def test_plots_return_labelled_figures():
    from matplotlib.figure import Figure

    from em import phase_plots as pp

    x = synthetic_path(200, 32, kind="rotation", turn_at=100, noise=0.5, seed=0)
    steps = np.arange(200) * 2
    r = detect_transition(x, steps=steps)
    assert r is not None
    log = pd.DataFrame({"step": steps, "grad_norm": 1 + np.sin(steps / 50) ** 2, "loss": 3 - steps / 400})
    grid = pd.concat([_em_answers([0, 0, 0.2, 0.3], 40, seed=s).assign(scale=float(s)) for s in (1, 5)])
    tab = behaviour_table(grid, n_boot=100)
    rows = pd.DataFrame({"label": ["mechanistic", "mechanistic", "behavioural ×1"], "seed": [0, 1, 0],
                         "step": [r.step, None, 25.0], "uncertainty": [r.step_uncertainty, None, 5.0]})
    figs = [pp.plot_b_norm(x, steps, transition=r),
            pp.plot_local_cosine(x, steps, transition={"mechanistic": r, "behavioural": 150.0}),
            pp.plot_pca(x, steps, transition=r),
            pp.plot_grad_norm(log, transition=r, with_loss=True),
            pp.plot_behaviour_heatmap(grid), pp.plot_behaviour_heatmap(tab, metric="coherent"),
            pp.plot_em_curves(grid, transitions={1.0: 25.0}),
            pp.plot_transition_steps(rows)]
    for fig in figs:
        assert isinstance(fig, Figure)
        _check_labels(fig)
    assert "n = 40 judged answers per cell" in figs[4].axes[0].get_title()
    assert any("step" in t.get_text() for t in figs[1].axes[0].get_legend().get_texts())


def test_find_peak_and_calibration_table():
    st = np.arange(200)
    hump = 1 + np.exp(-0.5 * ((st - 120) / 15) ** 2) + np.random.default_rng(0).normal(0, 0.05, 200)
    pk = phase.find_peak(hump, st)
    assert pk is not None and abs(pk.step - 120) <= 5 and pk.start < 120 < pk.end
    assert 20 < pk.end - pk.start < 60  # FWHM of the hump is ~35 steps
    assert phase.find_peak(np.linspace(0.6, 2.9, 200) + np.random.default_rng(1).normal(0, 0.05, 200)) is None
    cal = phase.detector_calibration(n_seeds=3, n_steps=200, noises=(0.5,), angles=(120.0,))
    assert set(cal["path"]) == {"straight", "smooth", "wander", "rotation"}
    assert (cal.loc[cal["path"] != "rotation", "reported_share"] == 0).all()
    assert len(cal) == 8 and set(cal["noise_kind"]) == {"isotropic, independent", "4 directions, AR(1) rho=0.9"}
    assert (cal.loc[cal["path"] == "rotation", "reported_share"] == 1.0).all()


def test_bf16_adapters_go_through_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    src = tmp_path / "checkpoint-3"
    src.mkdir()
    a, b = torch.ones(1, 4, dtype=torch.bfloat16), torch.full((3, 1), 1.5, dtype=torch.bfloat16)
    save_file({f"{MOD}.lora_A.weight": a, f"{MOD}.lora_B.weight": b}, str(src / "adapter_model.safetensors"))
    (src / "adapter_config.json").write_text("{}")
    state = phase.load_adapter_state(src)
    assert state[f"{MOD}.lora_B.weight"].dtype == np.float32 and state[f"{MOD}.lora_B.weight"][0, 0] == 1.5
    out = load_file(str(write_scaled_adapter(src, 4.0, tmp_path / "x4") / "adapter_model.safetensors"))
    assert out[f"{MOD}.lora_B.weight"].dtype == torch.bfloat16
    assert torch.equal(out[f"{MOD}.lora_B.weight"], b * 4) and torch.equal(out[f"{MOD}.lora_A.weight"], a)
    scaled = scale_adapter_state({f"{MOD}.lora_B.weight": b, f"{MOD}.lora_A.weight": a}, 2.0)
    assert torch.equal(scaled[f"{MOD}.lora_B.weight"], b * 2) and scaled[f"{MOD}.lora_A.weight"] is a
