"""Input checks shared by every runtime (Flax, StableHLO, ONNX, SavedModel).

Kept free of Flax, orbax and TensorFlow imports so the small export loaders in `runtimes.py` can run with plain
jax/numpy (or onnxruntime) and still refuse bad input exactly like the Flax scorer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from btsbot_jax.constants import NUM_CHANNELS

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
    bad_t = ~np.isfinite(t).all(axis=(1, 2, 3))  # also fine for N == 0
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
