"""Phase transitions in LoRA training: trajectory metrics, automatic detection, behavioural scans.

The paper (Soligo et al. 2025, §Phase transitions) trains a single rank-1 LoRA adapter and
watches its B vector: the norm grows smoothly, but at one point the *direction* turns sharply
(a mechanistic transition, with a long gradient-norm peak), and scaling the adapter at each
checkpoint shows a behavioural jump at about the same time.  This module turns those plots into
numbers: it loads the trajectory (our ``trajectory.npz`` or any folder of PEFT checkpoints, such
as the paper's released ``checkpoint-<N>/`` folders), computes the paper's metrics, and applies a
documented rule that says *where* the turn is, *how sure* we are, and *when there is none*.

Conventions (read these before comparing numbers with the paper)
----------------------------------------------------------------
* **Rows, not steps.**  Every metric works on an array ``vectors`` of shape ``(rows, dim)``: one
  flattened B vector per *recorded* step.  A window ``k`` is ``k`` rows.  The paper's windows
  ``k ∈ {5, 10, 15}`` are training steps on checkpoints saved every 5 steps (1, 2 and 3 rows);
  :func:`rows_for_steps` converts.
* **Local cosine** at row ``t`` with window ``k``: ``cos(v[t-k] - v[t], v[t+k] - v[t])`` — the
  authors' code convention.  A straight path gives **-1**; a turn by angle θ gives ``-cos θ``, so
  a rotation shows as a *rise* towards 0 (90°) or above.  (Some text calls it a "drop": that is
  the same event with the sign flipped, or the angle ``arccos`` falling.)
* **Comparison score** (multi-adapter runs): ``‖AᵀB‖_F / (‖A‖_F ‖B‖_F)`` where the columns of
  ``A`` are the adapters' B vectors at step t and those of ``B`` at the final step — the
  adapters × adapters matrix of cross inner products, ``|cos|`` for one adapter.  The authors'
  released code transposes the other way, which compares only Gram matrices (see
  :func:`comparison_score`; ``convention="authors_code"`` reproduces it).
  :func:`delta_w_cosine` is the sign-aware alternative on the full updates ``ΔW = B @ A``.

Typical use::

    traj = load_trajectory("runs/rank1-seed0")   # or trajectory_from_checkpoints(".../checkpoints")
    b = traj.b_vectors()                          # (T, hidden) for a rank-1 adapter
    res = detect_transition(b, steps=traj.steps)  # None when there is no sharp turn
    window_table(res.per_window if res else scan_windows(b))  # what each window saw, and why
"""
from __future__ import annotations

import json
import math
import numbers
import os
import re
import shutil
import statistics
import struct
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .config import ConfigError, from_dict

# ----------------------------------------------------------------------------- constants
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_CKPT_RE = re.compile(r"^(?:step|checkpoint)-(\d+)$")
_LORA_KEY_RE = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")
_LORA_B_RE = re.compile(r"\.lora_B(?:\.[^.]+)?\.(?:weight|bias)$")
_NUMPY_DTYPES = {"F64", "F32", "F16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL"}
LOG_COLUMNS = ("loss", "grad_norm", "lr")
PAPER_SCALES = (1.0, 5.0, 10.0, 20.0)  # B multipliers of the behavioural scan
PAPER_WINDOWS_STEPS = (5, 10, 15)  # local-cosine windows in training steps (checkpoints every 5)


# ============================================================================= loading
@dataclass
class Trajectory:
    """The adapter weights at every recorded step, plus the training log at those steps.

    ``A[name]`` has shape ``(T, r, in_features)`` and ``B[name]`` ``(T, out_features, r)``, where
    ``name`` is the PEFT module path (``base_model.model.model.layers.15.mlp.down_proj``).
    ``loss``, ``grad_norm`` and ``lr`` are aligned with ``steps`` (NaN where not logged);
    ``history`` holds every logged step (a gradient-norm peak is often narrower than the
    checkpoint spacing, so plots should use it when present).
    """

    steps: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    lr: np.ndarray
    A: dict[str, np.ndarray]
    B: dict[str, np.ndarray]
    history: pd.DataFrame | None = None
    source: str = ""

    def __post_init__(self) -> None:
        where = self.source or "trajectory"
        self.steps = np.asarray(self.steps).astype(np.int64).reshape(-1)
        t = len(self.steps)
        if t == 0:
            raise ValueError(f"{where}: no recorded steps")
        if np.any(np.diff(self.steps) <= 0):
            bad = int(np.argmax(np.diff(self.steps) <= 0)) + 1
            raise ValueError(f"{where}: steps must increase strictly; row {bad} has step "
                             f"{self.steps[bad]} after {self.steps[bad - 1]}")
        for name in LOG_COLUMNS:
            arr = np.asarray(getattr(self, name), dtype=np.float64).reshape(-1)
            if len(arr) != t:
                raise ValueError(f"{where}: '{name}' has {len(arr)} values for {t} steps")
            setattr(self, name, arr)
        if set(self.A) != set(self.B):
            raise ValueError(f"{where}: modules with A but no B (or B but no A): "
                             f"{sorted(set(self.A) ^ set(self.B))}")
        if not self.B:
            raise ValueError(f"{where}: no adapter modules")
        for kind, arrays in (("A", self.A), ("B", self.B)):
            for name, arr in arrays.items():
                if arr.ndim != 3 or arr.shape[0] != t:
                    raise ValueError(f"{where}: {kind}/{name} has shape {arr.shape}; expected "
                                     f"({t}, {'r, in' if kind == 'A' else 'out, r'})")
        for name in self.B:
            if self.A[name].shape[1] != self.B[name].shape[2]:
                raise ValueError(f"{where}: rank mismatch for {name}: A {self.A[name].shape}, "
                                 f"B {self.B[name].shape}")

    # -- selection
    @property
    def modules(self) -> list[str]:
        return sorted(self.B)

    def module(self, name: str | None = None) -> str:
        """Resolve a module: the only one, an exact name, or a unique substring (``"layers.15."``)."""
        mods = self.modules
        if name is None:
            if len(mods) == 1:
                return mods[0]
            raise ValueError(f"{self.source or 'trajectory'}: {len(mods)} adapter modules; "
                             f"pick one with module=...: {mods}")
        if name in self.B:
            return name
        hits = [m for m in mods if name in m]
        if len(hits) != 1:
            raise ValueError(f"{self.source or 'trajectory'}: module {name!r} matches {len(hits)} "
                             f"of {mods}")
        return hits[0]

    def b_vectors(self, module: str | None = None) -> np.ndarray:
        """``(T, out*r)``: the flattened B of one module at every recorded step (float64)."""
        b = self.B[self.module(module)]
        return b.reshape(len(self.steps), -1).astype(np.float64)

    def a_vectors(self, module: str | None = None) -> np.ndarray:
        """``(T, r*in)``: the flattened A of one module at every recorded step (float64)."""
        a = self.A[self.module(module)]
        return a.reshape(len(self.steps), -1).astype(np.float64)

    def stacked_b(self, modules: Sequence[str] | None = None) -> np.ndarray:
        """``(T, n_modules, d)``: B vectors of several modules (all must have the same size)."""
        names = [self.module(m) for m in modules] if modules else self.modules
        vecs = [self.b_vectors(m) for m in names]
        sizes = {v.shape[1] for v in vecs}
        if len(sizes) != 1:
            raise ValueError(f"{self.source or 'trajectory'}: B sizes differ across modules "
                             f"{dict(zip(names, (v.shape[1] for v in vecs)))}; pick modules")
        return np.stack(vecs, axis=1)

    def every(self, k: int) -> "Trajectory":
        """Keep the rows whose step is a multiple of ``k`` (e.g. the paper's 5-step spacing)."""
        if k < 1:
            raise ValueError(f"every: k must be >= 1, got {k}")
        keep = self.steps % k == 0
        if keep.sum() < 2:
            raise ValueError(f"every({k}): fewer than 2 recorded steps are multiples of {k}")
        return Trajectory(self.steps[keep], self.loss[keep], self.grad_norm[keep], self.lr[keep],
                          {n: a[keep] for n, a in self.A.items()},
                          {n: b[keep] for n, b in self.B.items()}, self.history,
                          f"{self.source} every {k}")

    def log(self) -> pd.DataFrame:
        """Every logged step (``history``) or, without one, the log at the recorded steps."""
        if self.history is not None and len(self.history):
            return self.history
        return pd.DataFrame({"step": self.steps, "loss": self.loss,
                             "grad_norm": self.grad_norm, "lr": self.lr})


def read_log_jsonl(path: str | Path) -> pd.DataFrame:
    """Our training log (one JSON object per line with ``step`` and optionally ``loss``,
    ``grad_norm``, ``lr``) as a DataFrame sorted by step; later lines win on repeated steps."""
    path = Path(path)
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not JSON ({e.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("step"), int):
            raise ValueError(f"{path}:{i}: expected an object with an integer 'step'")
        rows.append({"step": obj["step"], **{c: _num(obj.get(c)) for c in LOG_COLUMNS}})
    return _log_frame(rows)


def _num(x: Any) -> float:
    try:
        return float(x) if x is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _log_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["step", *LOG_COLUMNS])
    if len(df):
        df = df.drop_duplicates("step", keep="last").sort_values("step").reset_index(drop=True)
    return df.astype({"step": "int64", **{c: "float64" for c in LOG_COLUMNS}})


def _read_trainer_states(paths: Iterable[Path]) -> pd.DataFrame:
    """Merge the HF Trainer ``log_history`` of every ``trainer_state.json`` (later files win)."""
    rows: list[dict] = []
    for p in paths:
        try:
            state = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not JSON ({e.msg})") from None
        for entry in state.get("log_history", []):
            if isinstance(entry, dict) and isinstance(entry.get("step"), int) and "loss" in entry:
                rows.append({"step": entry["step"], "loss": _num(entry.get("loss")),
                             "grad_norm": _num(entry.get("grad_norm")),
                             "lr": _num(entry.get("learning_rate"))})
    return _log_frame(rows)


def _align_log(log: pd.DataFrame | None, steps: np.ndarray) -> dict[str, np.ndarray]:
    out = {c: np.full(len(steps), np.nan) for c in LOG_COLUMNS}
    if log is None or not len(log):
        return out
    idx = log.set_index("step")
    for c in LOG_COLUMNS:
        out[c] = idx[c].reindex(steps).to_numpy(dtype=np.float64)
    return out


def load_trajectory(run_dir_or_npz: str | Path) -> Trajectory:
    """Load ``trajectory.npz`` (a run folder or the file itself).

    Expected keys: ``step`` (T,), and per module ``A/<name>`` (T, r, in) and ``B/<name>``
    (T, out, r); ``loss``, ``grad_norm`` and ``lr`` (T,) are optional — when absent they come
    from ``log.jsonl`` next to the file (matched by step), else NaN.  Other (T,) series are
    ignored; any other key is an error.
    """
    p = Path(run_dir_or_npz)
    npz = p / "trajectory.npz" if p.is_dir() else p
    if not npz.is_file():
        raise FileNotFoundError(f"{npz}: no trajectory file (train with record_adapters_every > 0, "
                                f"or use trajectory_from_checkpoints on a checkpoint folder)")
    with np.load(npz, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    if "step" not in data:
        raise ValueError(f"{npz}: missing key 'step' (has {sorted(data)[:8]})")
    steps = data["step"]
    log_path = npz.parent / "log.jsonl"
    history = read_log_jsonl(log_path) if log_path.is_file() else None
    aligned = _align_log(history, np.asarray(steps))
    logs = {c: data[c] if c in data else aligned[c] for c in LOG_COLUMNS}
    A = {k[2:]: v for k, v in data.items() if k.startswith("A/")}
    B = {k[2:]: v for k, v in data.items() if k.startswith("B/")}
    t = len(np.asarray(steps).reshape(-1))
    unknown = sorted(k for k in data if k not in ("step", *LOG_COLUMNS) and k[:2] not in ("A/", "B/")
                     and data[k].shape != (t,))  # other per-step series (e.g. tokens) are fine
    if unknown:
        raise ValueError(f"{npz}: unexpected keys {unknown} (expected step, loss, grad_norm, lr, "
                         f"A/<module>, B/<module>)")
    return Trajectory(steps, logs["loss"], logs["grad_norm"], logs["lr"], A, B, history, str(npz))


def _safetensors_dtypes(path: Path) -> tuple[dict[str, str], dict[str, str] | None]:
    """Read the header only: tensor dtypes and metadata (to pick numpy or torch for loading)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n > 100 * 2**20:
            raise ValueError(f"{path}: not a safetensors file (header length {n})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{path}: not a safetensors file (bad header)") from None
    meta = header.pop("__metadata__", None)
    return {k: v["dtype"] for k, v in header.items()}, meta


def load_adapter_state(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a PEFT adapter file as numpy arrays (bf16 is read through torch as fp32)."""
    path = Path(path)
    if path.is_dir():
        path = path / ADAPTER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no adapter weights")
    dtypes, _ = _safetensors_dtypes(path)
    if set(dtypes.values()) <= _NUMPY_DTYPES:
        from safetensors.numpy import load_file
        return load_file(str(path))
    from safetensors.torch import load_file as load_torch  # bf16/fp8: numpy has no such dtype
    return {k: v.float().numpy() for k, v in load_torch(str(path)).items()}


def list_adapter_checkpoints(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """``[(step, folder)]`` sorted numerically, for ``step-000050/`` (ours) and ``checkpoint-50/``
    (HF Trainer, the paper's releases) folders.  ``ckpt_dir`` may be the folder holding them or
    a run/repo root with a ``checkpoints/`` subfolder."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    for d in ([root / "checkpoints"] if (root / "checkpoints").is_dir() else []) + [root]:
        found: dict[int, Path] = {}
        for p in sorted(d.iterdir()):
            m = _CKPT_RE.match(p.name)
            if not (m and p.is_dir()):
                continue
            if not (p / ADAPTER_FILE).is_file():
                raise ValueError(f"{p}: checkpoint folder without {ADAPTER_FILE} (a full fine-tune? "
                                 f"the phase analysis needs LoRA adapters)")
            step = int(m.group(1))
            if step in found:
                raise ValueError(f"{d}: two checkpoints for step {step}: {found[step].name}, {p.name}")
            found[step] = p
        if found:
            return sorted(found.items())
    raise FileNotFoundError(f"{root}: no 'step-<N>/' or 'checkpoint-<N>/' folders with {ADAPTER_FILE}")


def _split_lora(state: Mapping[str, np.ndarray], where: str,
                modules: Sequence[str] | None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    A: dict[str, np.ndarray] = {}
    B: dict[str, np.ndarray] = {}
    for key, arr in state.items():
        m = _LORA_KEY_RE.match(key)
        if not m:
            continue
        name = m.group("module")
        if modules and not any(s in name for s in modules):
            continue
        (A if m.group("ab") == "A" else B)[name] = np.asarray(arr, dtype=np.float32)
    if not B:
        raise ValueError(f"{where}: no lora_A/lora_B weights" + (f" matching {list(modules)}" if modules else ""))
    return A, B


def trajectory_from_checkpoints(ckpt_dir: str | Path, modules: Sequence[str] | None = None,
                                progress: bool = True) -> Trajectory:
    """Read every PEFT checkpoint in ``ckpt_dir`` into a :class:`Trajectory`.

    Steps come from the folder names.  The log comes from our ``log.jsonl`` at the run root
    (``ckpt_dir`` or its parent) when present, else from the checkpoints' HF
    ``trainer_state.json`` ``log_history``, else NaN.  ``modules`` keeps only modules whose name
    contains one of the given substrings (a rank-32 all-layer adapter is large).
    """
    from tqdm import tqdm

    ckpts = list_adapter_checkpoints(ckpt_dir)
    As: dict[str, list[np.ndarray]] = {}
    Bs: dict[str, list[np.ndarray]] = {}
    ref_shapes: dict[str, tuple] | None = None
    for step, p in tqdm(ckpts, desc="checkpoints", disable=not progress, unit="ckpt"):
        A, B = _split_lora(load_adapter_state(p), str(p / ADAPTER_FILE), modules)
        shapes = {f"A/{n}": a.shape for n, a in A.items()} | {f"B/{n}": b.shape for n, b in B.items()}
        if ref_shapes is None:
            ref_shapes = shapes
        elif shapes != ref_shapes:
            diff = sorted(set(shapes.items()) ^ set(ref_shapes.items()))
            raise ValueError(f"{p}: adapter modules/shapes differ from the first checkpoint: {diff[:4]}")
        for n, a in A.items():
            As.setdefault(n, []).append(a)
        for n, b in B.items():
            Bs.setdefault(n, []).append(b)
    steps = np.array([s for s, _ in ckpts])
    root = Path(ckpt_dir)
    run_root = root.parent if root.name == "checkpoints" else root
    log_path = next((q for q in (run_root / "log.jsonl", root / "log.jsonl") if q.is_file()), None)
    if log_path is not None:
        history = read_log_jsonl(log_path)
    else:
        history = _read_trainer_states(sorted(p / "trainer_state.json" for _, p in ckpts
                                              if (p / "trainer_state.json").is_file()))
    aligned = _align_log(history, steps)
    return Trajectory(steps, aligned["loss"], aligned["grad_norm"], aligned["lr"],
                      {n: np.stack(v) for n, v in As.items()}, {n: np.stack(v) for n, v in Bs.items()},
                      history if len(history) else None, str(ckpt_dir))


# ============================================================================= metrics
def _as_matrix(vectors: Any, name: str = "vectors") -> np.ndarray:
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"{name}: expected shape (steps, dim), got {x.shape}")
    x = x.reshape(x.shape[0], -1)
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name}: empty array of shape {x.shape}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ValueError(f"{name}: non-finite values in row {int(np.argmax(bad))}")
    return x


def rows_for_steps(windows_in_steps: Sequence[int], step_spacing: int) -> tuple[int, ...]:
    """Convert windows in training steps (the paper's k) to rows of a trajectory recorded every
    ``step_spacing`` steps; each window must be a multiple of the spacing."""
    out = []
    for k in windows_in_steps:
        if k % step_spacing:
            raise ValueError(f"window {k} steps is not a multiple of the spacing {step_spacing}")
        out.append(k // step_spacing)
    return tuple(out)


def b_norm(vectors: Any) -> np.ndarray:
    """L2 norm of each row (``(T, ...)`` is flattened per row)."""
    return np.linalg.norm(_as_matrix(vectors), axis=1)


def cosine_to_final(vectors: Any) -> np.ndarray:
    """Signed cosine of every row with the last row (how early the final direction is found)."""
    x = _as_matrix(vectors)
    last = x[-1]
    ln = np.linalg.norm(last)
    if ln == 0:
        raise ValueError("cosine_to_final: the final vector is zero")
    n = np.linalg.norm(x, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = x @ last / (n * ln)
    return np.where(n > 0, out, np.nan)


def local_cosine(vectors: Any, k: int, min_change: float = 0.1, *,
                 absolute: float | None = None) -> np.ndarray:
    """Local cosine similarity at every row with window ``k`` rows (NaN where undefined).

    ``out[t] = cos(v[t-k] - v[t], v[t+k] - v[t])``: -1 on a straight stretch, ``-cos θ`` at a
    turn by θ.  NaN for the first and last ``k`` rows, and where *either* difference is shorter
    than the threshold: ``min_change`` × the median k-row displacement ``‖v[t+k] - v[t]‖`` of
    this trajectory (relative, so it means the same for a 135M and a 14B model: by default a
    stretch moving less than a tenth of the typical k-row distance is too short to have a
    direction).  ``absolute`` replaces it with a fixed norm (the authors used 0.002).
    """
    x = _as_matrix(vectors)
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"local_cosine: k must be a positive integer, got {k!r}")
    if min_change < 0 or (absolute is not None and absolute < 0):
        raise ValueError("local_cosine: thresholds must be >= 0")
    t = len(x)
    out = np.full(t, np.nan)
    if t < 2 * k + 1:
        return out
    mid = x[k:t - k]
    prev = x[: t - 2 * k] - mid
    nxt = x[2 * k:] - mid
    pn = np.linalg.norm(prev, axis=1)
    nn = np.linalg.norm(nxt, axis=1)
    thr = absolute if absolute is not None else min_change * float(
        np.median(np.linalg.norm(x[k:] - x[:-k], axis=1)))
    ok = (pn > 0) & (nn > 0) & (pn >= thr) & (nn >= thr)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.einsum("ij,ij->i", prev, nxt) / (pn * nn)
    out[k:t - k] = np.where(ok, np.clip(cos, -1.0, 1.0), np.nan)
    return out


@dataclass
class PCAResult:
    """``projections`` (T, n) onto ``components`` (n, dim) of the centred rows, with the share
    of the total variance each component explains.  Signs are fixed so that every projection
    increases with the row index on average (so two runs' plots are comparable)."""

    projections: np.ndarray
    explained_variance_ratio: np.ndarray
    components: np.ndarray
    mean: np.ndarray


def pca_trajectory(vectors: Any, n_components: int = 2) -> PCAResult:
    """PCA of the stacked vectors (rows = steps) by SVD; a straight path needs 1 component, a
    path with one turn 2 (the paper: 2 components hold ~95% of the variance)."""
    x = _as_matrix(vectors)
    if not 1 <= n_components <= min(x.shape):
        raise ValueError(f"pca_trajectory: n_components must be in [1, {min(x.shape)}], got {n_components}")
    mean = x.mean(axis=0)
    u, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    total = float(np.sum(s**2))
    if total == 0:
        raise ValueError("pca_trajectory: the vectors never change")
    proj = u[:, :n_components] * s[:n_components]
    comps = vt[:n_components].copy()
    idx = np.arange(len(x)) - (len(x) - 1) / 2
    for i in range(n_components):
        if proj[:, i] @ idx < 0:
            proj[:, i] *= -1
            comps[i] *= -1
    return PCAResult(proj, s[:n_components] ** 2 / total, comps, mean)


def comparison_score(x: Any, y: Any, convention: str = "cross") -> float:
    """How close two steps' adapters are: ``‖AᵀB‖_F / (‖A‖_F ‖B‖_F)``.

    ``x`` and ``y`` hold one B vector per adapter as *rows* (adapters × d), at two steps.

    * ``"cross"`` (default): ``A = xᵀ``, ``B = yᵀ`` (d × adapters, the vectors as columns), so
      ``AᵀB`` is the adapters × adapters matrix of cross inner products ``x_i · y_j`` — the
      generalised dot product the issue and the authors' docstring describe.  It is ``|cos|``
      for one adapter and falls as the vectors turn away from the reference ones; it reaches 1
      only if *all* vectors share one direction, so with several adapters in different
      directions even the final step scores < 1 against itself (read it relative to that
      value; :func:`cosine_to_final` of the concatenated vectors is 1 at the end).
    * ``"authors_code"``: ``A = x``, ``B = y`` (adapters × d), as the released plotting code
      computes it (``Bs.T @ last_Bs``).  Then ``‖xᵀy‖_F² = ⟨xxᵀ, yyᵀ⟩_F`` compares only the two
      steps' Gram matrices: it is 1 for any single adapter and unchanged by rotating one step's
      vectors, so it does not measure direction.  Kept to reproduce that figure.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x = x.reshape(1, -1) if x.ndim == 1 else x.reshape(x.shape[0], -1)
    y = y.reshape(1, -1) if y.ndim == 1 else y.reshape(y.shape[0], -1)
    if x.shape != y.shape:
        raise ValueError(f"comparison_score: shapes differ {x.shape} vs {y.shape}")
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    if nx == 0 or ny == 0:
        return math.nan
    if convention == "cross":
        return float(np.linalg.norm(x @ y.T)) / (nx * ny)
    if convention == "authors_code":  # Gram matrices (n×n), never the d×d product
        return math.sqrt(max(float(np.sum((x @ x.T) * (y @ y.T))), 0.0)) / (nx * ny)
    raise ValueError(f"comparison_score: convention must be 'cross' or 'authors_code', got {convention!r}")


def comparison_curve(stacked: Any, de_mean: bool = False, convention: str = "cross") -> np.ndarray:
    """:func:`comparison_score` of every step against the last, for ``stacked``
    (T, n_adapters, d) (:meth:`Trajectory.stacked_b`).  ``de_mean`` subtracts each adapter's
    mean over steps first, as the authors' plot does, so the score follows the *changes*
    rather than the shared offset."""
    s = np.asarray(stacked, dtype=np.float64)
    if s.ndim != 3:
        raise ValueError(f"comparison_curve: expected (steps, adapters, dim), got {s.shape}")
    if de_mean:
        s = s - s.mean(axis=0, keepdims=True)
    return np.array([comparison_score(s[t], s[-1], convention) for t in range(len(s))])


def _frob_inner(a1: np.ndarray, b1: np.ndarray, a2: np.ndarray, b2: np.ndarray) -> float:
    # <B1 A1, B2 A2>_F = Σ (B1ᵀB2) ∘ (A1 A2ᵀ): r×r matrices instead of out×in.
    return float(np.sum((b1.T @ b2) * (a1 @ a2.T)))


def delta_w_cosine(A_t: Any, B_t: Any, A_ref: Any, B_ref: Any) -> float:
    """Signed cosine between the full updates ``ΔW = B @ A`` at two steps.

    Arguments are arrays (``A`` (r, in), ``B`` (out, r)) or dicts of them by module; with dicts
    the updates of all modules are concatenated.  ``ΔW`` is invariant to the rank-1 sign
    ambiguity (``B, A → -B, -A``) and the PEFT scale cancels, so this is the cleanest "how
    close to the final adapter" number."""
    def as_dict(v: Any) -> dict[str, np.ndarray]:
        return {k: np.asarray(a, np.float64) for k, a in v.items()} if isinstance(v, Mapping) \
            else {"": np.asarray(v, np.float64)}
    a1, b1, a2, b2 = map(as_dict, (A_t, B_t, A_ref, B_ref))
    if not (set(a1) == set(b1) == set(a2) == set(b2)):
        raise ValueError("delta_w_cosine: the four arguments must hold the same modules")
    inner = n1 = n2 = 0.0
    for m in a1:
        inner += _frob_inner(a1[m], b1[m], a2[m], b2[m])
        n1 += _frob_inner(a1[m], b1[m], a1[m], b1[m])
        n2 += _frob_inner(a2[m], b2[m], a2[m], b2[m])
    if n1 <= 0 or n2 <= 0:
        return math.nan
    return inner / math.sqrt(n1 * n2)


def delta_w_cosine_curve(traj: Trajectory, modules: Sequence[str] | None = None) -> np.ndarray:
    """:func:`delta_w_cosine` of every recorded step against the last (NaN while ΔW = 0)."""
    names = [traj.module(m) for m in modules] if modules else traj.modules
    return np.array([delta_w_cosine({m: traj.A[m][t] for m in names}, {m: traj.B[m][t] for m in names},
                                    {m: traj.A[m][-1] for m in names}, {m: traj.B[m][-1] for m in names})
                     for t in range(len(traj.steps))])


# ============================================================================= detection
@dataclass
class DetectConfig:
    """Thresholds of the transition rule (see :func:`detect_transition`).  Defaults were set on
    synthetic trajectories only (``synthetic_path``), never on a real run."""

    windows: list[int] = field(default_factory=lambda: [5, 10, 15], metadata={
        "min": 1, "help": "local-cosine windows k, in recorded rows"})
    min_change: float = field(default=0.1, metadata={
        "min": 0.0, "help": "ignore rows whose k-row move is below this share of the median move"})
    smooth: float = field(default=0.5, metadata={
        "min": 0.0, "max": 2.0, "help": "moving-mean half-width as a share of k (damps one-row spikes)"})
    z_min: float = field(default=5.0, metadata={
        "min": 0.0, "help": "robust z of the peak over the rest of the curve (median/MAD)"})
    min_rise: float = field(default=0.3, metadata={
        "min": 0.0, "max": 2.0, "help": "peak minus baseline, in cosine units"})
    min_cos: float = field(default=-0.5, metadata={
        "min": -1.0, "max": 1.0, "help": "raw local cosine at the peak: -0.5 = a turn of >= 60 degrees"})
    min_windows: int = field(default=2, metadata={
        "min": 1, "help": "windows that must agree (peaks within +-k of each other)"})
    max_second: float = field(default=0.5, metadata={
        "min": 0.0, "max": 1.0, "help": "the highest point farther than 2k rows from the peak may "
                                        "rise at most this share of the peak's rise (one event)"})
    min_baseline: int = field(default=10, metadata={
        "min": 3, "help": "valid rows needed outside +-k of the peak to estimate a baseline"})
    sigma_floor: float = field(default=0.02, metadata={
        "min": 0.0, "help": "lower bound on the baseline spread, so a noise-free straight path "
                            "does not turn a tiny wiggle into a huge z"})

    def validate(self) -> None:
        if not self.windows:
            raise ConfigError("windows: at least one window")
        if any(k < 1 for k in self.windows):
            raise ConfigError(f"windows: every window must be >= 1 row, got {self.windows}")
        if self.min_windows > len(self.windows):
            raise ConfigError(f"min_windows {self.min_windows} > number of windows {len(self.windows)}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str = "detect") -> "DetectConfig":
        """Validated construction from a parameters mapping (unknown keys, types, ranges)."""
        return from_dict(cls, data, where)


@dataclass
class WindowPeak:
    """What one window saw: the peak of the (smoothed) local cosine and why it does or does not
    count.  ``index`` is a row; ``reason`` is empty when the window detects a transition."""

    k: int
    index: int | None
    raw_peak: float
    smoothed_peak: float
    baseline: float
    spread: float
    z: float
    rise: float
    detected: bool
    reason: str


@dataclass
class TransitionResult:
    """A detected transition.  ``index`` is a row of the input; ``step`` the training step when
    ``steps`` were given.  ``uncertainty`` (rows) is half the range of the agreeing windows'
    peaks (at least 0.5 row, the grid's resolution), widened to the seeds' half-range when
    several seeds were given; ``step_uncertainty`` is the same in training steps."""

    index: int
    step: int | None
    uncertainty: float
    per_window: dict[int, WindowPeak]
    score: float
    step_uncertainty: float | None = None
    windows_agreeing: tuple[int, ...] = ()
    seed_indices: list[int | None] | None = None


def _moving_nanmean(y: np.ndarray, h: int) -> np.ndarray:
    if h <= 0:
        return y.copy()
    ok = np.isfinite(y)
    v = np.where(ok, y, 0.0)
    kern = np.ones(2 * h + 1)
    s = np.convolve(v, kern, mode="same")
    c = np.convolve(ok.astype(float), kern, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        out = s / c
    return np.where(ok, out, np.nan)


def _window_peak(x: np.ndarray, k: int, cfg: DetectConfig) -> WindowPeak:
    c = local_cosine(x, k, cfg.min_change)
    nan = math.nan
    if np.isfinite(c).sum() < cfg.min_baseline + 1:
        return WindowPeak(k, None, nan, nan, nan, nan, nan, nan, False,
                          f"only {int(np.isfinite(c).sum())} valid rows (trajectory too short for k={k})")
    s = _moving_nanmean(c, math.floor(cfg.smooth * k + 0.5))
    p = int(np.nanargmax(s))
    lo, hi = max(0, p - k), min(len(c), p + k + 1)
    raw = float(np.nanmax(c[lo:hi]))
    outside = np.ones(len(c), bool)
    outside[lo:hi] = False
    base_vals = s[outside & np.isfinite(s)]
    if len(base_vals) < cfg.min_baseline:
        return WindowPeak(k, p, raw, float(s[p]), nan, nan, nan, nan, False,
                          f"{len(base_vals)} valid rows outside +-k of the peak (< {cfg.min_baseline})")
    base = float(np.median(base_vals))
    spread = max(1.4826 * float(np.median(np.abs(base_vals - base))), cfg.sigma_floor)
    rise = float(s[p]) - base
    z = rise / spread
    reasons = []
    for side, rows in (("before", range(max(0, p - 2 * k), max(0, p - k + 1))),
                       ("after", range(min(len(c), p + k), min(len(c), p + 2 * k + 1)))):
        vals = s[list(rows)]
        vals = vals[np.isfinite(vals)]
        if len(vals) < 3:
            reasons.append(f"too close to an edge to see the path settle {side} the peak")
        elif float(np.median(vals)) > base + rise / 2:
            reasons.append(f"no return towards the baseline {side} the peak (a change of regime, "
                           f"not a turn)")
    far = np.ones(len(c), bool)
    far[max(0, p - 2 * k):p + 2 * k + 1] = False
    far &= np.isfinite(s)
    if far.any() and float(np.max(s[far])) - base > cfg.max_second * rise:
        q = int(np.flatnonzero(far)[np.argmax(s[far])])
        reasons.append(f"another bump at row {q} reaches {(float(s[q]) - base) / rise:.0%} of the "
                       f"peak's rise (not a single event)")
    if z < cfg.z_min:
        reasons.append(f"z {z:.1f} < {cfg.z_min}")
    if rise < cfg.min_rise:
        reasons.append(f"rise {rise:.2f} < {cfg.min_rise}")
    if raw < cfg.min_cos:
        reasons.append(f"peak {raw:.2f} < {cfg.min_cos}")
    return WindowPeak(k, p, raw, float(s[p]), base, spread, z, rise, not reasons, "; ".join(reasons))


def scan_windows(vectors: Any, windows: Sequence[int] | None = None,
                 config: DetectConfig | None = None) -> dict[int, WindowPeak]:
    """Per-window diagnostics behind :func:`detect_transition` (shown in the book when it says
    "none": which test each window failed)."""
    cfg = config or DetectConfig()
    x = _as_matrix(vectors)
    return {int(k): _window_peak(x, int(k), cfg) for k in (windows or cfg.windows)}


def window_table(per_window: Mapping[int, WindowPeak]) -> pd.DataFrame:
    """The per-window diagnostics (:func:`scan_windows`, ``TransitionResult.per_window``) as a
    table: one row per window with its peak, baseline, z, rise and the reason it failed."""
    return pd.DataFrame([vars(w) for w in per_window.values()])


def detect_transition(vectors: Any, windows: Sequence[int] | None = None, *,
                      steps: Sequence[int] | None = None,
                      seeds_vectors: Sequence[Any] | None = None,
                      config: DetectConfig | None = None, **overrides: Any) -> TransitionResult | None:
    """Find the sharp turn in a trajectory ``vectors`` (steps, dim), or return ``None``.

    The rule, per window ``k`` (rows):

    1. local cosine ``c_k`` (:func:`local_cosine`, relative ``min_change``);
    2. smooth it with a moving mean of half-width ``smooth·k`` — a real turn lifts ``c_k`` over
       ~2k rows, a one-row glitch over one, so smoothing keeps the first and damps the second;
    3. the peak ``p`` of the smoothed curve counts when **all** hold: its robust z-score against
       the curve *outside* ``p ± k`` (median, 1.4826·MAD, floored at ``sigma_floor``) is at least
       ``z_min``; it rises at least ``min_rise`` above that baseline; and the raw local cosine
       near ``p`` reaches ``min_cos`` (-0.5: the path turns by at least 60°);
    4. and the curve comes back down on both sides: the median over ``[p-2k, p-k]`` and over
       ``[p+k, p+2k]`` lies below halfway between baseline and peak (at least 3 valid rows each).
       A turn is a bump — straight before, straight after; a path that stops going straight
       and starts to wander (local cosine rises and stays up) is a change of regime, not a
       turn, and a peak too close to either end cannot be told apart from one;
    5. and it is a single event: nothing farther than ``2k`` rows from ``p`` rises more than
       ``max_second`` (half) of the peak's rise above the baseline.  Momentum-correlated SGD
       noise makes a path zig-zag, with several similar bumps; the paper's rotation is one.

    A transition is reported when at least ``min_windows`` windows count *and* agree: their
    peaks lie within ``max(k_i, k_j)`` rows of each other (the largest such group wins; ties by
    total z).  Its index is the median of the group's peaks; its uncertainty half their range
    (>= 0.5 row); its score the group's median z.  With ``seeds_vectors`` (other seeds' runs)
    the uncertainty is widened to half the range of all detected seeds' indices
    (:func:`detect_across_seeds`).  ``steps`` maps rows to training steps.
    ``overrides`` are :class:`DetectConfig` fields.
    """
    cfg = replace(config or DetectConfig(), **overrides) if overrides else (config or DetectConfig())
    if windows is not None:
        cfg = replace(cfg, windows=[int(k) for k in windows])
    try:
        cfg.validate()
    except ValueError as e:
        raise ValueError(f"detect_transition: {e}") from None
    x = _as_matrix(vectors)
    st = None
    if steps is not None:
        st = np.asarray(steps, dtype=np.float64).reshape(-1)
        if len(st) != len(x):
            raise ValueError(f"detect_transition: {len(st)} steps for {len(x)} rows")
    per = scan_windows(x, cfg.windows, cfg)
    hits = [w for w in per.values() if w.detected]
    best: list[WindowPeak] = []
    for anchor in hits:
        group = [w for w in hits if abs(w.index - anchor.index) <= max(w.k, anchor.k)]
        group = [w for w in group if all(abs(w.index - o.index) <= max(w.k, o.k) for o in group)]
        if (len(group), sum(w.z for w in group)) > (len(best), sum(w.z for w in best)):
            best = group
    if len(best) < cfg.min_windows:
        return None
    peaks = np.array([w.index for w in best], dtype=float)
    index = int(round(float(np.median(peaks))))
    unc = max((peaks.max() - peaks.min()) / 2, 0.5)
    seed_idx = None
    if seeds_vectors:
        summary = detect_across_seeds([x, *seeds_vectors], config=cfg)
        seed_idx = [r.index if r else None for r in summary.results]
        if summary.spread is not None:
            unc = max(unc, summary.spread)
    step = None if st is None else int(round(st[index]))
    step_unc = None
    if st is not None:
        at = np.interp([index - unc, index, index + unc], np.arange(len(st)), st)
        step_unc = float(max(at[2] - at[1], at[1] - at[0]))
    return TransitionResult(index, step, float(unc), per, float(np.median([w.z for w in best])),
                            step_unc, tuple(sorted(w.k for w in best)), seed_idx)


@dataclass
class SeedSummary:
    """Detections on several seeds' trajectories: ``index`` is the median detected row,
    ``spread`` half the range of detected rows (None with fewer than one detection)."""

    results: list[TransitionResult | None]
    n_seeds: int
    n_detected: int
    index: float | None
    spread: float | None
    step: float | None = None
    step_spread: float | None = None

    def frame(self) -> pd.DataFrame:
        """One row per seed: detected?, index, step, uncertainty, score."""
        return pd.DataFrame([{"seed": i, "detected": r is not None,
                              "index": r.index if r else None, "step": r.step if r else None,
                              "uncertainty_rows": r.uncertainty if r else None,
                              "uncertainty_steps": r.step_uncertainty if r else None,
                              "score": r.score if r else None} for i, r in enumerate(self.results)])


def detect_across_seeds(list_of_arrays: Sequence[Any], windows: Sequence[int] | None = None, *,
                        steps: Sequence[int] | Sequence[Sequence[int]] | None = None,
                        config: DetectConfig | None = None) -> SeedSummary:
    """Run :func:`detect_transition` on each seed's trajectory and summarise where they agree.

    ``steps`` is one step array shared by all seeds or one per seed.  A seed with no
    transition counts as such (``n_detected`` says how many found one) — the book reports
    "k of n seeds" rather than hiding the misses."""
    if not list_of_arrays:
        raise ValueError("detect_across_seeds: no trajectories")
    per_seed_steps: list[Any]
    if steps is None:
        per_seed_steps = [None] * len(list_of_arrays)
    elif np.ndim(steps[0]) == 0:
        per_seed_steps = [steps] * len(list_of_arrays)
    else:
        per_seed_steps = list(steps)
        if len(per_seed_steps) != len(list_of_arrays):
            raise ValueError(f"detect_across_seeds: {len(per_seed_steps)} step arrays for "
                             f"{len(list_of_arrays)} trajectories")
    results = [detect_transition(v, windows, steps=s, config=config)
               for v, s in zip(list_of_arrays, per_seed_steps)]
    found = [r for r in results if r is not None]
    if not found:
        return SeedSummary(results, len(results), 0, None, None)
    idx = np.array([r.index for r in found], float)
    st = [r.step for r in found if r.step is not None]
    return SeedSummary(results, len(results), len(found), float(np.median(idx)),
                       float((idx.max() - idx.min()) / 2),
                       float(np.median(st)) if st else None,
                       float((max(st) - min(st)) / 2) if st else None)


@dataclass
class StepChange:
    """A significant rise in a 1-D curve: the level goes from ``before`` (mean of the ``span``
    points up to ``index - 1``) to ``after`` (mean of ``span`` points from ``index``).  ``step``
    is the midpoint between the two checkpoints that bracket the rise."""

    index: int
    step: float | None
    before: float
    after: float
    rise: float
    z: float
    z_crit: float


def detect_step_change(series: Any, steps: Sequence[float] | None = None, *,
                       lo: Any = None, hi: Any = None, span: int = 2, alpha: float = 0.05,
                       ci: float = 0.95, min_rise: float = 0.0) -> StepChange | None:
    """The steepest sustained rise of a behavioural curve (EM% over checkpoints), or ``None``.

    For every split between consecutive points that has ``span`` points after it, compare their
    mean with the mean of up to ``span`` points before it (a one-checkpoint blip is diluted and
    a rise at the last checkpoint is not considered: the rise must be *sustained*).  The split with the largest rise is tested: its z is the rise
    over the standard error of the difference, with per-point standard errors from the given
    ``ci`` intervals (``(hi - lo) / (2·z_ci)``), or — without intervals — from the curve's own
    point-to-point scatter (1.4826·MAD of first differences / √2).  It is significant when z
    exceeds the one-sided Bonferroni threshold ``Φ⁻¹(1 - alpha/m)`` over the ``m`` candidate
    splits, and the rise is at least ``min_rise``.  NaN points are dropped.
    """
    y = np.asarray(series, dtype=np.float64).reshape(-1)
    st = None if steps is None else np.asarray(steps, dtype=np.float64).reshape(-1)
    if st is not None and len(st) != len(y):
        raise ValueError(f"detect_step_change: {len(st)} steps for {len(y)} points")
    if (lo is None) != (hi is None):
        raise ValueError("detect_step_change: give both lo and hi, or neither")
    if span < 1:
        raise ValueError(f"detect_step_change: span must be >= 1, got {span}")
    if not 0 < alpha < 1 or not 0 < ci < 1:
        raise ValueError("detect_step_change: alpha and ci must be in (0, 1)")
    nd = statistics.NormalDist()
    if lo is not None:
        lo_a = np.asarray(lo, dtype=np.float64).reshape(-1)
        hi_a = np.asarray(hi, dtype=np.float64).reshape(-1)
        if len(lo_a) != len(y) or len(hi_a) != len(y):
            raise ValueError("detect_step_change: lo/hi must have one value per point")
        se = np.abs(hi_a - lo_a) / (2 * nd.inv_cdf(0.5 + ci / 2))
    else:
        se = None
    keep = np.isfinite(y) & (np.isfinite(se) if se is not None else True)
    y = y[keep]
    st = st[keep] if st is not None else None
    se = se[keep] if se is not None else None
    n = len(y)
    if n < span + 1:
        return None
    if se is None:
        d = np.diff(y)
        sd = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2) if n > 2 else 0.0
        se = np.full(n, max(sd, 1e-12 * (1 + float(np.max(np.abs(y))))))
    best = None
    for c in range(1, n - span + 1):
        b = slice(max(0, c - span), c)
        a = slice(c, c + span)
        before, after = float(y[b].mean()), float(y[a].mean())
        se_d = math.sqrt(float(np.sum(se[b] ** 2)) / (b.stop - b.start) ** 2
                         + float(np.sum(se[a] ** 2)) / (a.stop - a.start) ** 2)
        rise = after - before
        if best is None or rise > best[3]:
            best = (c, before, after, rise, se_d)
    c, before, after, rise, se_d = best
    z = math.inf if se_d == 0 and rise > 0 else (rise / se_d if se_d > 0 else 0.0)
    z_crit = nd.inv_cdf(1 - alpha / (n - span))
    if rise <= 0 or rise < min_rise or z < z_crit:
        return None
    step = None if st is None else float((st[c - 1] + st[c]) / 2)
    return StepChange(c, step, before, after, rise, float(z), float(z_crit))


@dataclass
class Peak:
    """A hump in a 1-D curve: its top (``step``) and where it rises above / falls below half
    its prominence (``start``, ``end``), all in training steps."""

    step: float
    start: float
    end: float
    height: float
    prominence: float


def find_peak(values: Any, steps: Sequence[float] | None = None, *, smooth: int = 9,
              min_rel_prominence: float = 0.2) -> Peak | None:
    """The highest hump of a noisy curve (e.g. the gradient norm), or ``None``.

    The curve is smoothed by a centred rolling median of ``smooth`` points.  The top's
    prominence is its height above the *higher* of the minima on its two sides; it must be at
    least ``min_rel_prominence`` × the height, so a curve that only rises (the probe runs'
    gradient norm) has no peak.  ``start``/``end`` bracket the hump at half its prominence, so a "long gradient-norm
    peak" has a width to compare with the rotation's step."""
    y = np.asarray(values, dtype=np.float64).reshape(-1)
    st = np.arange(len(y), dtype=float) if steps is None else np.asarray(steps, dtype=np.float64)
    if len(st) != len(y):
        raise ValueError(f"find_peak: {len(st)} steps for {len(y)} values")
    ok = np.isfinite(y)
    y, st = y[ok], st[ok]
    if len(y) < 3:
        return None
    sm = pd.Series(y).rolling(max(1, smooth), center=True, min_periods=1).median().to_numpy()
    p = int(np.argmax(sm))
    left, right = sm[: p + 1], sm[p:]
    base = max(float(left.min()), float(right.min()))
    prom = float(sm[p]) - base
    if p in (0, len(sm) - 1) or sm[p] <= 0 or prom < min_rel_prominence * float(sm[p]):
        return None
    half = base + prom / 2
    below_l = np.nonzero(left < half)[0]
    below_r = np.nonzero(right < half)[0]
    start = st[below_l[-1] + 1] if len(below_l) else st[0]
    end = st[p + below_r[0] - 1] if len(below_r) else st[-1]
    return Peak(float(st[p]), float(start), float(end), float(sm[p]), prom)


# ============================================================================= behaviour
def scale_adapter_state(state: Mapping[str, Any], factor: float) -> dict[str, Any]:
    """A new state dict with every ``lora_B`` tensor (weight and bias) multiplied by ``factor``.

    Scaling B scales the adapter's output ``ΔW x`` exactly, whatever the PEFT scale (alpha,
    rsLoRA) — the paper's ×1/×5/×10/×20 scan.  A is untouched; works for numpy arrays and torch
    tensors (the originals are not modified)."""
    if not math.isfinite(factor):
        raise ValueError(f"scale_adapter_state: factor must be finite, got {factor}")
    keys = {k for k in state if _LORA_B_RE.search(k)}
    if not keys:
        raise ValueError(f"scale_adapter_state: no lora_B tensors among {list(state)[:5]}")
    return {k: (v * factor if k in keys else v) for k, v in state.items()}


def write_scaled_adapter(ckpt_dir: str | Path, factor: float, out_dir: str | Path) -> Path:
    """Write a PEFT adapter folder whose B weights are ``factor`` × those in ``ckpt_dir``.

    Copies ``adapter_config.json``, keeps each tensor's dtype (bf16 goes through torch), writes
    ``scale.json`` (source, factor) for provenance, and appears atomically: the folder is built
    under a temporary name and renamed into place."""
    src = Path(ckpt_dir)
    out = Path(out_dir)
    for f in (ADAPTER_FILE, ADAPTER_CONFIG):
        if not (src / f).is_file():
            raise FileNotFoundError(f"{src / f}: missing (not a PEFT adapter folder)")
    if out.resolve() == src.resolve():
        raise ValueError(f"write_scaled_adapter: out_dir must differ from the source {src}")
    if not math.isfinite(factor):
        raise ValueError(f"write_scaled_adapter: factor must be finite, got {factor}")
    dtypes, meta = _safetensors_dtypes(src / ADAPTER_FILE)
    if not any(_LORA_B_RE.search(k) for k in dtypes):
        raise ValueError(f"{src / ADAPTER_FILE}: no lora_B tensors to scale")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        if set(dtypes.values()) <= _NUMPY_DTYPES:
            from safetensors.numpy import load_file, save_file
            state = load_file(str(src / ADAPTER_FILE))
            scaled = {k: (np.asarray(v, np.float64) * factor).astype(v.dtype) if _LORA_B_RE.search(k) else v
                      for k, v in state.items()}
        else:
            from safetensors.torch import load_file, save_file  # type: ignore[assignment]
            state = load_file(str(src / ADAPTER_FILE))
            scaled = {k: (v.float() * factor).to(v.dtype) if _LORA_B_RE.search(k) else v
                      for k, v in state.items()}
        save_file(scaled, str(tmp / ADAPTER_FILE), metadata=meta)
        shutil.copy2(src / ADAPTER_CONFIG, tmp / ADAPTER_CONFIG)
        (tmp / "scale.json").write_text(json.dumps({"source": str(src.resolve()), "factor": factor}))
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def checkpoint_step(path: str | Path) -> int:
    """The step in a ``step-000050`` / ``checkpoint-50`` folder name."""
    m = _CKPT_RE.match(Path(path).name)
    if not m:
        raise ValueError(f"{path}: not a 'step-<N>' or 'checkpoint-<N>' folder")
    return int(m.group(1))


def behavioural_grid(checkpoints: Sequence[Path | str | tuple[int, Path]], scales: Sequence[float],
                     evaluate: Callable[[Path, float], pd.DataFrame], progress: bool = True) -> pd.DataFrame:
    """Call ``evaluate(checkpoint, scale)`` for every pair and stack the per-answer rows.

    ``checkpoints`` are folders (step parsed from the name) or ``(step, folder)`` pairs
    (:func:`list_adapter_checkpoints`).  ``evaluate`` must return a DataFrame with ``aligned``
    and ``coherent`` columns; ``step``, ``scale`` and ``checkpoint`` columns are added.  All
    names and scales are validated before the first (expensive) call."""
    from tqdm import tqdm

    pairs = [(int(c[0]), Path(c[1])) if isinstance(c, tuple) else (checkpoint_step(c), Path(c))
             for c in checkpoints]
    if not pairs or not scales:
        raise ValueError("behavioural_grid: need at least one checkpoint and one scale")
    for s in scales:
        if isinstance(s, bool) or not (isinstance(s, numbers.Real) and math.isfinite(s)):
            raise ValueError(f"behavioural_grid: scale {s!r} is not a finite number")
    for _, p in pairs:
        if not (p / ADAPTER_FILE).is_file():
            raise FileNotFoundError(f"{p / ADAPTER_FILE}: missing")
    frames = []
    todo = [(st, p, float(s)) for st, p in pairs for s in scales]
    for st, p, s in tqdm(todo, desc="behaviour grid", disable=not progress, unit="cell"):
        df = evaluate(p, s)
        if not isinstance(df, pd.DataFrame) or not {"aligned", "coherent"} <= set(df.columns):
            raise ValueError(f"behavioural_grid: evaluate({p}, {s}) must return a DataFrame with "
                             f"'aligned' and 'coherent' columns, got {type(df).__name__}"
                             + (f" with {list(df.columns)}" if isinstance(df, pd.DataFrame) else ""))
        frames.append(df.assign(step=st, scale=s, checkpoint=str(p)))
    return pd.concat(frames, ignore_index=True)


def behaviour_table(df: pd.DataFrame, by: Sequence[str] = ("step", "scale"), *,
                    n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """EM% and coherent% per (step, scale) cell with 95% bootstrap CIs, from per-answer scores.

    The definitions and the bootstrap are the book's single ones (:mod:`em.metrics`): EM =
    aligned < 30 and coherent > 50, coherent = coherent > 50, answers the judge could not score
    are left out (``n_em``, ``n_coherent`` count the rest), and the CI resamples answers within
    each question when a ``question_id`` column is present."""
    from .metrics import flag_answers, rate_with_ci

    missing = [c for c in ("aligned", "coherent", *by) if c not in df.columns]
    if missing:
        raise ValueError(f"behaviour_table: missing columns {missing} (have {list(df.columns)})")
    flagged = flag_answers(df)
    rows = []
    for key, g in flagged.groupby(list(by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        em = rate_with_ci(g, "em", n_boot=n_boot, seed=seed)
        co = rate_with_ci(g, "coherent_ok", n_boot=n_boot, seed=seed)
        rows.append({**dict(zip(by, key)), "n_em": em["n"], "n_coherent": co["n"],
                     "em_pct": em["pct"], "em_lo": em["lo"], "em_hi": em["hi"],
                     "coherent_pct": co["pct"], "coherent_lo": co["lo"], "coherent_hi": co["hi"]})
    return pd.DataFrame(rows)


def detect_behavioural_transition(table: pd.DataFrame, scale: float, metric: str = "em",
                                  **kw: Any) -> StepChange | None:
    """:func:`detect_step_change` on one scale's curve of :func:`behaviour_table` (by step)."""
    rows = table[table["scale"] == scale].sort_values("step")
    if rows.empty:
        raise ValueError(f"detect_behavioural_transition: no rows for scale {scale} "
                         f"(have {sorted(table['scale'].unique())})")
    return detect_step_change(rows[f"{metric}_pct"], rows["step"], lo=rows[f"{metric}_lo"],
                              hi=rows[f"{metric}_hi"], **kw)


# ============================================================================= synthetic paths
def synthetic_path(n_steps: int = 300, dim: int = 64, *, kind: str = "rotation",
                   turn_at: int | None = None, angle_deg: float = 90.0, turn_width: int = 0,
                   noise: float = 0.3, noise_rho: float = 0.0, noise_dims: int | None = None,
                   speed: str = "constant", decay_at: int | None = None, seed: int = 0) -> np.ndarray:
    """A B-vector-like trajectory with a known shape, for calibrating and testing the detector.

    ``v[t]`` is the sum of ``t`` updates ``speed(t)·(u(t) + ε_t)`` (starting at 0 as LoRA B
    does), where ``u`` is a unit direction and ``ε_t`` noise of norm ≈ ``noise`` — a drift plus
    SGD noise that accumulates, like an optimiser's updates.  The noise is isotropic and
    independent by default; ``noise_rho`` makes it an AR(1) process in time (momentum:
    β₁ = 0.9 gives ~10-step correlations) and ``noise_dims`` confines it to that many directions
    (real gradient noise is low-rank) — together they make the path zig-zag.  Kinds:

    * ``straight`` — one direction;
    * ``smooth`` — the direction turns uniformly by ``angle_deg`` over the whole run (curved,
      gradual: *no* transition);
    * ``rotation`` — one direction, then a turn by ``angle_deg`` at row ``turn_at`` (default:
      the middle) spread over ``turn_width`` rows (0 = a corner);
    * ``wander`` — straight drift whose speed decays with time constant ``decay_at`` while the
      noise stays: a path that saturates and then random-walks (the lr-too-high probe).

    ``speed="linear_decay"`` scales updates like a linear learning-rate schedule.
    """
    if kind not in ("straight", "smooth", "rotation", "wander"):
        raise ValueError(f"synthetic_path: unknown kind {kind!r}")
    if n_steps < 2 or dim < 2:
        raise ValueError("synthetic_path: need n_steps >= 2 and dim >= 2")
    if not 0 <= noise_rho < 1:
        raise ValueError(f"synthetic_path: noise_rho must be in [0, 1), got {noise_rho}")
    nd = dim if noise_dims is None else noise_dims
    if not 1 <= nd <= (dim if noise_dims is None else dim - 2):
        raise ValueError(f"synthetic_path: noise_dims must be in [1, dim - 2], got {noise_dims}")
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((dim, 2 if noise_dims is None else 2 + nd)))
    e1, e2 = q[:, 0], q[:, 1]
    t = np.arange(n_steps - 1, dtype=float)
    theta = math.radians(angle_deg)
    if kind in ("straight", "wander"):
        ang = np.zeros_like(t)
    elif kind == "smooth":
        ang = theta * t / max(len(t) - 1, 1)
    else:
        at = n_steps // 2 if turn_at is None else turn_at
        ang = theta * np.clip((t - at + 1) / max(turn_width, 1), 0, 1) if turn_width else \
            np.where(t >= at, theta, 0.0)
    u = np.outer(np.cos(ang), e1) + np.outer(np.sin(ang), e2)
    if speed == "constant":
        sp = np.ones_like(t)
    elif speed == "linear_decay":
        sp = 1.0 - t / len(t) + 1e-3
    else:
        raise ValueError(f"synthetic_path: speed must be 'constant' or 'linear_decay', got {speed!r}")
    drift = np.exp(-t / (decay_at or max(n_steps // 6, 1))) if kind == "wander" else np.ones_like(t)
    white = rng.standard_normal((len(t), nd))
    z = np.empty_like(white)
    z[0] = white[0]
    for i in range(1, len(t)):  # AR(1) with unit stationary variance
        z[i] = noise_rho * z[i - 1] + math.sqrt(1 - noise_rho**2) * white[i]
    eps = (z if noise_dims is None else z @ q[:, 2:].T) * (noise / math.sqrt(nd))
    steps = sp[:, None] * (drift[:, None] * u + eps)
    return np.vstack([np.zeros(dim), np.cumsum(steps, axis=0)])


def detector_calibration(n_seeds: int = 20, n_steps: int = 300, dim: int = 64, *,
                         windows: Sequence[int] | None = None, config: DetectConfig | None = None,
                         noises: Sequence[float] = (0.3, 1.0, 3.0),
                         angles: Sequence[float] = (45.0, 60.0, 90.0, 120.0),
                         momentum: float = 0.9) -> pd.DataFrame:
    """How the rule behaves on paths of known shape: the share of seeds where a transition is
    reported, for smooth/straight/wandering paths (should be 0) and planted turns at the middle
    row (should be ~1 for sharp, large turns), with the median distance to the planted row;
    each with independent isotropic noise and with momentum-like noise (AR(1) ``momentum`` in
    4 directions).
    Cheap (milliseconds a path), so the book can show it live next to the real result."""
    rows = []
    cases = [(k, 90.0) for k in ("straight", "smooth", "wander")] + [("rotation", a) for a in angles]
    for (kind, angle), noise, (rho, nd) in [(c, nz, m) for c in cases for nz in noises
                                            for m in ((0.0, None), (momentum, 4))]:
        found = []
        for seed in range(n_seeds):
            x = synthetic_path(n_steps, dim, kind=kind, angle_deg=angle, noise=noise, noise_rho=rho,
                               noise_dims=nd, seed=seed)
            r = detect_transition(x, windows, config=config)
            found.append(None if r is None else abs(r.index - n_steps // 2))
        hits = [f for f in found if f is not None]
        rows.append({"path": kind, "turn_deg": angle if kind in ("rotation", "smooth") else 0.0,
                     "noise": noise, "noise_kind": "isotropic, independent" if nd is None else
                     f"4 directions, AR(1) rho={rho:g}", "seeds": n_seeds, "reported_share": len(hits) / n_seeds,
                     "median_abs_error_rows": float(np.median(hits)) if hits and kind == "rotation" else None})
    return pd.DataFrame(rows)
