"""Inference: `load_scorer(path)(triplets, metadata) -> scores`.

The hot path is one pure function under `jax.jit` over plain arrays. Inputs are padded up to a few fixed batch
buckets so any N reuses one of a handful of compiled programs instead of recompiling per size (what a live
stream with ragged micro-batches needs). Inputs are validated before they reach the model: a wrong shape or a
NaN/inf raises `InputError` naming the offending row, never a silent score.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from btsbot_jax.checkpoint import load_model, read_model_card, resolve_checkpoint
from btsbot_jax.constants import METADATA_COLUMNS, NUM_CHANNELS

DEFAULT_BUCKETS = (1, 8, 64, 256, 1024)


class InputError(ValueError):
    """Triplets or metadata that the model must not score."""


def validate_inputs(
    triplets: Any, metadata: Any, *, image_size: int = 63, num_metadata: int = 25, columns: Sequence[str] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes and finiteness; return float32 C-contiguous arrays."""
    t = np.asarray(triplets)
    m = np.asarray(metadata)
    want_t = (image_size, image_size, NUM_CHANNELS)
    if t.ndim != 4 or t.shape[1:] != want_t:
        raise InputError(f"triplets must have shape (N, {', '.join(map(str, want_t))}), got {t.shape}")
    if m.ndim != 2 or m.shape[1] != num_metadata:
        raise InputError(f"metadata must have shape (N, {num_metadata}), got {m.shape}")
    if t.shape[0] != m.shape[0]:
        raise InputError(f"triplets and metadata disagree on N: {t.shape[0]} vs {m.shape[0]}")
    if not (np.issubdtype(t.dtype, np.number) and np.issubdtype(m.dtype, np.number)):
        raise InputError(f"inputs must be numeric, got {t.dtype} and {m.dtype}")
    t = np.ascontiguousarray(t, dtype=np.float32)
    m = np.ascontiguousarray(m, dtype=np.float32)
    bad_t = ~np.isfinite(t).reshape(t.shape[0], -1).all(axis=1)
    if bad_t.any():
        rows = np.flatnonzero(bad_t)
        raise InputError(f"triplets contain NaN or inf in row(s) {rows[:10].tolist()} (of {len(rows)})")
    bad_m = ~np.isfinite(m)
    if bad_m.any():
        r, c = np.argwhere(bad_m)[0]
        name = columns[c] if c < len(columns) else f"column {c}"
        raise InputError(
            f"metadata contain NaN or inf in {int(bad_m.any(axis=1).sum())} row(s); first: row {r}, {name}"
        )
    return t, m


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if n <= b:
            return b
    return buckets[-1]


class Scorer:
    """Callable `scorer(triplets, metadata) -> float32 (N,)` in eval mode; `version` comes from the model card."""

    def __init__(self, model: nnx.Module, card: dict[str, Any], buckets: Sequence[int] = DEFAULT_BUCKETS):
        model.eval()  # no dropout, BatchNorm running statistics
        self.card = card
        self.version = card.get("version", "unknown")
        self.architecture = card.get("architecture")
        self.metadata_columns = tuple(card.get("metadata_columns", METADATA_COLUMNS))
        self.image_size = int(card.get("image_size", 63))
        self.buckets = tuple(sorted(buckets))
        self.device = jax.devices()[0]
        graphdef, state = nnx.split(model)
        self._state = jax.device_put(state, self.device)

        def predict(state, triplets, metadata):
            return nnx.merge(graphdef, state)(triplets, metadata)[:, 0]

        self._predict = jax.jit(predict)

    def compiled_sizes(self) -> int:
        """How many programs the jit cache holds (tests check this stays at the bucket count)."""
        return self._predict._cache_size()

    def warmup(self) -> None:
        for b in self.buckets:
            self._run(np.zeros((b, self.image_size, self.image_size, 3), np.float32),
                      np.zeros((b, len(self.metadata_columns)), np.float32))

    def _run(self, t: np.ndarray, m: np.ndarray) -> np.ndarray:
        return np.asarray(self._predict(self._state, t, m))

    def __call__(self, triplets, metadata) -> np.ndarray:
        t, m = validate_inputs(
            triplets, metadata, image_size=self.image_size, num_metadata=len(self.metadata_columns),
            columns=self.metadata_columns,
        )
        n = t.shape[0]
        out = np.empty((n,), np.float32)
        step = self.buckets[-1]
        for start in range(0, n, step):
            tc, mc = t[start:start + step], m[start:start + step]
            k = tc.shape[0]
            b = bucket_for(k, self.buckets)
            if k < b:
                tc = np.concatenate([tc, np.zeros((b - k, *tc.shape[1:]), np.float32)])
                mc = np.concatenate([mc, np.zeros((b - k, mc.shape[1]), np.float32)])
            out[start:start + k] = self._run(tc, mc)[:k]
        return out


def load_scorer(checkpoint: str | os.PathLike, buckets: Sequence[int] = DEFAULT_BUCKETS, **kwargs) -> Scorer:
    """Scorer for a model directory or a training workdir (its best checkpoint). For an export directory
    (btsbot-export) it returns the same interface over that format's runtime (btsbot_jax.runtimes)."""
    model_dir = resolve_checkpoint(checkpoint)
    card = read_model_card(model_dir)
    from btsbot_jax import runtimes  # light module; each runtime is imported only by the scorer that uses it

    if runtimes.is_export_card(card):
        return runtimes.load_exported(model_dir, buckets=buckets, **kwargs)
    model, card = load_model(model_dir, **kwargs)
    return Scorer(model, card, buckets=buckets)


__all__ = ["Scorer", "InputError", "load_scorer", "validate_inputs", "DEFAULT_BUCKETS"]
