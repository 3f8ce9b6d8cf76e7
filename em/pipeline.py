"""data → train → sample → judge → metrics, each stage cached by what determines it.

A stage's cache key is the hash of its own config plus the keys of the artefacts it consumes, so
changing the judge re-judges without re-training, changing the sampling temperature re-samples
and re-judges, and an unchanged config computes nothing.  The ``STAGE_VERSION`` constants are part
of the keys: bump one when a stage's logic changes what it produces.
"""
from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pandas as pd

from .cache import Cache, atomic_write_text, file_hash, stable_hash
from .config import DataConfig, RunConfig, SampleConfig, TrainConfig
from .data import read_chat_jsonl, resolve_dataset, split_train_test, subsample

STAGE_VERSION = {"train": 1, "sample": 1, "judge": 1}


# ----------------------------------------------------------------------------- data
def load_training_rows(dcfg: DataConfig) -> tuple[list[dict], list[dict], str]:
    """Train rows (after the 90/10 split and optional subsample), test rows, and a data key."""
    path = resolve_dataset(dcfg.path)
    rows = read_chat_jsonl(path)
    train, test = split_train_test(rows, seed=dcfg.split_seed, test_frac=dcfg.test_frac)
    train = subsample(train, dcfg.max_rows, seed=dcfg.split_seed)
    key = stable_hash({"file": file_hash(path), "cfg": asdict(dcfg) | {"path": None}})
    return train, test, key


# ----------------------------------------------------------------------------- train
# Fields added to TrainConfig after artefacts existed: they enter the key only when set to something
# other than this default, so adapters trained before the field existed keep their keys.
_LATER_TRAIN_FIELDS = {"precision": "fp32"}


def train_key(model: str, data_key: str, tcfg: TrainConfig, max_length: int) -> str:
    view = {k: v for k, v in asdict(tcfg).items() if _LATER_TRAIN_FIELDS.get(k, object()) != v}
    return stable_hash({"v": STAGE_VERSION["train"], "model": model, "data": data_key,
                        "train": view, "max_length": max_length})


def train_stage(cfg: RunConfig, seed: int, cache: Cache, progress: bool = True) -> tuple[Path, str]:
    """Train (or find, or resume) the organism for one seed; returns (final adapter dir, key)."""
    from .train import train

    rows, _, data_key = load_training_rows(cfg.data)
    tcfg = replace(cfg.train, seed=seed)
    key = train_key(cfg.model, data_key, tcfg, cfg.data.max_length)
    run_dir = cache.dir_for("runs", key)
    if (run_dir / "final" / "DONE").exists():
        cache.hits += 1
    else:
        cache.misses += 1
        train(cfg.model, rows, tcfg, run_dir, max_length=cfg.data.max_length, progress=progress)
    return run_dir / "final", key


# ----------------------------------------------------------------------------- sample
def load_for_sampling(model_spec: str, adapter: str | Path | None = None, scale: float = 1.0) -> tuple[Any, Any]:
    """Base model, optionally with a PEFT adapter (B scaled by ``scale``) or a full fine-tune."""
    from .models import load_model

    adapter = Path(adapter) if adapter else None
    if adapter is not None and (adapter / "config.json").exists() and not (adapter / "adapter_config.json").exists():
        return load_model(str(adapter))  # full SFT checkpoint
    model, tok = load_model(model_spec)
    if adapter is not None:
        import torch
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
        if scale != 1.0:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "lora_B" in name:
                        p.mul_(scale)
    model.eval()
    return model, tok


def sample_key(model: str, adapter_key: str | None, scfg: SampleConfig) -> str:
    return stable_hash({"v": STAGE_VERSION["sample"], "model": model, "adapter": adapter_key, "sample": asdict(scfg)})


def sample_stage(model_spec: str, adapter: Path | None, adapter_key: str | None, scfg: SampleConfig,
                 label: str, cache: Cache, progress: bool = True) -> pd.DataFrame:
    """Answers to the evaluation questions, cached as JSONL."""
    from .sample import get_questions, sample_answers

    questions = get_questions(scfg)
    key = sample_key(model_spec, adapter_key, scfg)

    partial = cache.file_for("answers", key, ".partial.jsonl")  # finished batches survive a crash

    def make(tmp: Path) -> None:
        model, tok = load_for_sampling(model_spec, adapter, scfg.adapter_scale)
        prov = {"model": model_spec, "adapter": adapter_key or "", "adapter_scale": scfg.adapter_scale}
        rows = sample_answers(model, tok, questions, scfg, provenance=prov, progress=progress, partial=partial)
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))

    path = cache.get_or_make_file("answers", key, ".jsonl", make)
    partial.unlink(missing_ok=True)
    df = pd.read_json(path, lines=True, dtype={"response": str, "adapter": str})
    df["response"] = df["response"].fillna("")
    df["answers_key"] = key
    df["model_label"] = label
    return df


# ----------------------------------------------------------------------------- judge
def judge_stage(answers: pd.DataFrame, jcfg: Any, cache: Cache, judge: Any = None) -> pd.DataFrame:
    """Add one column per judge metric (``aligned``, ``coherent``, …; NaN where the score is None).

    Judgments are cached per answers file and judge config; the judge itself may keep a finer
    per-answer store (the OpenAI backend does, so an interrupted run resumes).
    """
    from .judge import judge_identity, make_judge

    ident = judge_identity(jcfg)  # changes with the judge's material and rubrics, not only its config
    out = []
    for akey, g in answers.groupby("answers_key", sort=False):
        key = stable_hash({"v": STAGE_VERSION["judge"], "answers": akey, "judge": ident,
                           "metrics": list(jcfg.metrics)})

        def make(tmp: Path, g: pd.DataFrame = g) -> None:
            nonlocal judge
            judge = judge or make_judge(jcfg)
            scores = {m: judge.score(g["question"].tolist(), g["response"].tolist(), m) for m in jcfg.metrics}
            pd.DataFrame(scores).to_csv(tmp, index=False)

        path = cache.get_or_make_file("judgments", key, ".csv", make)
        scores = pd.read_csv(path)
        g = g.reset_index(drop=True).copy()
        for m in scores.columns:
            g[m] = scores[m]
        out.append(g)
    return pd.concat(out, ignore_index=True) if out else answers


# ----------------------------------------------------------------------------- the whole run
def answers_stage(cfg: RunConfig, cache: Cache, progress: bool = True) -> pd.DataFrame:
    """Every seed's fine-tune (and, as a control, the base model) sampled: one row per answer."""
    frames = []
    for seed in cfg.seeds:
        scfg = replace(cfg.sample, seed=seed)
        if cfg.base_model_control:
            frames.append(sample_stage(cfg.model, None, None, scfg, "base", cache, progress))
        adapter, key = train_stage(cfg, seed, cache, progress)
        a = sample_stage(cfg.model, adapter, key, scfg, cfg.name, cache, progress)
        a["train_seed"] = seed
        frames.append(a)
    return pd.concat(frames, ignore_index=True)


def run(cfg: RunConfig, cache: Cache | None = None, progress: bool = True) -> pd.DataFrame:
    """:func:`answers_stage`, judged: one row per answer with the judge's scores."""
    cache = cache or Cache(cfg.cache_dir)
    return judge_stage(answers_stage(cfg, cache, progress), cfg.judge, cache)


def write_answers(df: pd.DataFrame, path: str | Path) -> None:
    atomic_write_text(path, df.to_csv(index=False))
