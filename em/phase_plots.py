"""Figures for the phase-transition chapter: one function per figure, each returning a Figure.

Figures are built with :class:`matplotlib.figure.Figure` (not ``pyplot``), so a loop that makes
many of them leaks nothing and a notebook cell shows each exactly once (return it, or
``fig.savefig``).  Every function accepts either a :class:`em.phase.Trajectory` or plain arrays,
and marks detected transitions (a :class:`~em.phase.TransitionResult`, a
:class:`~em.phase.StepChange`, or a number of steps) as a vertical line with a shaded band of ±
its uncertainty.  Every axis carries its unit.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .plots import enable_notebook_figures

from .phase import (PCAResult, Peak, StepChange, Trajectory, TransitionResult, b_norm, behaviour_table,
                    local_cosine, pca_trajectory)

enable_notebook_figures()  # returned Figures render as PNG in notebooks (see em.plots)

STEP_LABEL = "training step (optimizer updates)"
Mark = TransitionResult | StepChange | Peak | float | int | None


def _fig_ax(ax: Axes | None, figsize: tuple[float, float] = (7.0, 3.6)) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax  # type: ignore[return-value]
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _unpack(obj: Any, steps: Sequence[float] | None, module: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(steps, vectors) from a Trajectory or from arrays (steps default to row numbers)."""
    if isinstance(obj, Trajectory):
        return obj.steps.astype(float), obj.b_vectors(module)
    x = np.asarray(obj, dtype=np.float64)
    x = x.reshape(len(x), -1)
    st = np.arange(len(x), dtype=float) if steps is None else np.asarray(steps, dtype=float)
    if len(st) != len(x):
        raise ValueError(f"{len(st)} steps for {len(x)} rows")
    return st, x


def _mark_span(m: Mark, steps: np.ndarray) -> tuple[float, float, float] | None:
    """(centre, band start, band end) in training steps for any kind of mark."""
    if m is None:
        return None
    if isinstance(m, TransitionResult):
        if m.step is not None:
            w = float(m.step_uncertainty or 0.0)
            return float(m.step), m.step - w, m.step + w
        rows = np.arange(len(steps))
        return (float(np.interp(m.index, rows, steps)), float(np.interp(m.index - m.uncertainty, rows, steps)),
                float(np.interp(m.index + m.uncertainty, rows, steps)))
    if isinstance(m, StepChange):
        return (m.step, m.step, m.step) if m.step is not None else None
    if isinstance(m, Peak):  # e.g. the gradient-norm hump: band = its half-prominence width
        return m.step, m.start, m.end
    return float(m), float(m), float(m)


def mark_transitions(ax: Axes, marks: Mark | Mapping[str, Mark], steps: Sequence[float] | None = None) -> None:
    """Draw each mark as a dashed vertical line plus a band of ± its uncertainty, labelled."""
    if marks is None:
        return
    st = np.asarray(steps if steps is not None else [0.0, 1.0], dtype=float)
    items = marks.items() if isinstance(marks, Mapping) else [("detected transition", marks)]
    colors = sns.color_palette("dark", 8)[3:]
    for i, (label, m) in enumerate(items):
        span = _mark_span(m, st)
        if span is None:
            continue
        c, lo, hi = span
        color = colors[i % len(colors)]
        if isinstance(m, Peak):
            text = f"{label}: step {c:.0f} (half-height {lo:.0f}–{hi:.0f})"
        else:
            text = f"{label}: step {c:.0f}" + (f" ± {(hi - lo) / 2:.0f}" if hi > lo else "")
        ax.axvline(c, color=color, ls="--", lw=1.2, label=text)
        if hi > lo:
            ax.axvspan(lo, hi, color=color, alpha=0.15, lw=0)


def plot_b_norm(traj_or_vectors: Any, steps: Sequence[float] | None = None, *, module: str | None = None,
                transition: Mark | Mapping[str, Mark] = None, ax: Axes | None = None) -> Figure:
    """L2 norm of B over training (the paper: grows smoothly through the rotation)."""
    st, x = _unpack(traj_or_vectors, steps, module)
    fig, ax = _fig_ax(ax)
    ax.plot(st, b_norm(x), color="C0", lw=1.5, label="‖B‖")
    mark_transitions(ax, transition, st)
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel("‖B‖₂ (L2 norm, parameter units)")
    ax.set_title("LoRA B norm")
    ax.legend(loc="best", fontsize="small")
    return fig


def plot_local_cosine(traj_or_vectors: Any, steps: Sequence[float] | None = None, *,
                      windows: Sequence[int] = (5, 10, 15), min_change: float = 0.1,
                      module: str | None = None, transition: Mark | Mapping[str, Mark] = None,
                      ax: Axes | None = None) -> Figure:
    """Local cosine of B for several windows (rows), -1 = straight path; a turn is a rise."""
    st, x = _unpack(traj_or_vectors, steps, module)
    fig, ax = _fig_ax(ax)
    spacing = float(np.median(np.diff(st))) if len(st) > 1 else 1.0
    for i, k in enumerate(windows):
        c = local_cosine(x, int(k), min_change)
        ax.plot(st, c, color=sns.color_palette("viridis", len(windows))[i], lw=1.2,
                label=f"k = {k} rows (≈{k * spacing:.0f} steps)")
    ax.axhline(-1, color="0.5", lw=0.8, ls=":", label="straight path (−1)")
    mark_transitions(ax, transition, st)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel("local cosine similarity (unitless)")
    ax.set_title("Local cosine of B: cos(B[t−k] − B[t], B[t+k] − B[t])")
    ax.legend(loc="best", fontsize="small")
    return fig


def plot_pca(traj_or_vectors: Any, steps: Sequence[float] | None = None, *, module: str | None = None,
             transition: Mark | Mapping[str, Mark] = None, pca: PCAResult | None = None) -> Figure:
    """Left: PC1 vs PC2 of the B trajectory coloured by step.  Right: PC1 and PC2 over steps,
    with each component's share of the variance in the legend."""
    st, x = _unpack(traj_or_vectors, steps, module)
    res = pca or pca_trajectory(x, 2)
    if res.projections.shape[1] < 2:
        raise ValueError("plot_pca: needs 2 components")
    evr = res.explained_variance_ratio
    fig = Figure(figsize=(11.0, 4.0), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    p = res.projections
    ax1.plot(p[:, 0], p[:, 1], color="0.8", lw=0.8, zorder=1)
    sc = ax1.scatter(p[:, 0], p[:, 1], c=st, cmap="viridis", s=12, zorder=2)
    fig.colorbar(sc, ax=ax1, label=STEP_LABEL)
    span = _mark_span(transition, st) if not isinstance(transition, Mapping) else None
    if span is not None:
        i = int(np.argmin(np.abs(st - span[0])))
        ax1.scatter(p[i, 0], p[i, 1], s=90, facecolor="none", edgecolor="C3", lw=2, zorder=3,
                    label=f"detected transition (step {span[0]:.0f})")
        ax1.legend(loc="best", fontsize="small")
    ax1.set_xlabel(f"PC1 ({evr[0]:.1%} of variance; parameter units)")
    ax1.set_ylabel(f"PC2 ({evr[1]:.1%} of variance; parameter units)")
    ax1.set_title("B trajectory in its first two principal components")
    ax2.plot(st, p[:, 0], label=f"PC1 ({evr[0]:.1%})")
    ax2.plot(st, p[:, 1], label=f"PC2 ({evr[1]:.1%})")
    mark_transitions(ax2, transition, st)
    ax2.set_xlabel(STEP_LABEL)
    ax2.set_ylabel("projection (parameter units)")
    ax2.set_title(f"PC curves (PC1+PC2 = {evr[:2].sum():.1%} of variance)")
    ax2.legend(loc="best", fontsize="small")
    return fig


def plot_grad_norm(traj_or_log: Any, *, transition: Mark | Mapping[str, Mark] = None,
                   smooth: int = 5, with_loss: bool = False, ax: Axes | None = None) -> Figure:
    """Gradient norm over every logged step (a Trajectory's ``log()``, or a DataFrame with
    ``step`` and ``grad_norm``), raw and as a centred rolling median of ``smooth`` steps;
    optionally the training loss on a second axis."""
    log = traj_or_log.log() if isinstance(traj_or_log, Trajectory) else pd.DataFrame(traj_or_log)
    missing = {"step", "grad_norm"} - set(log.columns)
    if missing:
        raise ValueError(f"plot_grad_norm: missing columns {sorted(missing)}")
    log = log.sort_values("step")
    if log["grad_norm"].notna().sum() == 0:
        raise ValueError("plot_grad_norm: no gradient norms were logged")
    fig, ax = _fig_ax(ax)
    st = log["step"].to_numpy(float)
    g = log["grad_norm"].to_numpy(float)
    ax.plot(st, g, color="C0", alpha=0.35, lw=0.8, label="per step")
    if smooth > 1:
        ax.plot(st, pd.Series(g).rolling(smooth, center=True, min_periods=1).median(), color="C0",
                lw=1.6, label=f"rolling median ({smooth} steps)")
    mark_transitions(ax, transition, st)
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel("gradient L2 norm (before clipping)")
    ax.set_title("Gradient norm")
    handles, labels = ax.get_legend_handles_labels()
    if with_loss and "loss" in log and log["loss"].notna().any():
        ax2 = ax.twinx()
        ax2.plot(st, log["loss"], color="C1", lw=1.0, alpha=0.8, label="training loss")
        ax2.set_ylabel("training loss (nats per assistant token)")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="best", fontsize="small")
    return fig


def _as_table(df: pd.DataFrame, by: Sequence[str] = ("step", "scale")) -> pd.DataFrame:
    """Per-answer rows → :func:`em.phase.behaviour_table`; an existing table passes through."""
    if {"em_pct", "em_lo", "em_hi"} <= set(df.columns):
        return df
    return behaviour_table(df, by)


def _n_text(n: pd.Series) -> str:
    lo, hi = int(n.min()), int(n.max())
    return f"n = {lo} judged answers per cell" if lo == hi else f"n = {lo}–{hi} judged answers per cell"


def plot_behaviour_heatmap(df: pd.DataFrame, metric: str = "em", ax: Axes | None = None) -> Figure:
    """Step × scale heatmap of EM% (``metric="em"``) or coherent% (``"coherent"``), annotated,
    from per-answer rows (``step``, ``scale``, ``aligned``, ``coherent``) or a behaviour table."""
    if metric not in ("em", "coherent"):
        raise ValueError(f"plot_behaviour_heatmap: metric must be 'em' or 'coherent', got {metric!r}")
    tab = _as_table(df)
    grid = tab.pivot(index="scale", columns="step", values=f"{metric}_pct").sort_index(ascending=False)
    grid.index = [f"×{s:g}" for s in grid.index]
    n = tab[f"n_{metric}"]
    fig, ax = _fig_ax(ax, figsize=(max(6.0, 0.55 * grid.shape[1] + 2.5), 0.6 * grid.shape[0] + 2.2))
    name = "EM answers" if metric == "em" else "coherent answers"
    sns.heatmap(grid, ax=ax, annot=True, fmt=".0f", cmap="rocket_r" if metric == "em" else "mako_r",
                vmin=0, vmax=max(1.0, float(np.nanmax(grid.to_numpy()))) if metric == "em" else 100,
                cbar_kws={"label": f"{name} (%); {_n_text(n)}"}, linewidths=0.5)
    ax.set_xlabel("checkpoint (training step)")
    ax.set_ylabel("B scale factor (×)")
    ax.set_title(f"{name} (%) by checkpoint and adapter scale\n({_n_text(n)})")
    return fig


def plot_em_curves(df: pd.DataFrame, metric: str = "em", *,
                   transitions: Mapping[float, Mark] | None = None, ax: Axes | None = None) -> Figure:
    """EM% (or coherent%) over checkpoints, one line per B scale, with 95% bootstrap CI bands;
    ``transitions`` maps a scale to its detected behavioural step (drawn in that line's colour)."""
    tab = _as_table(df).sort_values(["scale", "step"])
    fig, ax = _fig_ax(ax)
    scales = sorted(tab["scale"].unique())
    pal = sns.color_palette("flare", len(scales))
    for color, s in zip(pal, scales):
        r = tab[tab["scale"] == s]
        ax.plot(r["step"], r[f"{metric}_pct"], marker="o", ms=3, color=color, label=f"B × {s:g}")
        ax.fill_between(r["step"], r[f"{metric}_lo"], r[f"{metric}_hi"], color=color, alpha=0.2, lw=0)
        m = (transitions or {}).get(s)
        span = _mark_span(m, r["step"].to_numpy(float)) if m is not None else None
        if span is not None:
            ax.axvline(span[0], color=color, ls="--", lw=1.0, label=f"× {s:g} rise at step {span[0]:.0f}")
    name = "EM answers" if metric == "em" else "coherent answers"
    ax.set_xlabel("checkpoint (training step)")
    ax.set_ylabel(f"{name} (% of judged answers)")
    ax.set_title(f"{name} over training\n(bands: 95% bootstrap CI; {_n_text(tab[f'n_{metric}'])})")
    ax.legend(loc="best", fontsize="small")
    return fig


def plot_transition_steps(rows: pd.DataFrame, ax: Axes | None = None) -> Figure:
    """Mechanistic and behavioural transition steps side by side: one row per (label, seed)
    with ``step`` and ``uncertainty`` (steps) columns; missing steps are listed as "none"."""
    need = {"label", "step", "uncertainty"}
    if not need <= set(rows.columns):
        raise ValueError(f"plot_transition_steps: need columns {sorted(need)}, have {list(rows.columns)}")
    r = rows.reset_index(drop=True)
    names = [f"{lab}" + (f" (seed {s})" if "seed" in r and pd.notna(s) else "")
             for lab, s in zip(r["label"], r["seed"] if "seed" in r else [None] * len(r))]
    fig, ax = _fig_ax(ax, figsize=(7.0, 0.45 * len(r) + 1.6))
    y = np.arange(len(r))
    found = r["step"].notna().to_numpy()
    ax.errorbar(r.loc[found, "step"], y[found], xerr=r.loc[found, "uncertainty"].fillna(0),
                fmt="o", color="C0", capsize=3)
    for yi in y[~found]:
        ax.text(0.01, yi, "none detected", transform=ax.get_yaxis_transform(), va="center", color="0.4")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel("analysis (seed)")
    ax.set_title("Detected transition steps (± uncertainty)")
    return fig
