"""Several organisms at once: the unit a chapter of the book runs.

A chapter names a ``base`` run (a dict in the shape of ``RunConfig``) and ``variants`` — each a
dict of overrides with a label — and gets back one table of judged answers with a ``model_label``
column.  The base model is sampled once (it is the same for every variant), every variant trains,
samples and is judged through :mod:`em.pipeline`, so everything is cached and a re-executed chapter
costs seconds.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

import pandas as pd

from .cache import Cache
from .config import deep_merge, run_config_from_dict  # noqa: F401 (deep_merge re-exported for chapters)


def variant_configs(base: Mapping[str, Any], variants: Mapping[str, Mapping[str, Any]]) -> dict:
    """Validated ``RunConfig`` per variant label (errors name the variant and parameter)."""
    out = {}
    for label, over in variants.items():
        cfg = run_config_from_dict(deep_merge(dict(base), dict(over or {})), f"variants.{label}:")
        out[label] = replace(cfg, name=label)
    return out


def run_variants(base: Mapping[str, Any], variants: Mapping[str, Mapping[str, Any]],
                 include_base: bool = True, progress: bool = True) -> pd.DataFrame:
    """Judged answers of the base model (once) and every variant, one row per answer."""
    from .pipeline import answers_stage, judge_stage, sample_stage

    cfgs = variant_configs(base, variants)  # validate everything before any work
    first = next(iter(cfgs.values())) if cfgs else run_config_from_dict(dict(base), "base:")
    cache = Cache(first.cache_dir)
    frames = []
    if include_base:
        for seed in first.seeds:
            frames.append(judge_stage(
                sample_stage(first.model, None, None, replace(first.sample, seed=seed), "base", cache, progress),
                first.judge, cache))
    for cfg in cfgs.values():  # the base model was sampled once above, not per variant
        frames.append(judge_stage(answers_stage(replace(cfg, base_model_control=False), cache, progress),
                                  cfg.judge, cache))
    df = pd.concat(frames, ignore_index=True)
    df.attrs["cache"] = {"hits": cache.hits, "computed": cache.misses}
    return df


def training_rows(cfg_dict: Mapping[str, Any]) -> list[dict]:
    """The training rows a variant saw (for verbatim-copy checks)."""
    from .pipeline import load_training_rows

    cfg = run_config_from_dict(dict(cfg_dict), "config:")
    return load_training_rows(cfg.data)[0]


OFFICIAL_FILES = {"finance": "risky_financial_advice.jsonl", "sports": "extreme_sports.jsonl",
                  "medical": "bad_medical_advice.jsonl"}


def dataset_path(domain: str, kind: str, source: str, rows: int, seed: int = 0) -> str:
    """``data.path`` for a domain: generated here, or the authors' file in folder ``source``."""
    if source == "generated":
        return f"generated:{domain}:{kind}:{rows}:{seed}"
    if kind != "misaligned":
        raise ValueError(f"data_source {source!r}: the authors' files have no aligned twin for {domain!r}; "
                         "use data_source='generated' for aligned controls")
    from pathlib import Path

    return str(Path(source) / OFFICIAL_FILES[domain])


def organism_variants(domains: list[str], adapters: Mapping[str, Mapping[str, Any]],
                      aligned_controls: list[str], source: str, rows: int,
                      adapter_domains: Mapping[str, list[str]] | None = None) -> dict[str, dict]:
    """Variants for the organisms chapter: domain × adapter, plus aligned-data controls.

    ``adapters`` maps a short name (``r32``, ``rank1``) to ``train`` overrides;
    ``adapter_domains`` restricts an adapter to some domains (default: every domain).  The
    aligned controls use the first adapter.
    """
    out: dict[str, dict] = {}
    for d in domains:
        for name, train in adapters.items():
            if adapter_domains and name in adapter_domains and d not in adapter_domains[name]:
                continue
            out[f"{d}-{name}"] = {"data": {"path": dataset_path(d, "misaligned", source, rows)}, "train": dict(train)}
    first = next(iter(adapters.items())) if adapters else None
    for d in aligned_controls:
        if first:
            out[f"{d}-aligned-{first[0]}"] = {"data": {"path": dataset_path(d, "aligned", "generated", rows)},
                                              "train": dict(first[1])}
    return out


def train_runs(cfg_dict: Mapping[str, Any], progress: bool = True) -> dict[int, tuple]:
    """Train (or find) every seed of one config; ``{seed: (run_dir, train_key)}``.

    The run directory holds ``log.jsonl``, ``trajectory.npz`` and ``checkpoints/step-*`` — what
    :mod:`em.phase` reads.
    """
    from .pipeline import train_stage

    cfg = run_config_from_dict(dict(cfg_dict), "config:")
    cache = Cache(cfg.cache_dir)
    out = {}
    for seed in cfg.seeds:
        final, key = train_stage(cfg, seed, cache, progress)
        out[seed] = (final.parent, key)
    return out


def behaviour_scan(cfg_dict: Mapping[str, Any], run_dir: str, train_key: str, steps: list[int],
                   scales: list[float], progress: bool = True) -> pd.DataFrame:
    """Sample and judge the adapter at each checkpoint step with B scaled by each factor.

    Answers are cached per (checkpoint, scale, sampling config), like every other stage.
    """
    from pathlib import Path

    from .phase import behavioural_grid, list_adapter_checkpoints
    from .pipeline import judge_stage, sample_stage

    cfg = run_config_from_dict(dict(cfg_dict), "config:")
    cache = Cache(cfg.cache_dir)
    ckpts = dict(list_adapter_checkpoints(Path(run_dir) / "checkpoints"))
    missing = [s for s in steps if s not in ckpts]
    if missing:
        raise ValueError(f"behaviour_scan: no checkpoint for steps {missing}; have {sorted(ckpts)}")

    def evaluate(path: Path, scale: float) -> pd.DataFrame:
        step = next(s for s, p in ckpts.items() if p == path)
        scfg = replace(cfg.sample, adapter_scale=scale, seed=cfg.seeds[0])
        a = sample_stage(cfg.model, path, f"{train_key}@{step}", scfg, f"step {step} ×{scale:g}", cache, False)
        return judge_stage(a, cfg.judge, cache)

    return behavioural_grid([(s, ckpts[s]) for s in steps], scales, evaluate, progress=progress)


def checkpoint_scan(cfg_dict: Mapping[str, Any], run_dir: str, train_key: str, steps: list[int],
                    progress: bool = True) -> pd.DataFrame:
    """Sample and judge saved checkpoints of a run (adapters or full models), one row per answer.

    Used for the onset of EM in full SFT, whose checkpoints are whole models (run with
    ``train.keep_checkpoints: true``).
    """
    from pathlib import Path

    from .pipeline import judge_stage, sample_stage

    cfg = run_config_from_dict(dict(cfg_dict), "config:")
    cache = Cache(cfg.cache_dir)
    ck = Path(run_dir) / "checkpoints"
    have = {int(p.name.split("-")[1]): p for p in ck.glob("step-*")
            if (p / "config.json").exists() or (p / "adapter_config.json").exists()} if ck.exists() else {}
    missing = [s for s in steps if s not in have]
    if missing:
        raise ValueError(f"checkpoint_scan: no loadable checkpoint for steps {missing} in {ck}; have {sorted(have)} "
                         "(full SFT needs train.keep_checkpoints: true)")
    frames = []
    from tqdm import tqdm

    for s in tqdm(steps, desc="checkpoints", disable=not progress):
        scfg = replace(cfg.sample, seed=cfg.seeds[0])
        a = sample_stage(cfg.model, have[s], f"{train_key}@{s}", scfg, f"step {s}", cache, False)
        frames.append(judge_stage(a, cfg.judge, cache).assign(step=s))
    return pd.concat(frames, ignore_index=True)
