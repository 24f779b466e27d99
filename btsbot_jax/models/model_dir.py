"""Model directories: an orbax checkpoint of the weights plus a JSON model card beside it.

Layout of a model directory (what `import_keras`, training and `load_scorer` agree on)::

    DIR/model_card.json   architecture config, metadata column order, provenance, version string
    DIR/state/            orbax StandardCheckpointer tree of nnx.Param and nnx.BatchStat values

Only parameters and BatchNorm statistics are stored: the RNG state of dropout is a training concern and the
optimizer state lives in the training checkpoints, so a model directory is small and safe to ship.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from btsbot_jax import __version__
from btsbot_jax.models import ALL_ARCHITECTURES, BTSbot, create_model, default_model_config, is_v2

MODEL_CARD = "model_card.json"
STATE_DIR = "state"
CARD_FORMAT = "btsbot-jax/orbax"


class CheckpointError(ValueError):
    """A model directory that is missing, incomplete, or does not fit the expected architecture."""


def _weights(model: BTSbot) -> nnx.State:
    return nnx.state(model, (nnx.Param, nnx.BatchStat))


def make_model_card(
    model_config: ml_collections.ConfigDict, *, version: str, provenance: dict[str, Any] | None = None, **extra
) -> dict[str, Any]:
    cfg = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
    card = {
        "format": CARD_FORMAT,
        "name": "btsbot",
        "version": version,
        "architecture": cfg["architecture"],
        "model_config": cfg,
        "metadata_columns": list(cfg["metadata_cols"]),
        "image_size": int(cfg["image_size"]),
        "btsbot_jax_version": __version__,
        "created_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "provenance": provenance or {},
    }
    card.update(extra)
    return card


def save_model(model: BTSbot, out_dir: str | os.PathLike, card: dict[str, Any]) -> Path:
    """Write weights (orbax) and model card; overwrites an existing model directory."""
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    state = nnx.to_pure_dict(_weights(model))
    state = jax.tree.map(np.asarray, state)
    # Host arrays written by the calling process alone: with several JAX processes (multi-host training exports
    # from process 0 only) orbax must not wait for the others at its barriers.
    me = jax.process_index()
    ckptr = ocp.StandardCheckpointer(
        multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me}))
    ckptr.save(out / STATE_DIR, state, force=True)
    ckptr.wait_until_finished()
    (out / MODEL_CARD).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return out


def read_model_card(model_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(model_dir) / MODEL_CARD
    if not path.is_file():
        raise CheckpointError(f"{model_dir}: no {MODEL_CARD} here; not a btsbot-jax model directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: model card is not valid JSON ({e})") from e


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """Accept a model directory or a training workdir (whose best checkpoint is `best/`)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint path {str(p)!r} does not exist")
    if (p / MODEL_CARD).is_file():
        return p
    if (p / "best" / MODEL_CARD).is_file():
        return p / "best"
    raise CheckpointError(
        f"{p}: neither a model directory (with {MODEL_CARD}) nor a training workdir with a best/ checkpoint"
    )


def load_model(path: str | os.PathLike, architecture: str | None = None) -> tuple[BTSbot, dict[str, Any]]:
    """Restore a model (in eval mode) and its card. `architecture`, if given, must match the card."""
    model_dir = resolve_checkpoint(path)
    card = read_model_card(model_dir)
    if card.get("format") != CARD_FORMAT:
        raise CheckpointError(
            f"{model_dir}: model card format {card.get('format')!r} is not an orbax weights checkpoint "
            f"({CARD_FORMAT!r})"
        )
    arch = card.get("architecture")
    if arch not in ALL_ARCHITECTURES:
        raise CheckpointError(f"{model_dir}: unknown architecture {arch!r} in model card")
    if architecture is not None and arch != architecture:
        raise CheckpointError(f"{model_dir}: checkpoint holds a {arch!r} model, expected {architecture!r}")
    if is_v2(arch):  # the card holds the whole config (upstream's train_config keys), nested branch configs too
        cfg = ml_collections.ConfigDict(card["model_config"])
    else:
        cfg = default_model_config(arch)
        cfg.update(card["model_config"])
    try:
        model = create_model(cfg)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{model_dir}: the model card's config does not build a {arch!r} model: {e}") from e
    target = jax.tree.map(np.asarray, nnx.to_pure_dict(_weights(model)))
    state_dir = (model_dir / STATE_DIR).absolute()
    if not state_dir.is_dir():
        raise CheckpointError(f"{model_dir}: weights folder {STATE_DIR}/ is missing")
    try:
        restored = ocp.StandardCheckpointer().restore(state_dir, target)
    except Exception as e:  # orbax raises several types for a tree that does not fit
        raise CheckpointError(
            f"{model_dir}: weights do not fit the {arch!r} architecture of its model card: {e}"
        ) from e
    _check_shapes(model_dir, target, restored)
    state = _weights(model)
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)
    model.eval()
    return model, card


def _check_shapes(model_dir: Path, target, restored) -> None:
    flat_t = dict(jax.tree_util.tree_flatten_with_path(target)[0])
    flat_r = dict(jax.tree_util.tree_flatten_with_path(restored)[0])
    if flat_t.keys() != flat_r.keys():
        raise CheckpointError(f"{model_dir}: weight names differ from the model card's architecture")
    for k, v in flat_t.items():
        if np.shape(flat_r[k]) != np.shape(v):
            name = jax.tree_util.keystr(k)
            raise CheckpointError(
                f"{model_dir}: weight {name} has shape {np.shape(flat_r[k])}, architecture expects {np.shape(v)}"
            )
