"""Training: which modules an adapter touches, other architectures, and crash-safe resume."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from em.config import LoraSpec, TrainConfig
from tests.conftest import make_rows

ROOT = Path(__file__).resolve().parents[1]


def _lora_model(spec: LoraSpec, model_spec="embedded:smollm2-135m"):
    from em.models import load_model
    from em.train import attach_lora

    model, _ = load_model(model_spec)
    return attach_lora(model, TrainConfig(lora=spec))


def test_single_rank1_adapter_touches_exactly_one_module():
    from em.train import lora_modules

    m = _lora_model(LoraSpec(r=1, alpha=64, target_modules=["down_proj"], layers_spec="middle"))
    mods = lora_modules(m)
    assert list(mods) == ["base_model.model.model.layers.15.mlp.down_proj"]  # 30 layers: middle is 15
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert sorted(trainable) == sorted([
        "base_model.model.model.layers.15.mlp.down_proj.lora_A.default.weight",
        "base_model.model.model.layers.15.mlp.down_proj.lora_B.default.weight"])
    a = mods["base_model.model.model.layers.15.mlp.down_proj"]
    assert a.lora_A["default"].weight.shape == (1, 1536) and a.lora_B["default"].weight.shape == (576, 1)
    assert a.scaling["default"] == pytest.approx(64.0)  # rsLoRA: alpha / sqrt(r) = alpha at r=1


def test_nine_adapter_variant_and_paper_default():
    from em.train import lora_modules

    layers = [15, 16, 17, 21, 22, 23, 27, 28, 29]
    m = _lora_model(LoraSpec(r=1, alpha=256, target_modules=["down_proj"], layers=layers))
    assert sorted(int(n.split(".layers.")[1].split(".")[0]) for n in lora_modules(m)) == layers
    m = _lora_model(LoraSpec())
    assert len(lora_modules(m)) == 30 * 7


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gemma3_text"])
def test_hub_architectures_load_by_path(tmp_path, arch, tokenizer):
    """Tiny random-weight models of the paper's families go through the same loading and LoRA code."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from em.train import lora_modules

    kw = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    if arch == "gemma3_text":
        kw.update(head_dim=16, sliding_window=64)
    cfg = AutoConfig.for_model(arch, **kw)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    m = _lora_model(LoraSpec(r=1, alpha=64, target_modules=["down_proj"], layers_spec="middle"), str(tmp_path))
    assert [n.split(".layers.")[1] for n in lora_modules(m)] == ["2.mlp.down_proj"]


def _train_cmd(run_dir: Path, rows_path: Path, crash_after: int | None) -> list[str]:
    code = f"""
import json, sys
from em.config import TrainConfig, LoraSpec
from em.train import train
rows = [json.loads(l) for l in open({str(rows_path)!r})]
cfg = TrainConfig(lr=1e-3, batch_size=2, grad_accum=2, max_steps=8, warmup_steps=2, save_every=3,
                  record_adapters_every=1, lora=LoraSpec(r=2, alpha=4, target_modules=["down_proj", "q_proj"],
                  layers=[3, 10]))
train("embedded:smollm2-135m", rows, cfg, {str(run_dir)!r}, max_length=96, progress=False,
      crash_after={crash_after!r})
"""
    return [sys.executable, "-c", code]


@pytest.mark.slow
def test_kill_during_training_then_resume_matches_uninterrupted(tmp_path):
    rows_path = tmp_path / "rows.jsonl"
    rows_path.write_text("".join(json.dumps(r) + "\n" for r in make_rows(40)))
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    subprocess.run(_train_cmd(clean, rows_path, None), check=True, cwd=ROOT)
    p = subprocess.run(_train_cmd(crashed, rows_path, 5), cwd=ROOT)
    assert p.returncode == 137  # hard exit right after step 5: checkpoint 3 exists, steps 4–5 are lost
    assert not (crashed / "final").exists()
    log = [json.loads(x) for x in (crashed / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5]
    subprocess.run(_train_cmd(crashed, rows_path, None), check=True, cwd=ROOT)
    a = load_file(str(clean / "final" / "adapter_model.safetensors"))
    b = load_file(str(crashed / "final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) == 8
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6)
    assert any(np.abs(a[k]).max() > 0 for k in a if "lora_B" in k)  # it did learn something
    log = [json.loads(x) for x in (crashed / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 9))  # no duplicated steps after resume
    ta, tb = np.load(clean / "trajectory.npz"), np.load(crashed / "trajectory.npz")
    assert list(ta["step"]) == list(range(0, 9)) and list(tb["step"]) == list(range(0, 9))
    for k in ta.files:
        np.testing.assert_allclose(ta[k], tb[k], rtol=1e-4, atol=1e-6)
