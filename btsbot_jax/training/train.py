"""Training BTSbot from scratch the way the paper did (Rehemtulla et al. 2024, Table 3), reproducible and
resumable on any devices and any number of hosts. The BTSbot v2 recipe (Rehemtulla et al. 2025: AdamW, per-epoch
warm-up + cosine, pos_weight BCE, keep-best on a 0.5% improvement, frozen branches, starting from imported weights)
is the same loop with other config values (docs/v2_training.md); a v1 config trains exactly as before.

Read top to bottom, as in the Flax examples: the loss, the train state, the jitted steps, one epoch of training,
evaluation, then `train_and_evaluate`, which wires them together with the callbacks (`callbacks.py`), the
checkpoints (`checkpoints.py`), the data sources (`btsbot_jax.data.sources`) and one `clu` metric writer.

- one `jax.jit` train step over a `TrainState` pytree (donated): weighted binary cross-entropy with the paper's
  class weights, Adam through `optax.inject_hyperparams` so the learning rate is a value in the optimizer state
  that the epoch-level reduce-on-plateau rule sets, and dropout keys `fold_in(key(seed), step)`;
- data parallelism with a 1-D `jax.sharding.Mesh` over all devices of all processes: each process loads its slice
  of the global batch, `jax.make_array_from_process_local_data` makes one global array of the slices, parameters and
  optimizer state are replicated, and XLA inserts the gradient all-reduce; BatchNorm sees the global batch, so 1
  device, N devices and N hosts compute the same function;
- metrics come back replicated (the loss is a global mean, validation logits are gathered to every process), so
  every process takes the same plateau/early-stopping decisions; process 0 alone writes metrics, TensorBoard
  events, config.json, summary.json and best/;
- Keras' ReduceLROnPlateau and EarlyStopping on the validation loss (`callbacks.Plateau`, `callbacks.EarlyStopping`);
- orbax checkpoints in WORKDIR/checkpoints, saved and restored by all processes together, keeping the latest epoch
  (resume) and the best-val-loss epoch; the best model is also exported as WORKDIR/best/ (`load_scorer(WORKDIR)`);
- per-epoch scalars through `clu.metric_writers` (the log and TensorBoard events in WORKDIR/tensorboard), and the
  history in WORKDIR/metrics.json and metrics.csv (read by `btsbot-evaluate` for the training curves).

Resume is exact: the order of epoch e and its augmentations depend only on (seed, e), dropout only on
(seed, step), and the checkpoint holds parameters, BatchNorm statistics, Adam moments, the learning rate, the
plateau/early-stopping counters and the metric history. A run killed at any point and restarted ends with the same
weights as an uninterrupted run of the same seed (XLA on CPU is deterministic).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from btsbot_jax.data import pipeline as input_pipeline
from btsbot_jax.data.sources import load_sources
from btsbot_jax.models import create_model
from btsbot_jax.training import checkpoints, init_from
from btsbot_jax.training.callbacks import EarlyStopping, Plateau, RelativeImprovement, WarmupCosine

log = logging.getLogger("btsbot_jax.training.train")

# Dropout masks come from XLA's RngBitGenerator ("rbg"): with threefry, XLA:CPU spends ~10 s more compiling the
# train step (measured 18 s vs 7 s for a small model), and rbg bits, like threefry's, do not depend on the sharding
# (tests/test_train.py checks 4 devices against 1).
DROPOUT_PRNG = "rbg"

# ----------------------------------------------------------------------------------------------------------------
# Loss and class weights
# ----------------------------------------------------------------------------------------------------------------


def class_weights(labels: np.ndarray) -> np.ndarray:
    """Rehemtulla et al. 2024: w_c = (1/n_c) / ||(1/n_0, 1/n_1)||, then divided by max(w): the rarer class gets 1.0."""
    labels = np.asarray(labels)
    n = np.array([np.sum(labels == 0), np.sum(labels == 1)], np.float64)
    if (n == 0).any():
        raise ValueError(f"the training split needs both classes to weight them, got counts {n.astype(int).tolist()}")
    w = (1.0 / n) / np.linalg.norm(1.0 / n)
    return (w / w.max()).astype(np.float32)


def pos_weight_weights(labels: np.ndarray) -> np.ndarray:
    """BTSbot v2 (Rehemtulla et al. 2025; upstream BCEWithLogitsLoss(pos_weight=N_neg/N_pos)) as class weights:
    (1, N_neg/N_pos). For 0/1 labels torch's pos_weight loss, pw*y*(-log s) + (1-y)*(-log(1-s)) averaged over the
    batch, is exactly `weighted_bce` with these weights."""
    labels = np.asarray(labels)
    n_neg, n_pos = int(np.sum(labels == 0)), int(np.sum(labels == 1))
    if n_pos == 0:
        raise ValueError(f"the training split has no positive alert to weight (N_neg={n_neg}, N_pos=0)")
    return np.array([1.0, n_neg / n_pos], np.float32)


def loss_weights(config: ml_collections.ConfigDict, labels: np.ndarray) -> np.ndarray:
    """Per-class loss weights (w_0, w_1) of `config.class_weighting`: 'alerts' (v1, `class_weights`), 'pos_weight'
    (v2, `pos_weight_weights`) or 'none'."""
    kind = config.get("class_weighting", "alerts")
    if kind == "alerts":
        return class_weights(labels)
    if kind == "pos_weight":
        return pos_weight_weights(labels)
    if kind == "none":
        return np.ones(2, np.float32)
    raise ValueError(f"class_weighting {kind!r}: expected 'alerts', 'pos_weight' or 'none'")


def weighted_bce(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
    """Keras semantics of binary cross-entropy with class_weight: mean over the batch of w[y_i] * bce_i (sum over
    batch size, not over the sum of weights). Computed from logits, which is the stable form of the same loss."""
    y = labels.astype(jnp.float32)
    per = optax.sigmoid_binary_cross_entropy(logits, y)
    w = jnp.asarray(weights, jnp.float32)[labels.astype(jnp.int32)]
    return jnp.mean(w * per)


def bce_numpy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-sample BCE from logits in float64 (host side, for evaluation)."""
    x = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.float64)
    return np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))


# ----------------------------------------------------------------------------------------------------------------
# Train state and steps
# ----------------------------------------------------------------------------------------------------------------


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training, as one pytree (what is donated, checkpointed and restored)."""

    step: jax.Array
    params: nnx.State
    batch_stats: nnx.State
    opt_state: Any
    rng: jax.Array  # raw uint32 key data of the dropout base key


@dataclasses.dataclass(frozen=True)
class ModelDef:
    """The static half of the model: graph definition and an RNG-state template (keys are re-derived per step)."""

    graphdef: Any
    rng_state: nnx.State


def frozen_modules(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The model's frozen submodules (`config.freeze`, comma-separated attribute paths, e.g.
    'image_branch,meta_branch' for v2_frozen_fusion)."""
    return tuple(p.strip() for p in str(config.get("freeze", "") or "").split(",") if p.strip())


def _trainable_labels(frozen: tuple[str, ...]):
    """optax.multi_transform label function: 'frozen' for every parameter under a frozen submodule."""
    prefixes = [tuple(p.split(".")) for p in frozen]

    def labels(params):
        def one(path, _):
            keys = tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)
            return "frozen" if any(keys[: len(p)] == p for p in prefixes) else "trainable"

        return jax.tree_util.tree_map_with_path(one, params)

    return labels


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam (v1) or AdamW (v2) with the learning rate as a hyperparameter in the state (set per epoch by the plateau
    rule or the warm-up + cosine schedule).

    optax.adam divides by sqrt(v_hat) + eps, Keras by sqrt(v) + eps with the bias correction folded into the step
    size; the two differ only in how eps=1e-7 enters, which is negligible at these gradient scales. optax.adamw is
    torch's AdamW (decoupled weight decay lr * wd * p on every parameter). With frozen submodules
    (`config.freeze`) the optimizer is an optax.multi_transform: the frozen parameters get zero updates (and no
    moments), the others the optimizer's."""
    kind = config.get("optimizer", "adam")
    frozen = frozen_modules(config)
    if kind not in ("adam", "adamw"):
        raise ValueError(f"optimizer {kind!r}: expected 'adam' or 'adamw'")
    if kind == "adam" and not frozen:
        return optax.inject_hyperparams(optax.adam)(
            learning_rate=config.learning_rate, b1=config.beta1, b2=config.beta2, eps=config.epsilon
        )

    def build(learning_rate, b1, b2, eps, weight_decay):
        if kind == "adamw":
            base = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
        else:
            base = optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
        if not frozen:
            return base
        return optax.multi_transform({"trainable": base, "frozen": optax.set_to_zero()}, _trainable_labels(frozen))

    return optax.inject_hyperparams(build)(learning_rate=config.learning_rate, b1=config.beta1, b2=config.beta2,
                                           eps=config.epsilon, weight_decay=float(config.get("weight_decay", 0.0)))


def create_train_state(model_config: ml_collections.ConfigDict, tx: optax.GradientTransformation, seed: int,
                       model=None) -> tuple[ModelDef, TrainState]:
    """Fresh model (initialised from `seed`; or `model`, e.g. one initialised from other weights) and its optimizer
    state."""
    model = create_model(model_config, seed) if model is None else model
    graphdef, params, batch_stats, rng_state = nnx.split(model, nnx.Param, nnx.BatchStat, nnx.RngState)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(seed + 1, impl=DROPOUT_PRNG)),
    )
    return ModelDef(graphdef, rng_state), state


def merge_model(mdef: ModelDef, params, batch_stats, rng_state):
    return nnx.merge(mdef.graphdef, params, batch_stats, rng_state, copy=True)


def make_mesh(devices=None) -> Mesh:
    """1-D data-parallel mesh over all (global) devices, grouped by process.

    Grouping matters with several processes: process i's devices then hold rows [i*b, (i+1)*b) of a global batch,
    which is the slice `pipeline.train_dataset(process_index=i)` loads."""
    if devices is None:
        devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(devices), ("data",))


# XLA:CPU compile options for the training step: YNNPACK fusions off, so convolutions and their gradients run on
# XLA's Eigen kernels. YNNPACK computes a kernel gradient (a convolution whose window is the whole 63x63 image) 3-6x
# slower than Eigen, and those gradients were 68% of the step's op time: with the default the step measured 4.8x
# slower on CPU (benchmarks/training.py measures both; benchmarks/profile_ops.py shows the op times). Inference
# keeps YNNPACK, which is faster there.
CPU_TRAIN_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def _submodule(model, path: str):
    node = model
    for name in path.split("."):
        if not hasattr(node, name):
            raise ValueError(f"frozen submodule {path!r}: the {type(model).__name__} model has no {name!r}")
        node = getattr(node, name)
    return node


def make_train_step(mdef: ModelDef, tx: optax.GradientTransformation, weights, mesh: Mesh | None = None,
                    cpu_compiler_options: dict | None = None, eval_modules: tuple[str, ...] = ()):
    """Jitted `train_step(state, batch, rng_state) -> (state, metrics)`; the state argument is donated.

    `batch` is a dict of global arrays {triplet, metadata, label} sharded along 'data' (see `shard_batch`).
    `metrics` holds the batch's weighted loss and its number of correct predictions at score > 0.5.
    Submodules named in `eval_modules` (frozen branches) run in eval mode: no dropout, BatchNorm with its running
    statistics, which it does not update. The loss is computed from the model's `logits()` (every model, v1 and
    v2, has it; calling the model gives the sigmoid score).
    On CPU the step is compiled with `cpu_compiler_options` (default CPU_TRAIN_COMPILER_OPTIONS; {} = XLA's
    defaults); other backends use XLA's defaults."""
    w = jnp.asarray(weights, jnp.float32)

    def train_step(state: TrainState, batch, rng_state):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng, impl=DROPOUT_PRNG), state.step)
        seeded = merge_model(mdef, state.params, state.batch_stats, rng_state)
        nnx.reseed(seeded, dropout=key)  # one distinct key per dropout layer, derived from (seed, step)
        step_rngs = nnx.state(seeded, nnx.RngState)

        def loss_fn(params):
            model = merge_model(mdef, params, state.batch_stats, step_rngs)
            model.train()
            for path in eval_modules:
                _submodule(model, path).eval()
            logits = model.logits(batch["triplet"], batch["metadata"])[:, 0]
            loss = weighted_bce(logits, batch["label"], w)
            return loss, (logits, nnx.state(model, nnx.BatchStat))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        correct = jnp.sum((logits > 0) == (batch["label"] > 0))
        new = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
        return new, {"loss": loss, "correct": correct}

    platform = (mesh.devices.flat[0] if mesh is not None else jax.devices()[0]).platform
    opts = None
    if platform == "cpu":
        opts = dict(CPU_TRAIN_COMPILER_OPTIONS if cpu_compiler_options is None else cpu_compiler_options) or None
    if mesh is None:
        return jax.jit(train_step, donate_argnums=0, compiler_options=opts)
    repl = NamedSharding(mesh, P())
    data = NamedSharding(mesh, P("data"))
    return jax.jit(train_step, in_shardings=(repl, data, repl), out_shardings=(repl, repl), donate_argnums=0,
                   compiler_options=opts)


def make_eval_step(mdef: ModelDef, mesh: Mesh | None = None):
    """Jitted `eval_step(state, batch, rng_state) -> logits (N,)` in eval mode (no dropout, running BN stats)."""

    def eval_step(state: TrainState, batch, rng_state):
        model = merge_model(mdef, state.params, state.batch_stats, rng_state)
        model.eval()
        return model.logits(batch["triplet"], batch["metadata"])[:, 0]

    if mesh is None:
        return jax.jit(eval_step)
    repl = NamedSharding(mesh, P())
    data = NamedSharding(mesh, P("data"))
    return jax.jit(eval_step, in_shardings=(repl, data, repl), out_shardings=repl)


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This host's slice of a global batch -> global arrays sharded along 'data' (works on 1 or many hosts)."""
    sharding = NamedSharding(mesh, P("data"))
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def _replicated(x, sharding: NamedSharding) -> jax.Array:
    """One host value -> a global array with a copy on every device of the mesh (all processes hold the same value).

    `jax.device_put` cannot target devices of other processes, so each process builds its own shards."""
    if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
        impl = jax.random.key_impl(x)
        data = _replicated(jax.random.key_data(x), sharding)
        return jax.jit(lambda d: jax.random.wrap_key_data(d, impl=impl), out_shardings=sharding)(data)
    host = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(tree, mesh: Mesh):
    """Every leaf of `tree` replicated over `mesh` (on one or many processes)."""
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: _replicated(x, sharding), tree)


def set_learning_rate(state: TrainState, lr: float) -> TrainState:
    hp = dict(state.opt_state.hyperparams)
    old = hp["learning_rate"]
    hp["learning_rate"] = _replicated(np.asarray(lr, old.dtype), old.sharding)
    return state.replace(opt_state=state.opt_state._replace(hyperparams=hp))


# ----------------------------------------------------------------------------------------------------------------
# One epoch of training; evaluation
# ----------------------------------------------------------------------------------------------------------------


def train_epoch(train_step, state: TrainState, rng_state, ds, *, nsteps: int, global_batch: int, mesh: Mesh,
                bar=None) -> tuple[TrainState, dict[str, float]]:
    """Run `nsteps` steps over this process's batches `ds`; return the state and the epoch's training metrics
    (mean of the batch losses, accuracy over the epoch's alerts), the same on every process."""
    losses, corrects = [], []
    for i, batch in enumerate(input_pipeline.as_numpy(ds.take(nsteps))):
        state, m = train_step(state, shard_batch(batch, mesh), rng_state)
        losses.append(m["loss"])
        corrects.append(m["correct"])
        if bar is not None:
            bar.update(1)
            if i % 20 == 0:
                bar.set_postfix(loss=f"{float(m['loss']):.4f}")
    losses = np.asarray(jax.device_get(losses), np.float64)
    corrects = np.asarray(jax.device_get(corrects), np.float64)
    return state, {"loss": float(losses.mean()), "accuracy": float(corrects.sum() / (len(losses) * global_batch))}



def predict_logits(eval_step, state, rng_state, source, *, batch_size: int, mesh: Mesh) -> np.ndarray:
    """Logits of every alert of a split, in file order, on every process.

    Each process loads only its slice of each global batch; the padded last batch's extra rows are dropped, so
    every alert is scored exactly once across processes, and the step's replicated output gathers them all."""
    ds = input_pipeline.eval_dataset(source, global_batch=batch_size, process_index=jax.process_index(),
                                     process_count=jax.process_count(), threads=input_pipeline.default_threads())
    out = []
    for b in input_pipeline.as_numpy(ds):
        b.pop("mask")
        b.pop("label")
        out.append(np.asarray(eval_step(state, shard_batch(b, mesh), rng_state)))
    return np.concatenate(out)[: len(source)] if out else np.zeros((0,), np.float32)


def eval_metrics(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> dict[str, float]:
    """Metrics of one split at the end of an epoch: BCE, unweighted by default (Keras does not weight the validation
    loss; v2 passes its pos_weight class `weights`, as upstream's validation does), accuracy at score > 0.5, ROC
    AUC. (The paper's alert- and source-level metrics are `evaluation.metrics`.)"""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    per = bce_numpy(logits, labels)
    if weights is not None:
        per = np.asarray(weights, np.float64)[labels.astype(np.int64)] * per
    loss = float(np.mean(per)) if len(labels) else math.nan
    acc = float(np.mean((logits > 0) == (labels > 0))) if len(labels) else math.nan
    auc = float(roc_auc_score(labels, logits)) if len(np.unique(labels)) == 2 else math.nan
    return {"loss": loss, "accuracy": acc, "auc": auc}


# ----------------------------------------------------------------------------------------------------------------
# Summaries
# ----------------------------------------------------------------------------------------------------------------

METRIC_FIELDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "val_auc", "lr", "alerts_per_s",
                 "epoch_time_s")
SCALARS = ("loss", "accuracy", "val_loss", "val_accuracy", "val_auc", "lr", "alerts_per_s")


def create_writer(workdir: Path):
    """The run's one metric writer: the log and TensorBoard events (WORKDIR/tensorboard) on process 0, the log only
    on the others."""
    from clu import metric_writers

    return metric_writers.create_default_writer(workdir / "tensorboard", just_logging=jax.process_index() != 0)


def write_history(workdir: Path, history: list[dict]) -> None:
    """The whole metric history as WORKDIR/metrics.json and metrics.csv (atomic replace)."""
    with open(workdir / "metrics.csv.tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        w.writeheader()
        for row in history:
            w.writerow({k: row.get(k) for k in METRIC_FIELDS})
    os.replace(workdir / "metrics.csv.tmp", workdir / "metrics.csv")
    (workdir / "metrics.json.tmp").write_text(json.dumps(history, indent=1) + "\n")
    os.replace(workdir / "metrics.json.tmp", workdir / "metrics.json")


def _progress(total: int, epoch: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"epoch {epoch}", unit="batch", leave=False, dynamic_ncols=True)


def _host_model(mdef: ModelDef, state: TrainState):
    model = merge_model(mdef, jax.device_get(state.params), jax.device_get(state.batch_stats), mdef.rng_state)
    model.eval()
    return model


# ----------------------------------------------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Train per `config`, checkpointing into `workdir`; resume automatically from its latest checkpoint.

    Every process of a multi-process run calls this with the same arguments. Returns a summary: best epoch and val
    metrics, epochs run, stop reason, training rate, test metrics."""
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    mesh = make_mesh()
    n_dev = mesh.size
    if config.batch_size % n_dev:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {n_dev} devices of the mesh")
    eval_bs = int(config.get("eval_batch_size", config.batch_size))
    eval_bs = -(-eval_bs // n_dev) * n_dev

    sources = load_sources(config)
    train_src, val_src = sources["train"], sources["val"]
    weights = loss_weights(config, train_src.labels)
    val_weights = weights if config.get("weighted_val_loss", False) else None
    nsteps = input_pipeline.steps_per_epoch(len(train_src), config.batch_size)
    if config.get("max_steps_per_epoch", 0):
        nsteps = min(nsteps, int(config.max_steps_per_epoch))
    if nsteps == 0:
        raise ValueError(f"training split has {len(train_src)} alerts, fewer than one batch ({config.batch_size})")

    tx = make_optimizer(config)
    frozen = frozen_modules(config)
    model = create_model(config.model, int(config.seed))
    initialised = init_from.apply(model, config)  # identical to the fresh model when no init_from* is set
    if frozen and not initialised:
        log.warning("freeze=%r but no init_from* is set: the frozen submodules keep their random initialisation",
                    config.freeze)
    mdef, state = create_train_state(config.model, tx, int(config.seed), model=model)
    del model
    rng_state = replicate(mdef.rng_state, mesh)
    state = replicate(state, mesh)
    eval_modules = frozen if config.get("frozen_eval_mode", True) else ()
    train_step = make_train_step(mdef, tx, weights, mesh, eval_modules=eval_modules)
    eval_step = make_eval_step(mdef, mesh)
    predict = lambda st, src: predict_logits(eval_step, st, rng_state, src, batch_size=eval_bs, mesh=mesh)

    schedule = config.get("lr_schedule", "plateau")
    if schedule not in ("plateau", "warmup_cosine"):
        raise ValueError(f"lr_schedule {schedule!r}: expected 'plateau' or 'warmup_cosine'")
    cosine = WarmupCosine(lr=float(config.learning_rate), num_epochs=int(config.num_epochs),
                          warmup_epochs=int(config.get("warmup_epochs", 0))) if schedule == "warmup_cosine" else None
    plateau = Plateau(lr=float(config.learning_rate), factor=config.reduce_lr_factor,
                      patience=config.reduce_lr_patience, min_lr=config.reduce_lr_min_lr,
                      min_delta=config.reduce_lr_min_delta)
    keep_best = config.get("keep_best", "lowest")
    if keep_best not in ("lowest", "relative"):
        raise ValueError(f"keep_best {keep_best!r}: expected 'lowest' or 'relative'")
    rel_delta = float(config.get("keep_best_min_rel_delta", 0.005)) if keep_best == "relative" else None
    if rel_delta is None:
        stopper = EarlyStopping(patience=config.early_stopping_patience, min_delta=config.early_stopping_min_delta)
    else:
        stopper = RelativeImprovement(patience=config.early_stopping_patience, min_rel_delta=rel_delta)
    history: list[dict] = []
    start_epoch = 0
    stop_reason = "num_epochs"

    mngr = checkpoints.checkpoint_manager(workdir / "checkpoints")
    latest = mngr.latest_step()
    if latest is not None:
        state, meta = checkpoints.restore(mngr, latest, state)
        start_epoch = int(meta["epoch"]) + 1
        plateau = Plateau(**meta["plateau"])
        stopper = type(stopper)(**meta["early_stopping"])
        history = list(meta["history"])
        if meta.get("stopped"):
            stop_reason = meta.get("stop_reason", "early_stopping")
            start_epoch = int(config.num_epochs)  # finished before; nothing to do
        log.info("resumed from %s at epoch %d", workdir / "checkpoints", start_epoch)
    if is_main:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    writer = create_writer(workdir)
    show_bar = is_main and bool(config.get("progress_bar", True))

    for epoch in range(start_epoch, int(config.num_epochs)):
        lr = plateau.lr if cosine is None else cosine.lr_at(epoch)
        state = set_learning_rate(state, lr)
        ds = input_pipeline.train_dataset(
            train_src, global_batch=config.batch_size, seed=int(config.seed), epoch=epoch,
            augment=bool(config.augment), process_index=jax.process_index(), process_count=jax.process_count(),
            threads=input_pipeline.default_threads(), no_second_ps1=float(config.get("no_second_ps1", 0.0)))
        t0 = time.perf_counter()
        bar = _progress(nsteps, epoch, show_bar)
        state, tm = train_epoch(train_step, state, rng_state, ds, nsteps=nsteps, global_batch=config.batch_size,
                                mesh=mesh, bar=bar)
        if bar is not None:
            bar.close()
        train_time = time.perf_counter() - t0
        vm = eval_metrics(predict(state, val_src), val_src.labels, val_weights)
        row = {
            "epoch": epoch, **tm, "val_loss": vm["loss"], "val_accuracy": vm["accuracy"], "val_auc": vm["auc"],
            "lr": lr, "alerts_per_s": nsteps * config.batch_size / train_time,
            "epoch_time_s": time.perf_counter() - t0,
        }
        history.append(row)
        if not math.isfinite(vm["loss"]):
            raise FloatingPointError(f"epoch {epoch}: validation loss is {vm['loss']}; training diverged")
        improved = stopper.improves(vm["loss"])  # v1: ModelCheckpoint(save_best_only=True); v2: by > 0.5%
        stop = stopper.update(epoch, vm["loss"])
        if cosine is None:
            plateau.update(vm["loss"])
        if stop:
            stop_reason = "early_stopping"
        meta = {"epoch": epoch, "plateau": dataclasses.asdict(plateau),
                "early_stopping": dataclasses.asdict(stopper), "history": history, "stopped": stop,
                "stop_reason": stop_reason, "class_weights": weights.tolist()}
        checkpoints.save(mngr, epoch, state, meta)
        checkpoints.prune(mngr, history, rel_delta)
        writer.write_scalars(epoch, {k: row[k] for k in SCALARS})
        writer.flush()
        if is_main:
            write_history(workdir, history)
            if improved:
                checkpoints.export_best(_host_model(mdef, state), config, workdir,
                                        {"epoch": epoch, "val_loss": vm["loss"], "val_accuracy": vm["accuracy"],
                                         "val_auc": vm["auc"], **initialised})
        if stop:
            break

    writer.close()
    if not history:
        raise RuntimeError("no epoch was trained (num_epochs is 0?)")

    # The shipped model: the best-val-loss checkpoint, re-exported from orbax (atomic) so that a kill during an
    # earlier export can never leave a broken best/.
    best_epoch = checkpoints.best_epoch(history, rel_delta)
    best_state, _ = checkpoints.restore(mngr, best_epoch, state)
    best_row = next(r for r in history if r["epoch"] == best_epoch)
    summary = {
        "workdir": str(workdir), "best_epoch": best_epoch, "best_val_loss": best_row["val_loss"],
        "best_val_accuracy": best_row["val_accuracy"], "best_val_auc": best_row["val_auc"],
        "epochs_run": len(history), "stop_reason": stop_reason, "class_weights": weights.tolist(),
        "train_alerts": len(train_src), "val_alerts": len(val_src), "devices": n_dev,
        "processes": jax.process_count(),
        "alerts_per_s_median": float(np.median([r["alerts_per_s"] for r in history])),
    }
    if "test" in sources and config.get("evaluate_test", True):
        tm = eval_metrics(predict(best_state, sources["test"]), sources["test"].labels, val_weights)
        summary.update({"test_loss": tm["loss"], "test_accuracy": tm["accuracy"], "test_auc": tm["auc"],
                        "test_alerts": len(sources["test"])})
    if is_main:
        info = {"epoch": best_epoch, "val_loss": best_row["val_loss"], "val_accuracy": best_row["val_accuracy"],
                "val_auc": best_row["val_auc"], **initialised}
        if "test_auc" in summary:
            info.update(test_auc=summary["test_auc"], test_accuracy=summary["test_accuracy"])
        checkpoints.export_best(_host_model(mdef, best_state), config, workdir, info)
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    mngr.close()
    return summary
