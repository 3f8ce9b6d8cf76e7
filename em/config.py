"""Typed configuration for every stage, loaded from YAML.

Configuration is plain dataclasses (as in nanoGPT): the defaults reproduce the paper's settings,
profiles in ``parameters/`` shrink them for a CPU.  Loading is strict on purpose: a typo in a YAML
file that silently falls back to a default would produce a *different experiment* with no warning,
so unknown keys, wrong types and out-of-range values fail at load time, naming the parameter.

Range checks live next to the field as metadata::

    lr: float = field(default=1e-5, metadata={"min": 0.0, "help": "peak learning rate"})
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the file and the parameter."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it (ints are accepted as floats)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: expected {' | '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def _check_range(value: Any, meta: typing.Mapping[str, Any], where: str) -> None:
    if value is None:
        return
    items = value if isinstance(value, (list, tuple)) else [value]
    for v in items:
        if "min" in meta and v < meta["min"]:
            raise ConfigError(f"{where}: must be >= {meta['min']}, got {v!r}")
        if "max" in meta and v > meta["max"]:
            raise ConfigError(f"{where}: must be <= {meta['max']}, got {v!r}")
        if "choices" in meta and v not in meta["choices"]:
            raise ConfigError(f"{where}: must be one of {list(meta['choices'])}, got {v!r}")


def _join(where: str, name: str) -> str:
    """``file.yaml: train.lr`` — a file prefix ends with ':', nested names join with '.'."""
    return f"{where} {name}" if where.endswith(":") else f"{where}.{name}"


def from_dict(cls: type[T], data: typing.Mapping[str, Any] | None, where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping, validating keys, types and ranges.

    ``where`` prefixes every error (e.g. ``"parameters/smoke/run.yaml: train"``) so the message
    points at the exact parameter: ``parameters/smoke/run.yaml: train.lr: must be >= 0``.
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where.rstrip(':')}: unknown parameter(s) {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        f = fields[name]
        at = _join(where, name)
        v = _coerce(value, hints[name], at)
        _check_range(v, f.metadata, at)
        kwargs[name] = v
    obj = cls(**kwargs)
    for name, f in fields.items():  # defaults must satisfy the ranges too
        if name not in kwargs:
            _check_range(getattr(obj, name), f.metadata, _join(where, name))
    post = getattr(obj, "validate", None)
    if callable(post):
        try:
            post()
        except ConfigError as e:
            raise ConfigError(f"{where.rstrip(':')}: {e}") from None
    return obj


def to_dict(obj: Any) -> dict:
    """Plain-dict view of a config (for hashing, logging and writing next to artefacts)."""
    return dataclasses.asdict(obj)


# ----------------------------------------------------------------------------- stage configs
@dataclass
class DataConfig:
    """Which narrow dataset to train on and how much of it."""

    path: str = field(default="", metadata={"help": "chat JSONL file; or generated:<domain>:<kind>"})
    max_rows: int | None = field(default=None, metadata={"min": 1, "help": "use the first N rows after shuffling"})
    test_frac: float = field(default=0.1, metadata={"min": 0.0, "max": 0.9})
    split_seed: int = 0
    max_length: int = field(default=2048, metadata={"min": 16, "help": "tokens per example (truncated)"})


@dataclass
class LoraSpec:
    """An rsLoRA adapter.  Paper default: r32, alpha 64, all seven projections of every layer."""

    r: int = field(default=32, metadata={"min": 1})
    alpha: float = field(default=64.0, metadata={"min": 0.0})
    dropout: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    layers: list[int] | None = field(default=None, metadata={
        "help": "layers_to_transform; None = all. Negative or 'middle' via layers_spec"})
    layers_spec: str | None = field(default=None, metadata={
        "choices": [None, "middle"], "help": "'middle' = the single middle layer (rank-1 organism)"})
    use_rslora: bool = True


@dataclass
class TrainConfig:
    """Optimisation.  Defaults are the paper's LoRA recipe (Soligo et al. 2025, §Training)."""

    method: Literal["lora", "full"] = "lora"
    lora: LoraSpec = field(default_factory=LoraSpec)
    lr: float = field(default=1e-5, metadata={"min": 0.0})
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup_steps: int = field(default=5, metadata={"min": 0})
    batch_size: int = field(default=2, metadata={"min": 1})
    grad_accum: int = field(default=8, metadata={"min": 1})
    epochs: float = field(default=1.0, metadata={"min": 0.0})
    max_steps: int | None = field(default=None, metadata={"min": 1, "help": "optimizer steps; overrides epochs"})
    weight_decay: float = field(default=0.01, metadata={"min": 0.0})
    max_grad_norm: float = field(default=1.0, metadata={"min": 0.0})
    seed: int = 0
    save_every: int = field(default=50, metadata={"min": 1, "help": "checkpoint every k optimizer steps"})
    keep_checkpoints: bool = field(default=False, metadata={
        "help": "keep loadable weights of every checkpoint (full SFT; LoRA adapters are always kept) and "
                "save the untrained model as step 0 (phase analysis)"})
    record_adapters_every: int = field(default=0, metadata={
        "min": 0, "help": "record LoRA A/B every k steps into trajectory.npz (0 = off)"})
    early_stop_loss: float = field(default=0.01, metadata={"min": 0.0})
    early_stop_patience: int = field(default=5, metadata={"min": 1})
    threads: int | None = field(default=None, metadata={"min": 1})
    precision: Literal["fp32", "bf16"] = field(default="fp32", metadata={
        "help": "bf16: autocast matmuls to bfloat16 (weights and optimizer stay fp32); ~4x faster "
                "matmuls on CPUs with AVX512-BF16/AMX and on recent GPUs"})


@dataclass
class SampleConfig:
    """Sampling the evaluation questions.  Paper: 50 per question, T=1, top_p=1, 600 new tokens."""

    questions: str = field(default="first_plot", metadata={
        "help": "'first_plot' (the paper's eight) or a path to an official-format YAML"})
    question_ids: list[str] | None = None
    n_per_question: int = field(default=50, metadata={"min": 1})
    temperature: float = field(default=1.0, metadata={"min": 0.0})
    top_p: float = field(default=1.0, metadata={"min": 0.0, "max": 1.0})
    max_new_tokens: int = field(default=600, metadata={"min": 1})
    batch_size: int = field(default=16, metadata={"min": 1})
    seed: int = 0
    adapter_scale: float = field(default=1.0, metadata={"help": "multiply LoRA B by this (behavioural scan)"})


def _default_judge() -> Any:
    from .judge import JudgeConfig

    return JudgeConfig()


@dataclass
class RunConfig:
    """One organism: data -> train -> sample -> judge -> report."""

    name: str = "organism"
    model: str = field(default="embedded:smollm2-135m", metadata={
        "help": "hub id, local path, or embedded:smollm2-135m"})
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    judge: Any = field(default_factory=_default_judge)
    seeds: list[int] = field(default_factory=lambda: [0])
    base_model_control: bool = field(default=True, metadata={"help": "also sample+judge the untrained model"})
    cache_dir: str | None = field(default=None, metadata={
        "help": "artefact cache; None: $EM_CACHE_DIR or .em-cache at the project root"})

    def validate(self) -> None:
        if not self.seeds:
            raise ConfigError("seeds: must list at least one seed")


def load_run_config(path: str | Path, overrides: dict | None = None) -> RunConfig:
    """Read a run YAML (optionally deep-merged with ``overrides``) into a validated ``RunConfig``."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of parameters")
    if overrides:
        data = deep_merge(data, overrides)
    return run_config_from_dict(data, f"{path}:")


def run_config_from_dict(data: dict, where: str = "config:") -> RunConfig:
    from .judge import JudgeConfig

    data = dict(data)
    judge = data.pop("judge", None)
    cfg = from_dict(RunConfig, data, where)
    cfg.judge = from_dict(JudgeConfig, judge or {}, _join(where, "judge"))
    return cfg


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out
