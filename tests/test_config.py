from pathlib import Path

import pytest

from em.config import ConfigError, LoraSpec, TrainConfig, from_dict, load_run_config

ROOT = Path(__file__).resolve().parents[1]


def test_unknown_key_names_parameter():
    with pytest.raises(ConfigError, match=r"train: unknown parameter\(s\) \['lrr'\]"):
        from_dict(TrainConfig, {"lrr": 1}, "train")


def test_wrong_type_and_range_name_parameter():
    with pytest.raises(ConfigError, match=r"train\.lr: expected a number"):
        from_dict(TrainConfig, {"lr": "fast"}, "train")
    with pytest.raises(ConfigError, match=r"train\.lr: must be >= 0"):
        from_dict(TrainConfig, {"lr": -1e-5}, "train")
    with pytest.raises(ConfigError, match=r"train\.lora\.r: must be >= 1"):
        from_dict(TrainConfig, {"lora": {"r": 0}}, "train")
    with pytest.raises(ConfigError, match=r"train\.method: must be one of"):
        from_dict(TrainConfig, {"method": "qlora"}, "train")
    with pytest.raises(ConfigError, match=r"train\.batch_size: expected an integer"):
        from_dict(TrainConfig, {"batch_size": True}, "train")


def test_paper_defaults():
    t = TrainConfig()
    assert (t.lora.r, t.lora.alpha, t.lora.dropout, t.lr) == (32, 64.0, 0.0, 1e-5)
    assert (t.batch_size, t.grad_accum, t.warmup_steps, t.weight_decay) == (2, 8, 5, 0.01)
    assert len(LoraSpec().target_modules) == 7 and t.lora.use_rslora


def test_yaml_error_names_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  lr: 1e-4\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: train\.epochs: expected a number"):
        load_run_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_run_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("path", sorted((ROOT / "parameters").glob("**/run*.yaml"))
                         + sorted((ROOT / "parameters" / "runs").glob("*.yaml")))
def test_shipped_run_configs_load(path):
    load_run_config(path)
