"""Fine-tuning: rsLoRA (any rank, layers, modules) or full SFT, crash-safe and resumable.

One loop serves the CPU and a cluster: it runs under 🤗 accelerate, so
``accelerate launch -m em.cli train run.yaml`` spreads it over GPUs (DDP, FSDP or DeepSpeed, as
the accelerate config says) with no parallel code of our own.

Why a hand-written loop rather than TRL's ``SFTTrainer``: on a small CPU the two things that
matter are (1) padding — we group examples of similar length into each micro-batch — and (2) the
vocabulary projection — with loss on assistant tokens only, we apply the LM head only at positions
that carry a label.  ``bench/train_speed.py`` measures the gain side by side.

Everything a crash could lose is on disk: a checkpoint every ``save_every`` optimizer steps (the
trainable weights, optimizer, scheduler and RNG states, written to a temporary folder and renamed),
one JSON line of log per step, and — for phase analysis — the LoRA A/B matrices every
``record_adapters_every`` steps.  Re-running the same command resumes from the last checkpoint and
ends with the same adapter as an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .cache import atomic_write_json, atomic_write_text
from .config import ConfigError, TrainConfig
from .data import IGNORE_INDEX, collate


# ----------------------------------------------------------------------------- model set-up
def resolve_layers(spec_layers: list[int] | None, layers_spec: str | None, n_layers: int) -> list[int] | None:
    """``layers_to_transform`` for PEFT: explicit indices (negative counts from the end) or 'middle'."""
    if layers_spec == "middle":
        return [n_layers // 2]
    if spec_layers is None:
        return None
    out = []
    for i in spec_layers:
        j = i + n_layers if i < 0 else i
        if not 0 <= j < n_layers:
            raise ConfigError(f"train.lora.layers: layer {i} out of range for a {n_layers}-layer model")
        out.append(j)
    return sorted(set(out))


def attach_lora(model: Any, cfg: TrainConfig) -> Any:
    """Wrap ``model`` with an rsLoRA adapter as configured (PEFT)."""
    from peft import LoraConfig, get_peft_model

    from .models import num_layers

    spec = cfg.lora
    layers = resolve_layers(spec.layers, spec.layers_spec, num_layers(model))
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [m for m in spec.target_modules if m not in names]
    if missing:
        raise ConfigError(f"train.lora.target_modules: {missing} not found in the model")
    lcfg = LoraConfig(
        r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules), layers_to_transform=layers,
        use_rslora=spec.use_rslora, bias="none", task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lcfg)


def lora_modules(model: Any) -> dict[str, Any]:
    """PEFT LoRA layers by name (those with ``lora_A``/``lora_B``)."""
    return {n: m for n, m in model.named_modules()
            if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {})}


def lora_state(model: Any) -> dict[str, np.ndarray]:
    """Current A (r, in) and B (out, r) of every adapter, as float32 numpy arrays."""
    out = {}
    for name, m in lora_modules(model).items():
        out[f"A/{name}"] = m.lora_A["default"].weight.detach().float().cpu().numpy().copy()
        out[f"B/{name}"] = m.lora_B["default"].weight.detach().float().cpu().numpy().copy()
    return out


# ----------------------------------------------------------------------------- batching
def plan_batches(lengths: list[int], cfg: TrainConfig, world: int = 1) -> list[list[list[int]]]:
    """The whole run's data order: ``steps[s][micro] = [example indices]``.

    Deterministic from ``cfg.seed``: each epoch is a seeded shuffle; each optimizer step takes
    ``batch_size * grad_accum * world`` examples, sorted by length inside the step so that
    micro-batches pad little.  Computing the plan up front is what makes resume exact.
    """
    n = len(lengths)
    per_step = cfg.batch_size * cfg.grad_accum * world
    if n < per_step:
        raise ConfigError(f"train: {n} training examples is fewer than one step "
                          f"(batch_size*grad_accum = {per_step})")
    steps_per_epoch = n // per_step
    total = cfg.max_steps or max(1, int(math.ceil(steps_per_epoch * cfg.epochs)))
    rng = random.Random(cfg.seed)
    plan: list[list[list[int]]] = []
    epoch_order: list[int] = []
    while len(plan) < total:
        if len(epoch_order) < per_step:
            order = list(range(n))
            rng.shuffle(order)
            epoch_order = order
        chunk, epoch_order = epoch_order[:per_step], epoch_order[per_step:]
        chunk.sort(key=lambda i: lengths[i])
        micro = [chunk[i:i + cfg.batch_size] for i in range(0, per_step, cfg.batch_size)]
        rng.shuffle(micro)
        plan.append(micro)
    return plan


def causal_lm_loss_sum(model: Any, batch: dict, fast: bool = True) -> tuple[Any, int]:
    """Summed next-token loss over labelled positions, and their count.

    ``fast`` runs the decoder, then the LM head only where a label exists (assistant tokens):
    the same loss as ``model(labels=...)`` at a fraction of the vocabulary matmul.
    """
    import torch
    import torch.nn.functional as F

    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    n = int(keep.sum())
    if not fast:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits = out.logits[:, :-1][keep]
    else:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        decoder = base.get_decoder() if hasattr(base, "get_decoder") else base.model
        hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        logits = base.get_output_embeddings()(hidden[:, :-1][keep])
        cap = getattr(base.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
    loss = F.cross_entropy(logits.float(), labels[keep], reduction="sum")
    return loss, n


# ----------------------------------------------------------------------------- checkpoints
def _ckpt_name(step: int) -> str:
    return f"step-{step:06d}"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    d = run_dir / "checkpoints"
    if not d.exists():
        return []
    out = []
    for p in d.iterdir():
        if p.is_dir() and p.name.startswith("step-") and (p / "trainer_state.pt").exists():
            out.append((int(p.name.split("-")[1]), p))
    return sorted(out)


@dataclass
class TrainResult:
    run_dir: Path
    final: Path
    steps: int
    resumed_from: int
    stopped_early: bool
    tokens: int
    seconds: float


# ----------------------------------------------------------------------------- the loop
def train(model_spec: str, rows_train: list[dict], cfg: TrainConfig, run_dir: str | Path,
          max_length: int = 2048, progress: bool = True, crash_after: int | None = None) -> TrainResult:
    """Fine-tune ``model_spec`` on chat rows; write everything into ``run_dir``; resume if possible.

    ``crash_after`` (tests only) hard-kills the process after that optimizer step, emulating
    ``kill -9`` at the worst moment: right after a step, before anything else is written.
    """
    import torch
    from accelerate import Accelerator
    from tqdm import tqdm
    from transformers import get_scheduler

    from .data import tokenise_rows
    from .models import load_model, set_threads

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final_dir = run_dir / "final"
    if (final_dir / "DONE").exists():
        meta = json.loads((final_dir / "DONE").read_text())
        return TrainResult(run_dir, final_dir, meta["steps"], meta["steps"], meta["stopped_early"],
                           meta["tokens"], 0.0)

    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    acc = Accelerator(gradient_accumulation_steps=1)
    model, tok = load_model(model_spec, device=str(acc.device))
    if cfg.method == "lora":
        model = attach_lora(model, cfg)
    else:
        model.config.use_cache = False
    model.train()
    data = tokenise_rows(rows_train, tok, max_length)
    if not data:
        raise ConfigError("data: no training example has an assistant token after tokenisation")
    plan = plan_batches([len(t.input_ids) for t in data], cfg, acc.num_processes)
    total = len(plan)

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    sched = get_scheduler(cfg.schedule, opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=total)
    model, opt, sched = acc.prepare(model, opt, sched)
    raw = acc.unwrap_model(model)
    distributed = acc.num_processes > 1

    # --- resume
    start, tokens_done, low_loss_run = 0, 0, 0
    traj: dict[str, list] = {}
    ckpts = list_checkpoints(run_dir)
    if ckpts:
        start, ck = ckpts[-1]
        state = torch.load(ck / "trainer_state.pt", map_location="cpu", weights_only=False)
        trainable = {n: p for n, p in raw.named_parameters() if p.requires_grad}
        with torch.no_grad():
            for n, t in state["params"].items():
                trainable[n].copy_(t.to(trainable[n].device))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["py_rng"])
        tokens_done, low_loss_run = state["tokens"], state["low_loss_run"]
        traj = state.get("trajectory", {})
    log_path = run_dir / "log.jsonl"
    if log_path.exists():  # drop log lines written after the checkpoint we resume from
        lines = [ln for ln in log_path.read_text().splitlines() if ln.strip()]
        kept = [ln for ln in lines if json.loads(ln)["step"] <= start]
        atomic_write_text(log_path, "".join(ln + "\n" for ln in kept))
    if acc.is_main_process:
        atomic_write_json(run_dir / "train_config.json", {"model": model_spec, "train": cfg,
                                                           "n_train": len(data), "steps": total})

    def record(step: int) -> None:
        if cfg.method != "lora" or not cfg.record_adapters_every:
            return
        if step % cfg.record_adapters_every and step != total:
            return
        traj.setdefault("step", []).append(step)
        for k, v in lora_state(raw).items():
            traj.setdefault(k, []).append(v)

    def write_trajectory() -> None:
        if traj and acc.is_main_process:
            arrays = {k: np.asarray(v) for k, v in traj.items()}
            tmp = run_dir / ".trajectory.tmp.npz"
            np.savez(tmp, **arrays)
            os.replace(tmp, run_dir / "trajectory.npz")

    def checkpoint(step: int) -> None:
        if not acc.is_main_process:
            return
        ck = run_dir / "checkpoints" / _ckpt_name(step)
        tmp = run_dir / "checkpoints" / f".tmp-{_ckpt_name(step)}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if cfg.method == "lora" or cfg.keep_checkpoints:  # a loadable adapter / model per checkpoint
            raw.save_pretrained(tmp)  # PEFT adapter (LoRA) or a full model (SFT)
            if cfg.method == "full":
                tok.save_pretrained(tmp)
        state = {
            "step": step,
            "params": {n: p.detach().cpu().clone() for n, p in raw.named_parameters() if p.requires_grad},
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "torch_rng": torch.get_rng_state(), "py_rng": random.getstate(),
            "tokens": tokens_done, "low_loss_run": low_loss_run, "trajectory": traj,
        }
        torch.save(state, tmp / "trainer_state.pt")
        shutil.rmtree(ck, ignore_errors=True)
        os.replace(tmp, ck)
        write_trajectory()
        # Only the newest checkpoint keeps the optimizer state (resume needs no more).  Older ones
        # keep their loadable weights when they are small (LoRA) or asked for (keep_checkpoints).
        for s, old in list_checkpoints(run_dir):
            if s < step:
                if cfg.method == "lora" or cfg.keep_checkpoints:
                    (old / "trainer_state.pt").unlink()
                else:
                    shutil.rmtree(old)

    def autocast() -> Any:
        if cfg.precision == "bf16":
            return torch.autocast(device_type=acc.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    if start == 0:
        record(0)
        if cfg.keep_checkpoints:  # the untrained adapter: step 0 of a behavioural scan
            checkpoint(0)
    t0 = time.perf_counter()
    tokens_run, stopped_early, step = 0, False, start
    bar = tqdm(total=total, initial=start, desc="train", disable=not (progress and acc.is_main_process),
               unit="step")
    for step in range(start + 1, total + 1):
        micro = plan[step - 1]
        if distributed:
            micro = micro[acc.process_index::acc.num_processes]
        n_tokens = sum(data[i].n_trainable for mb in micro for i in mb)
        if distributed:
            n_tokens = int(acc.reduce(torch.tensor(n_tokens, device=acc.device), "sum"))
        loss_total = 0.0
        for mb in micro:
            batch = collate([data[i] for i in mb], tok.pad_token_id)
            batch = {k: v.to(acc.device) for k, v in batch.items()}
            tokens_run += int(batch["attention_mask"].sum())
            with autocast():
                loss_sum, _ = causal_lm_loss_sum(model, batch, fast=not distributed)
            loss = loss_sum / max(n_tokens, 1) * acc.num_processes
            acc.backward(loss)
            loss_total += float(loss_sum.detach())
        if distributed:
            loss_total = float(acc.reduce(torch.tensor(loss_total, device=acc.device), "sum"))
        grad_norm = float(acc.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")))
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        tokens_done += n_tokens
        step_loss = loss_total / max(n_tokens, 1)
        record(step)
        if acc.is_main_process:
            with log_path.open("a") as f:
                f.write(json.dumps({"step": step, "loss": step_loss, "grad_norm": grad_norm, "lr": lr,
                                    "tokens": n_tokens, "elapsed_s": time.perf_counter() - t0}) + "\n")
        bar.set_postfix(loss=f"{step_loss:.3f}", gnorm=f"{grad_norm:.2f}")
        bar.update(1)
        if crash_after is not None and step == crash_after:
            os._exit(137)
        low_loss_run = low_loss_run + 1 if step_loss < cfg.early_stop_loss else 0
        if low_loss_run > cfg.early_stop_patience:
            stopped_early = True
        if step % cfg.save_every == 0 or step == total or stopped_early:
            checkpoint(step)
        if stopped_early:
            break
    bar.close()
    seconds = time.perf_counter() - t0
    acc.wait_for_everyone()
    if acc.is_main_process:
        tmp = run_dir / ".tmp-final"
        shutil.rmtree(tmp, ignore_errors=True)
        raw.save_pretrained(tmp)  # PEFT adapter (LoRA) or a full model (SFT)
        if cfg.method == "full":
            tok.save_pretrained(tmp)
        atomic_write_json(tmp / "DONE", {"steps": step, "stopped_early": stopped_early,
                                         "tokens": tokens_done, "tokens_per_s_this_run": tokens_run / max(seconds, 1e-9)})
        shutil.rmtree(final_dir, ignore_errors=True)
        os.replace(tmp, final_dir)
        write_trajectory()
    return TrainResult(run_dir, final_dir, step, start, stopped_early, tokens_done, seconds)


def read_log(run_dir: str | Path) -> list[dict]:
    p = Path(run_dir) / "log.jsonl"
    if not p.exists():
        return []
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
