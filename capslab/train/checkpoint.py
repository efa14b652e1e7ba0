"""Checkpoints in safetensors only (no pickle: loading one never runs code).

A checkpoint is a directory ``checkpoints/step-00000064/`` holding

- ``model.safetensors``: the weights of the plain (never compiled) model; metadata (str -> str, JSON
  values): format_version, recipe, step, epoch, metrics, capslab_version, plugins (name -> version);
- ``trainer_state.safetensors``: optimizer state keyed by parameter name (never by position), RNG states
  (torch CPU and CUDA, the data generator, numpy, python) and counters; tensors in the file, the rest
  as JSON in its metadata.

Written atomically: both files go into a temporary directory that ``os.replace`` renames into place;
``checkpoints/latest`` (the name of the newest checkpoint) is replaced last; the last N are kept. Each file's
metadata holds the SHA-256 of every tensor's bytes (``tensor_sha256``), checked on every read: a flipped
byte is an error, not a silently different model. A full disk is one error naming the directory and the
space needed; the temporary directory is removed and the previous checkpoint stays. A run whose newest
checkpoint is damaged (or whose ``latest`` is missing) resumes from the newest intact one, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from capslab.errors import CapslabWarning, CheckpointError

FORMAT_VERSION = 1
MODEL_FILE, STATE_FILE, LATEST = "model.safetensors", "trainer_state.safetensors", "latest"


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def save_checkpoint(
    root: Path,
    step: int,
    model_tensors: dict[str, Tensor],
    model_meta: dict[str, Any],
    state_tensors: dict[str, Tensor],
    state_meta: dict[str, Any],
    keep: int,
) -> Path:
    """Write checkpoint ``root/step-N`` atomically, point ``root/latest`` at it, keep the last ``keep``."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    for stale in root.glob(".tmp-*"):  # left by a run killed while writing (one trainer per run dir)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    try:
        tmp.mkdir()
        _save(model_tensors, tmp / MODEL_FILE, model_meta)
        _save(state_tensors, tmp / STATE_FILE, state_meta)
    except Exception as exc:  # a full disk, a quota, a read-only mount: the previous checkpoint stays as it was
        shutil.rmtree(tmp, ignore_errors=True)
        size = sum(t.numel() * t.element_size() for d in (model_tensors, state_tensors) for t in d.values())
        free = shutil.disk_usage(root).free if root.exists() else 0
        reason = getattr(exc, "strerror", None) or " ".join(str(exc).split())[:120]
        raise CheckpointError(
            f"{root}: cannot write checkpoint {final.name} ({reason}); it needs about {size / 2**20:,.0f} MiB and "
            f"{free / 2**20:,.0f} MiB are free; free some space and resume with --resume (the last checkpoint is "
            f"intact)"
        ) from None
    if final.exists():  # the same step saved again (a resumed run that re-ran it)
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(final.name + "\n", encoding="utf-8")
    os.replace(pointer, root / LATEST)
    for old in sorted(p for p in root.glob("step-*") if p.is_dir() and p != final)[: -keep + 1 or None]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def tensor_digest(t: Tensor) -> str:
    """SHA-256 of a tensor's bytes (any dtype)."""
    return hashlib.sha256(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def _save(tensors: dict[str, Tensor], path: Path, meta: dict[str, Any]) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {**meta, "tensor_sha256": {k: tensor_digest(v) for k, v in tensors.items()}}
    save_file(tensors, str(path), metadata={k: json.dumps(v) for k, v in meta.items()})
    with open(path, "rb") as f:  # on disk before the rename makes it visible
        os.fsync(f.fileno())


def intact(ckpt_dir: Path) -> str | None:
    """None when both files of the checkpoint read and match their checksums, else why not."""
    try:
        for name in (MODEL_FILE, STATE_FILE):
            read_file(ckpt_dir / name)
    except CheckpointError as exc:
        return str(exc)
    return None


def _fallback(root: Path, newest: str, why: str) -> Path:
    """The newest intact step-* directory under ``root`` other than ``newest``, with a warning naming both."""
    for candidate in sorted((d for d in root.glob("step-*") if d.is_dir() and d.name != newest), reverse=True):
        if intact(candidate) is None:
            warnings.warn(
                f"{why}; using {candidate.name}, the newest intact checkpoint",
                CapslabWarning,
                stacklevel=3,
            )
            return candidate
    raise CheckpointError(f"{root}: {why}, and no intact step-* checkpoint is left to fall back on")


def resolve_checkpoint(path: str | Path, verify: bool = False) -> Path:
    """The checkpoint directory for a run dir, a ``checkpoints`` dir, a checkpoint dir or its model file.

    For a run (``latest`` and ``step-*`` directories), a missing ``latest`` or a newest checkpoint without
    its files falls back to the newest intact one with a warning; ``verify`` also reads the newest one and
    falls back when it is corrupt (``--resume`` does)."""
    p = Path(path)
    if p.is_file() and p.suffix == ".safetensors":
        p = p.parent
    if (p / MODEL_FILE).is_file():
        return p
    for root in (p / "checkpoints", p):
        pointer = root / LATEST
        steps = [d for d in root.glob("step-*") if d.is_dir()] if root.is_dir() else []
        if pointer.is_file():
            name = pointer.read_text(encoding="utf-8").strip()
            if not (root / name / MODEL_FILE).is_file():
                return _fallback(root, name, f"{pointer} points at {name!r}, which has no {MODEL_FILE}")
            why = intact(root / name) if verify else None
            return _fallback(root, name, why) if why else root / name
        if steps:
            return _fallback(root, "", f"{pointer} is missing")
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or directory")
    raise CheckpointError(
        f"{p}: no checkpoint here (expected a run directory, a checkpoint directory or a {MODEL_FILE} file)"
    )


def read_file(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, metadata with JSON values decoded); CheckpointError naming the file if unreadable."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = {k: json.loads(v) for k, v in raw.items()}
    except Exception as exc:  # safetensors' own errors, OSError, bad JSON: all mean a damaged file
        reason = " ".join(str(exc).split())[:160]
        raise CheckpointError(
            f"{path}: corrupt or not a capslab safetensors checkpoint ({type(exc).__name__}: {reason})"
        ) from None
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format_version {version!r}, this capslab reads {FORMAT_VERSION}")
    digests = meta.pop("tensor_sha256", None)  # absent in checkpoints written before checksums
    if digests is not None:
        bad = [k for k, t in tensors.items() if digests.get(k) != tensor_digest(t)]
        if bad or set(digests) != set(tensors):
            raise CheckpointError(
                f"{path}: tensor {(bad or sorted(set(digests) ^ set(tensors)))[0]!r} does not match the checksum "
                f"written with it: the file is corrupt; use another checkpoint"
            )
    return tensors, meta


def read_metadata(path: Path) -> dict[str, Any]:
    return read_file(path)[1]


def recipe_of(model_file: Path) -> dict[str, Any]:
    """The recipe a model file was trained with; CheckpointError if its metadata has none."""
    meta = read_metadata(model_file)
    if "recipe" not in meta:
        raise CheckpointError(
            f"{model_file}: no recipe in its metadata (not written by capslab train), so the model it holds cannot "
            f"be built; train it with capslab, or load its tensors yourself with safetensors"
        )
    return meta["recipe"]


# --- optimizer state, keyed by parameter name -------------------------------------------------------


def optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Any]]:
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]  # state_dict's indices
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer.{order[idx]}.{key}"] = value
            else:
                scalars[f"{order[idx]}.{key}"] = value
    groups = [
        {**{k: v for k, v in g.items() if k != "params"}, "params": [order[i] for i in g["params"]]}
        for g in sd["param_groups"]
    ]
    return tensors, {"groups": groups, "scalars": scalars, "type": type(optimizer).__name__}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, model: nn.Module, tensors: dict[str, Tensor], meta: dict[str, Any], source: Path
) -> None:
    if meta.get("type") != type(optimizer).__name__:
        raise CheckpointError(
            f"{source}: optimizer state is for {meta.get('type')}, the recipe builds "
            f"{type(optimizer).__name__}; resume with the same optimizer.name"
        )
    names = {id(p): n for n, p in model.named_parameters()}
    index = {names[id(p)]: i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            name, _, field = key.removeprefix("optimizer.").rpartition(".")
            if name not in index:
                raise CheckpointError(f"{source}: optimizer state for parameter {name!r}, which the model lacks")
            state.setdefault(index[name], {})[field] = value
    for key, value in meta["scalars"].items():
        name, _, field = key.rpartition(".")
        state.setdefault(index[name], {})[field] = value
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in meta["groups"]]
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{source}: optimizer state does not fit the model ({exc})") from None


# --- random number generators -----------------------------------------------------------------------


def rng_state(data_generator: torch.Generator) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state(), "rng.data": data_generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)  # the tuple form
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    py_version, py_state, py_gauss = random.getstate()
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(gauss)], "python": [py_version, list(py_state), py_gauss]}
    return tensors, meta


def restore_rng(tensors: dict[str, Tensor], meta: dict[str, Any], data_generator: torch.Generator) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    data_generator.set_state(tensors["rng.data"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    py_version, py_state, py_gauss = meta["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
