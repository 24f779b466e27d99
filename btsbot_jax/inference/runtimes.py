"""Scorers over exported artifacts: StableHLO (jax), ONNX (onnxruntime), TF SavedModel (tensorflow).

Each one is what a broker runs: it needs only the export directory and its runtime, never the Flax model code
or an orbax checkpoint. They share the interface of `btsbot_jax.inference.scorer.Scorer` (`scorer(triplets, metadata) ->
float32 (N,)`, `.version`, `.card`, same input validation and `InputError`), so every command that takes
`--checkpoint` can score with any runtime, and the benchmarks compare runtimes through one code path.

Layout of an export directory (written by `btsbot_jax.inference.export`)::

    DIR/model_card.json    the source model card with `format` = one of EXPORT_FORMATS below, the artifact name,
                           the signature, where it was exported from, and the parity measured at export time
    DIR/model.jax_export   stablehlo: `jax.export` serialized module (weights embedded, symbolic batch)
    DIR/model.onnx         onnx: inputs `triplet`, `metadata`; output `fc_out` (v1); for BTSbot v2 models
                           upstream's signature: `image` (N,3,H,W) and/or `metadata`, output `logits`
    DIR/saved_model.pb     savedmodel: DIR itself is the SavedModel (`tf.saved_model.load(DIR)`), so
    DIR/variables/         Kowalski can point at it unchanged; TF ignores the model card beside it

An `all` export is `DIR/model_card.json` (format `btsbot-jax/export-all`, `exports` = {format: subfolder}) with
one complete export directory per format in `DIR/stablehlo`, `DIR/onnx`, `DIR/savedmodel`; loading the parent
picks its `default_runtime` (StableHLO), loading a subfolder picks that runtime.

Heavy runtimes (jax, onnxruntime, tensorflow) are imported only by the scorer that needs them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from btsbot_jax.constants import METADATA_COLUMNS

MODEL_CARD = "model_card.json"  # same file name as an orbax model directory (btsbot_jax.models.model_dir.MODEL_CARD)
STABLEHLO_FORMAT = "btsbot-jax/stablehlo"
ONNX_FORMAT = "btsbot-jax/onnx"
SAVEDMODEL_FORMAT = "btsbot-jax/savedmodel"
ALL_FORMAT = "btsbot-jax/export-all"
EXPORT_FORMATS = {"stablehlo": STABLEHLO_FORMAT, "onnx": ONNX_FORMAT, "savedmodel": SAVEDMODEL_FORMAT}
ARTIFACTS = {"stablehlo": "model.jax_export", "onnx": "model.onnx", "savedmodel": "saved_model.pb"}
DEFAULT_RUNTIME = "stablehlo"
# Names and shapes of the published v1.0.1 serving signature (as Kowalski and BOOM call it), shared by ONNX and
# SavedModel.
INPUT_NAMES = ("triplet", "metadata")
OUTPUT_NAME = "fc_out"
# BTSbot v2 ONNX (upstream's to_onnx.py signature): image (N,3,H,W) and/or metadata (N,K) -> logits (N,1)
V2_INPUT_NAMES = ("image", "metadata")
V2_OUTPUT_NAME = "logits"


class ExportFormatError(ValueError):
    """A directory that is not a usable export (unknown format, missing artifact, wrong architecture)."""


def read_export_card(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path) / MODEL_CARD
    if not p.is_file():
        raise ExportFormatError(f"{path}: no {MODEL_CARD}; not a btsbot-jax export directory")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ExportFormatError(f"{p}: model card is not valid JSON ({e})") from e


def is_export_card(card: dict[str, Any]) -> bool:
    return card.get("format") in (*EXPORT_FORMATS.values(), ALL_FORMAT)


class RuntimeScorer:
    """Common part: card fields, validation, chunking. Subclasses implement `_run(t, m) -> (n,)` and `_open`."""

    runtime = "?"

    def __init__(self, export_dir: str | os.PathLike, card: dict[str, Any] | None = None, max_batch: int = 1024):
        self.path = Path(export_dir)
        self.card = read_export_card(self.path) if card is None else card
        self.version = self.card.get("version", "unknown")
        self.architecture = self.card.get("architecture")
        self.metadata_columns = tuple(self.card.get("metadata_columns", METADATA_COLUMNS))
        self.image_size = int(self.card.get("image_size", 63))
        self.max_batch = int(max_batch)
        artifact = self.path / self.card.get("artifact", ARTIFACTS[self.runtime])
        if not artifact.is_file():
            raise ExportFormatError(f"{self.path}: {self.runtime} artifact {artifact.name} is missing")
        self._open(artifact)

    def _open(self, artifact: Path) -> None:
        raise NotImplementedError

    def _run(self, t: np.ndarray, m: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def warmup(self) -> None:
        z = self.image_size
        self(np.zeros((1, z, z, 3), np.float32), np.zeros((1, len(self.metadata_columns)), np.float32))

    def __call__(self, triplets, metadata) -> np.ndarray:
        from btsbot_jax.inference.validation import validate_inputs

        t, m = validate_inputs(
            triplets, metadata, image_size=self.image_size, num_metadata=len(self.metadata_columns),
            columns=self.metadata_columns,
        )
        n = t.shape[0]
        out = np.empty((n,), np.float32)
        for start in range(0, n, self.max_batch):
            stop = min(start + self.max_batch, n)
            out[start:stop] = self._run(t[start:stop], m[start:stop])
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, version={self.version!r}, arch={self.architecture!r})"


class StableHLOScorer(RuntimeScorer):
    """`jax.export.deserialize(bytes).call(t, m)`: plain jax + numpy, the weights live inside the artifact.

    Batches are padded to fixed buckets like the Flax scorer, so a stream of ragged batches compiles a handful of
    programs once instead of one per batch size (the artifact's batch dimension is symbolic).
    """

    runtime = "stablehlo"

    def __init__(self, export_dir, card=None, buckets: Sequence[int] | None = None):
        from btsbot_jax.inference.validation import DEFAULT_BUCKETS

        self.buckets = tuple(sorted(buckets or DEFAULT_BUCKETS))
        super().__init__(export_dir, card, max_batch=self.buckets[-1])

    def _open(self, artifact: Path) -> None:
        import jax

        self.exported = jax.export.deserialize(bytearray(artifact.read_bytes()))
        backend = jax.default_backend()
        want = {"gpu": ("cuda", "rocm")}.get(backend, (backend,))
        if not set(want) & set(self.exported.platforms):
            raise ExportFormatError(
                f"{self.path}: artifact was lowered for {self.exported.platforms}, this jax runs on {backend!r}; "
                f"re-export with that platform"
            )
        self._call = jax.jit(self.exported.call)

    def compiled_sizes(self) -> int:
        return self._call._cache_size()

    def warmup(self) -> None:
        z, k = self.image_size, len(self.metadata_columns)
        for b in self.buckets:
            self._run(np.zeros((b, z, z, 3), np.float32), np.zeros((b, k), np.float32))

    def _run(self, t, m):
        from btsbot_jax.inference.validation import bucket_for

        k = t.shape[0]
        b = bucket_for(k, self.buckets)
        if k < b:
            t = np.concatenate([t, np.zeros((b - k, *t.shape[1:]), np.float32)])
            m = np.concatenate([m, np.zeros((b - k, m.shape[1]), np.float32)])
        return np.asarray(self._call(t, m))[:k, 0]


class OnnxScorer(RuntimeScorer):
    """onnxruntime session over `model.onnx` (CUDA provider first where the installed onnxruntime has it)."""

    runtime = "onnx"

    def __init__(self, export_dir, card=None, providers: Sequence[str] | None = None, **kwargs):
        self._providers = providers
        super().__init__(export_dir, card, **kwargs)

    def _open(self, artifact: Path) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        providers = self._providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(str(artifact), providers=providers)
        names = tuple(i.name for i in self.session.get_inputs())
        outputs = tuple(o.name for o in self.session.get_outputs())
        # v1: triplet NHWC + metadata -> fc_out (score). v2 (upstream's signature, what BOOM loads): image NCHW
        # and/or metadata -> logits, so the scorer transposes the triplet and applies the sigmoid.
        self.v2 = outputs == (V2_OUTPUT_NAME,) and set(names) <= set(V2_INPUT_NAMES) and bool(names)
        if not self.v2 and set(names) != set(INPUT_NAMES):
            raise ExportFormatError(f"{artifact}: ONNX inputs are {names}, expected {INPUT_NAMES} (v1) or a subset "
                                    f"of {V2_INPUT_NAMES} with output {V2_OUTPUT_NAME!r} (v2)")
        self._inputs = names

    def logits(self, t, m) -> np.ndarray:
        """v2 exports: the raw `logits` output, (N,) float32 (no input validation; for export checks)."""
        feeds = {"image": np.ascontiguousarray(np.asarray(t, np.float32).transpose(0, 3, 1, 2)),
                 "metadata": np.asarray(m, np.float32)}
        (out,) = self.session.run([V2_OUTPUT_NAME], {n: feeds[n] for n in self._inputs})
        return out[:, 0]

    def _run(self, t, m):
        if self.v2:
            x = self.logits(t, m).astype(np.float64)
            return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)
        (out,) = self.session.run([OUTPUT_NAME], {"triplet": t, "metadata": m})
        return out[:, 0]


class SavedModelScorer(RuntimeScorer):
    """`tf.saved_model.load(DIR).signatures['serving_default']`, exactly how Kowalski calls BTSbot."""

    runtime = "savedmodel"

    def _open(self, artifact: Path) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        self._tf = tf
        self._loaded = tf.saved_model.load(str(artifact.parent))
        try:
            self._fn = self._loaded.signatures["serving_default"]
        except KeyError as e:
            raise ExportFormatError(f"{artifact.parent}: SavedModel has no 'serving_default' signature") from e

    def _run(self, t, m):
        tf = self._tf
        return self._fn(triplet=tf.constant(t), metadata=tf.constant(m))[OUTPUT_NAME].numpy()[:, 0]


RUNTIMES: dict[str, type[RuntimeScorer]] = {
    "stablehlo": StableHLOScorer, "onnx": OnnxScorer, "savedmodel": SavedModelScorer,
}


def load_exported(
    path: str | os.PathLike,
    buckets: Sequence[int] | None = None,
    architecture: str | None = None,
    runtime: str | None = None,
) -> RuntimeScorer:
    """Scorer for an export directory; `runtime` picks a format inside an `all` export (default: StableHLO)."""
    path = Path(path)
    card = read_export_card(path)
    fmt = card.get("format")
    if fmt == ALL_FORMAT:
        exports = card.get("exports", {})
        name = runtime or card.get("default_runtime", DEFAULT_RUNTIME)
        if name not in exports:
            raise ExportFormatError(f"{path}: this export holds {sorted(exports)}, not {name!r}")
        return load_exported(path / exports[name], buckets=buckets, architecture=architecture)
    by_format = {v: k for k, v in EXPORT_FORMATS.items()}
    if fmt not in by_format:
        raise ExportFormatError(
            f"{path}: model card format {fmt!r} is not an export; expected one of "
            f"{sorted(by_format)} or {ALL_FORMAT!r}"
        )
    name = by_format[fmt]
    if runtime is not None and runtime != name:
        raise ExportFormatError(f"{path}: this is a {name} export, not {runtime!r}")
    if architecture is not None and card.get("architecture") != architecture:
        raise ExportFormatError(
            f"{path}: export holds a {card.get('architecture')!r} model, expected {architecture!r}"
        )
    if name == "stablehlo":
        return StableHLOScorer(path, card, buckets=buckets)
    return RUNTIMES[name](path, card)


__all__ = [
    "ALL_FORMAT", "ARTIFACTS", "EXPORT_FORMATS", "ExportFormatError", "OnnxScorer", "RuntimeScorer",
    "SavedModelScorer", "StableHLOScorer", "is_export_card", "load_exported", "read_export_card",
]
