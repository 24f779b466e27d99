"""Inference: `load_scorer(path)(triplets, metadata) -> scores`.

The hot path is one pure function under `jax.jit` over plain arrays. Inputs are padded up to a few fixed batch
buckets so any N reuses one of a handful of compiled programs instead of recompiling per size (what a live
stream with ragged micro-batches needs). Inputs are validated before they reach the model: a wrong shape or a
NaN/inf raises `InputError` naming the offending row, never a silent score.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from btsbot_jax.constants import METADATA_COLUMNS
from btsbot_jax.inference.validation import DEFAULT_BUCKETS, InputError, bucket_for, validate_inputs
from btsbot_jax.models.model_dir import CheckpointError, load_model, read_model_card, resolve_checkpoint

log = logging.getLogger(__name__)


class Scorer:
    """Callable `scorer(triplets, metadata) -> float32 (N,)` in eval mode; `version` comes from the model card."""

    def __init__(self, model: nnx.Module, card: dict[str, Any], buckets: Sequence[int] = DEFAULT_BUCKETS,
                 compute_dtype: Any = None):
        model.eval()  # no dropout, BatchNorm running statistics
        self.card = card
        self.version = card.get("version", "unknown")
        self.architecture = card.get("architecture")
        self.metadata_columns = tuple(card.get("metadata_columns", METADATA_COLUMNS))
        self.image_size = int(card.get("image_size", 63))
        self.buckets = tuple(sorted(buckets))
        self.device = jax.devices()[0]
        # A call costs about this many rows of work beyond its rows (dispatch, thread wake-up): on a CPU a few
        # rows, on an accelerator far more; it decides when padding up beats splitting (see _plan).
        self._call_rows = 8 if self.device.platform == "cpu" else 64
        self._plans = _chunk_plans(self.buckets, self._call_rows)
        graphdef, state = nnx.split(model)
        # compute_dtype (e.g. jnp.bfloat16) casts weights and inputs for speed on hardware with fast low-precision
        # units; scores come back as float32. None keeps float32 everywhere (bit-for-bit parity with Keras).
        self.compute_dtype = None if compute_dtype is None else jnp.dtype(compute_dtype)
        if self.compute_dtype is not None:
            state = jax.tree.map(lambda x: x.astype(self.compute_dtype) if jnp.issubdtype(x.dtype, jnp.floating)
                                 else x, state)
        # The weights travel as a flat list of arrays: jit flattens its arguments on every call, and a list is
        # flattened in C++ while an nnx.State goes through Python (it shows at batch 1, where a call is short).
        leaves, treedef = jax.tree.flatten(state)
        self._state = jax.device_put(leaves, self.device)
        cdt = self.compute_dtype

        def predict(leaves, triplets, metadata):
            if cdt is not None:
                triplets, metadata = triplets.astype(cdt), metadata.astype(cdt)
            state = jax.tree.unflatten(treedef, leaves)
            return nnx.merge(graphdef, state)(triplets, metadata)[:, 0].astype(jnp.float32)

        self._predict_fn = predict
        # A model may carry XLA:CPU compile options that suit it (models.v2.CPU_COMPILER_OPTIONS); they are
        # experimental XLA options, so a jaxlib that does not know them falls back to the defaults (see _run).
        self.compiler_options = (dict(getattr(model, "cpu_compiler_options", None) or {})
                                 if self.device.platform == "cpu" else {})
        self._predict = jax.jit(predict, compiler_options=self.compiler_options or None)

    def compiled_sizes(self) -> int:
        """How many programs the jit cache holds (tests check this stays at the bucket count)."""
        return self._predict._cache_size()

    def warmup(self) -> None:
        for b in self.buckets:
            self._run(np.zeros((b, self.image_size, self.image_size, 3), np.float32),
                      np.zeros((b, len(self.metadata_columns)), np.float32))

    def _run(self, t: np.ndarray, m: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(self._predict(self._state, t, m))
        except Exception as e:  # jaxlib's error types vary by version; only an option it rejects is handled here
            if not self.compiler_options or not any(k in str(e) for k in self.compiler_options):
                raise
            log.warning("this jaxlib rejects the model's XLA:CPU options %s (%s); compiling with the defaults",
                        self.compiler_options, str(e).splitlines()[0][:200])
            self.compiler_options = {}
            self._predict = jax.jit(self._predict_fn)
            return np.asarray(self._predict(self._state, t, m))

    def __call__(self, triplets, metadata) -> np.ndarray:
        t, m = validate_inputs(
            triplets, metadata, image_size=self.image_size, num_metadata=len(self.metadata_columns),
            columns=self.metadata_columns,
        )
        n = t.shape[0]
        out = np.empty((n,), np.float32)
        start = 0
        for b in self._plan(n):
            k = min(b, n - start)
            tc, mc = t[start:start + k], m[start:start + k]
            if k < b:
                tc = np.concatenate([tc, np.zeros((b - k, *tc.shape[1:]), np.float32)])
                mc = np.concatenate([mc, np.zeros((b - k, mc.shape[1]), np.float32)])
            out[start:start + k] = self._run(tc, mc)[:k]
            start += k
        return out

    def _plan(self, n: int) -> list[int]:
        """Buckets to run for n rows: full largest buckets, then the cheapest mix for the rest (e.g. 512 rows with
        buckets (.., 256, 1024) run as 2 x 256 rather than padded to 1024, which would double the work)."""
        big = self.buckets[-1]
        return [big] * (n // big) + self._plans[n % big]


def _chunk_plans(buckets: Sequence[int], call_rows: int) -> list[list[int]]:
    """For every remainder r < max(buckets): the buckets minimising padded rows + call_rows per call (bottom-up
    dynamic programme; computed once per scorer)."""
    cost = [0.0] + [float("inf")] * (buckets[-1] - 1)
    plan: list[list[int]] = [[] for _ in range(buckets[-1])]
    for r in range(1, buckets[-1]):
        for b in buckets:
            c = b + call_rows + (cost[r - b] if b < r else 0.0)
            if c < cost[r]:
                cost[r], plan[r] = c, [b] + (plan[r - b] if b < r else [])
    return [sorted(p, reverse=True) for p in plan]  # full big calls first, the padded one last


def load_scorer(checkpoint: str | os.PathLike, buckets: Sequence[int] = DEFAULT_BUCKETS, **kwargs) -> Scorer:
    """Scorer for a model directory or a training workdir (its best checkpoint). For an export directory
    (btsbot-export) it returns the same interface over that format's runtime (btsbot_jax.inference.runtimes)."""
    model_dir = resolve_checkpoint(checkpoint)
    card = read_model_card(model_dir)
    from btsbot_jax.inference import runtimes  # light module; each runtime is imported only by the scorer that uses it

    if runtimes.is_export_card(card):
        return runtimes.load_exported(model_dir, buckets=buckets, **kwargs)
    model, card = load_model(model_dir, **kwargs)
    return Scorer(model, card, buckets=buckets)


__all__ = ["Scorer", "CheckpointError", "InputError", "load_scorer", "validate_inputs", "bucket_for", "DEFAULT_BUCKETS"]
