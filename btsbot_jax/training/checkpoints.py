"""Training checkpoints in WORKDIR/checkpoints (orbax) and the exported best model in WORKDIR/best.

A checkpoint is the `TrainState` pytree plus JSON metadata (epoch, callback states, the metric history). Retention
is derived from that history: the latest epoch (to resume) and the best-val-loss epoch (to ship) are kept. With
several JAX processes every call here except `export_best` is collective: all processes make it, orbax writes each
array once and synchronises them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from btsbot_jax.models.model_dir import make_model_card, save_model


def checkpoint_manager(path: str | Path) -> ocp.CheckpointManager:
    """Keeps every step it is given; `prune` decides what goes.

    orbax's BestN policy is not used: its metrics are not persisted (orbax 0.12 writes `"metrics": {}`), so a manager
    reopened after a kill sees the old steps as metric-less and deletes the best one. Retention is instead derived
    from the training history, which lives in every checkpoint's metadata and so survives a kill."""
    opts = ocp.CheckpointManagerOptions(enable_async_checkpointing=False, cleanup_tmp_directories=True)
    return ocp.CheckpointManager(Path(path).absolute(), options=opts)


def best_epoch(history: list[dict], min_rel_delta: float | None = None) -> int:
    """The epoch that is shipped. Default (v1): the earliest epoch with the lowest val_loss (what Keras'
    save_best_only keeps). With `min_rel_delta` (v2, `callbacks.RelativeImprovement`): the last epoch whose val_loss
    improved on every earlier one by more than that fraction."""
    if min_rel_delta is None:
        i = min(range(len(history)), key=lambda j: (history[j]["val_loss"], j))
        return int(history[i]["epoch"])
    best, lowest = int(history[0]["epoch"]), float("inf")
    for row in history:
        if (1.0 + min_rel_delta) * row["val_loss"] < lowest:
            best = int(row["epoch"])
        lowest = min(lowest, row["val_loss"])
    return best


def prune(mngr: ocp.CheckpointManager, history: list[dict], min_rel_delta: float | None = None) -> None:
    """Keep only the latest epoch (to resume) and the best one (to ship)."""
    if not history:
        return
    keep = {int(history[-1]["epoch"]), best_epoch(history, min_rel_delta)}
    for step in mngr.all_steps():
        if step not in keep:
            mngr.delete(step)


def save(mngr: ocp.CheckpointManager, epoch: int, state: Any, meta: dict[str, Any]) -> None:
    """Write epoch `epoch` (state + JSON metadata) and wait until it is on disk."""
    mngr.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    mngr.wait_until_finished()


def restore(mngr: ocp.CheckpointManager, step: int, like: Any) -> tuple[Any, dict[str, Any]]:
    """(state, metadata) of `step`, laid out (shapes, dtypes, shardings) like the pytree `like`.

    Shardings come from `like`, not from the checkpoint, so a checkpoint written by N processes restores in a run of
    any other number of processes or devices."""
    template = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    r = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(template),
                                                   meta=ocp.args.JsonRestore()))
    return r.state, r.meta


def export_best(model, config: ml_collections.ConfigDict, workdir: str | Path, info: dict[str, Any]) -> Path:
    """Write `model` (host arrays, eval mode) as the model directory WORKDIR/best with a model card.

    Called by one process only (process 0)."""
    card = make_model_card(
        config.model, version=config.get("model_version", "dev"),
        provenance={"trained_by": "btsbot_jax.training.train", "data_dir": str(config.data_dir),
                    "seed": int(config.seed), **info},
        training_config=json.loads(config.to_json_best_effort()),
    )
    return save_model(model, Path(workdir) / "best", card)
