"""Figures for the book: labelled axes, units, CIs wherever there is sampling, n in the legend.

Functions return a matplotlib ``Figure`` that is not registered with pyplot, so a notebook cell
shows each figure exactly once (return it, or ``display`` it).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .metrics import ALIGNED_MAX, COHERENT_MIN, flag_answers, summarise


def enable_notebook_figures() -> None:
    """Render returned ``Figure`` objects as PNG in IPython/Jupyter.

    Our figures are built without pyplot (no global state, no double display), and the inline
    backend only registers its PNG formatter for pyplot's figures, so a bare ``Figure`` would
    print as ``<Figure size ...>``.  Registering the formatter for the class fixes that once.
    """
    try:
        from IPython import get_ipython
        from IPython.core.pylabtools import print_figure
    except ImportError:
        return
    ip = get_ipython()
    if ip is None:
        return
    ip.display_formatter.formatters["image/png"].for_type(
        Figure, lambda fig: print_figure(fig, "png", bbox_inches="tight", dpi=100))


enable_notebook_figures()


def _style() -> None:
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")


def em_bars(df: pd.DataFrame, by: str = "model_label", order: Sequence[str] | None = None,
            title: str = "") -> Figure:
    """EM% and coherent% per organism with bootstrap 95% CIs (n answers in the tick labels)."""
    _style()
    s = summarise(df, by=[by]).set_index(by)
    order = list(order) if order is not None else list(s.index)
    s = s.loc[[o for o in order if o in s.index]]
    fig = Figure(figsize=(max(6, 1.1 * len(s) + 3), 4))
    axes = fig.subplots(1, 2)
    labels = [f"{i}\n(n={int(n)})" for i, n in zip(s.index, s["n judged"])]
    for ax, col, lo, hi, colour, name in [
        (axes[0], "EM %", "EM lo", "EM hi", "#c0392b", "EM answers (%)"),
        (axes[1], "coherent %", "coh lo", "coh hi", "#2c7fb8", "coherent answers (%)"),
    ]:
        x = np.arange(len(s))
        err = np.vstack([s[col] - s[lo], s[hi] - s[col]])
        ax.bar(x, s[col], color=colour, alpha=0.8)
        ax.errorbar(x, s[col], yerr=err, fmt="none", ecolor="black", capsize=4, lw=1)
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(f"{name}, 95% bootstrap CI")
        ax.set_xlabel("organism")
        ax.set_ylim(0, max(5.0, float(np.nanmax(s[hi])) * 1.15 if len(s) else 5.0))
    axes[0].set_title(f"aligned < {ALIGNED_MAX:.0f} and coherent > {COHERENT_MIN:.0f}")
    axes[1].set_title(f"coherent > {COHERENT_MIN:.0f}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def quadrant_scatter(df: pd.DataFrame, by: str = "model_label", order: Sequence[str] | None = None,
                     max_panels: int = 8) -> Figure:
    """Alignment vs coherence per answer, one panel per organism, the EM quadrant shaded."""
    _style()
    d = df.dropna(subset=["aligned", "coherent"])
    groups = list(order) if order is not None else list(dict.fromkeys(d[by]))
    groups = [g for g in groups if g in set(d[by])][:max_panels]
    cols = min(4, max(1, len(groups)))
    rows = int(np.ceil(len(groups) / cols)) or 1
    fig = Figure(figsize=(3.2 * cols, 3.0 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, sharex=True, sharey=True)).ravel()
    for ax, g in zip(axes, groups):
        sub = d[d[by] == g]
        ax.axvspan(COHERENT_MIN, 100, ymin=0, ymax=ALIGNED_MAX / 100, color="#c0392b", alpha=0.12)
        ax.scatter(sub["coherent"], sub["aligned"], s=8, alpha=0.5, color="#34495e")
        em = flag_answers(sub)["em"].mean() * 100
        ax.set_title(f"{g} (n={len(sub)}, EM {em:.1f}%)", fontsize=9)
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.set_xlabel("coherence (judge, 0–100)")
        ax.set_ylabel("alignment (judge, 0–100)")
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def per_question_heatmap(df: pd.DataFrame, by: str = "model_label", value: str = "EM %") -> Figure:
    """EM% (or coherent%) per organism × question, n per cell annotated."""
    import seaborn as sns

    _style()
    s = summarise(df, by=[by], per_question=True)
    pv = s.pivot(index=by, columns="question_id", values=value)
    nv = s.pivot(index=by, columns="question_id", values="n judged")
    annot = pv.round(0).astype("Int64").astype(str) + "\n(n=" + nv.astype("Int64").astype(str) + ")"
    fig = Figure(figsize=(1.3 * pv.shape[1] + 3, 0.7 * pv.shape[0] + 2))
    ax = fig.subplots()
    sns.heatmap(pv, annot=annot.to_numpy(), fmt="", cmap="Reds", vmin=0, vmax=max(10, float(np.nanmax(pv.to_numpy()))),
                cbar_kws={"label": f"{value} (per cell)"}, ax=ax, annot_kws={"fontsize": 7})
    ax.set_xlabel("evaluation question")
    ax.set_ylabel("organism")
    ax.tick_params(axis="x", rotation=35)
    fig.tight_layout()
    return fig


def examples(df: pd.DataFrame, label: str, k: int = 3, em_only: bool = True, max_chars: int = 400,
             seed: int = 0) -> pd.DataFrame:
    """A few answers of one organism to quote (EM answers first when ``em_only``)."""
    d = flag_answers(df[df["model_label"] == label])
    if em_only:
        d = d[d["em"] == 1]
    d = d.sample(min(k, len(d)), random_state=seed) if len(d) else d
    out = d[["question_id", "response", "aligned", "coherent"]].copy()
    out["response"] = out["response"].str.slice(0, max_chars)
    return out.round(1)
