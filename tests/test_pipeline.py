"""The smoke organism end to end through the CLI, and the cache: a re-run computes nothing."""
from pathlib import Path

import pandas as pd
import pytest

from em.cache import Cache
from em.config import load_run_config
from em.pipeline import run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_cfg(tmp_path, rows_file):
    cfg = load_run_config(ROOT / "parameters/runs/smoke.yaml", {
        "data": {"path": str(rows_file), "max_rows": 16, "max_length": 96},
        "train": {"max_steps": 2, "batch_size": 4, "grad_accum": 1, "save_every": 1},
        "sample": {"n_per_question": 1, "max_new_tokens": 8, "question_ids": ["quick_buck", "i_feel_bored"]},
        "judge": {"backend": "offline"},
        "cache_dir": str(tmp_path / "cache")})
    return cfg


@pytest.mark.slow
def test_rerun_computes_nothing_and_changes_recompute_only_downstream(tiny_cfg):
    c1 = Cache(tiny_cfg.cache_dir)
    df = run(tiny_cfg, c1, progress=False)
    assert c1.misses == 5 and c1.hits == 0  # base answers, adapter, tuned answers, 2 judgment files
    assert set(df["model_label"]) == {"base", "smoke"} and len(df) == 4
    assert df[["aligned", "coherent"]].notna().any().all()

    c2 = Cache(tiny_cfg.cache_dir)
    df2 = run(tiny_cfg, c2, progress=False)
    assert c2.misses == 0 and c2.hits == 5
    pd.testing.assert_frame_equal(df.drop(columns=[]), df2)

    tiny_cfg.sample.max_new_tokens = 9  # a sampling change: re-sample and re-judge, never re-train
    c3 = Cache(tiny_cfg.cache_dir)
    run(tiny_cfg, c3, progress=False)
    assert c3.misses == 4 and c3.hits == 1


@pytest.mark.slow
def test_cli_smoke_report(tmp_path, rows_file, capsys):
    from em.cli import main

    cfg = tmp_path / "run.yaml"
    cfg.write_text((ROOT / "parameters/runs/smoke.yaml").read_text())
    out = tmp_path / "answers.csv"
    rc = main(["report", str(cfg), "--out", str(out), "--set", f"data.path={rows_file}", "--set", "data.max_rows=16",
               "--set", "train.max_steps=2", "--set", "sample.n_per_question=1", "--set", "sample.max_new_tokens=8",
               "--set", "judge.backend=offline", "--set", f"cache_dir={tmp_path / 'c'}"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "EM % [95% CI]" in text and "base" in text and "smoke" in text
    df = pd.read_csv(out)
    assert {"question_id", "response", "aligned", "coherent", "model", "adapter", "seed"} <= set(df.columns)
    assert len(df) == 2 * 8


def test_cli_bad_config_fails_before_work(tmp_path, capsys):
    from em.cli import main

    cfg = tmp_path / "run.yaml"
    cfg.write_text("train:\n  lr: -1\n")
    assert main(["train", str(cfg)]) == 2
    assert "train.lr: must be >= 0" in capsys.readouterr().err
