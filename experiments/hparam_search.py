"""Random hyperparameter search over the ranges of Tables 2 and 3 of the paper.

    python experiments/hparam_search.py --config=experiments/configs/prod.py --config.data_dir=DIR \
        --workdir=runs/search --num_trials=50
    python experiments/hparam_search.py --config=experiments/configs/demo.py --workdir=demo_out/search \
        --num_trials=4 --config.num_epochs=2      # a smoke run in minutes

Trial i draws its hyperparameters from `numpy.random.default_rng([seed, i])` (so trials are reproducible and a
search can be extended or resumed: finished trials are not retrained), trains into WORKDIR/trial_XXX/, and is
ranked by --metric (default: the best validation loss, what the paper's training selects on). Writes
WORKDIR/results.{csv,md,json} (one row per trial, best first) and the best trial's full config as
WORKDIR/best_config.json and WORKDIR/best_config.py, which `btsbot-train --config=WORKDIR/best_config.py` takes.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
from absl import app, flags, logging

FLAGS = flags.FLAGS


# Tables 2 and 3 (Rehemtulla et al. 2024): (kind, low, high) or ("choice", values)
SEARCH_SPACE = {
    "model.conv1_channels": ("choice", (8, 16, 32, 64, 128)),
    "model.conv2_channels": ("choice", (8, 16, 32, 64, 128)),
    "model.conv_kernel": ("choice", (3, 5, 7)),
    "model.conv_dropout1": ("uniform", 0.1, 0.8),
    "model.conv_dropout2": ("uniform", 0.1, 0.8),
    "model.meta_fc1_neurons": ("choice", (32, 64, 128, 256)),
    "model.meta_fc2_neurons": ("choice", (32, 64, 128, 256)),
    "model.meta_dropout": ("uniform", 0.1, 0.8),
    "model.comb_fc_neurons": ("choice", (8, 16, 32, 64, 128)),
    "model.comb_dropout": ("uniform", 0.1, 0.8),
    "learning_rate": ("loguniform", 5e-6, 1e-2),
    "beta1": ("uniform", 0.81, 0.999),
    "beta2": ("uniform", 0.9, 0.9999),
    "batch_size": ("choice", (8, 16, 32, 64)),
}


def sample_trial(seed: int, trial: int) -> dict:
    """The hyperparameters of one trial: a pure function of (seed, trial)."""
    rng = np.random.default_rng([seed, trial])
    out = {}
    for name, spec in SEARCH_SPACE.items():
        kind = spec[0]
        if kind == "choice":
            v = spec[1][int(rng.integers(len(spec[1])))]
        elif kind == "uniform":
            v = float(rng.uniform(spec[1], spec[2]))
        elif kind == "loguniform":
            v = float(math.exp(rng.uniform(math.log(spec[1]), math.log(spec[2]))))
        else:  # pragma: no cover
            raise ValueError(kind)
        out[name] = v
    return out


def apply(config, params: dict):
    cfg = config.copy_and_resolve_references()
    with cfg.unlocked():
        for name, v in params.items():
            node = cfg
            *path, leaf = name.split(".")
            for p in path:
                node = node[p]
            node[leaf] = type(node[leaf])(v) if node[leaf] is not None else v
        # the batch must split over the devices
        import jax

        n = jax.device_count()
        cfg.batch_size = max(n, cfg.batch_size // n * n)
    return cfg


BEST_CONFIG_PY = '''"""Best trial of experiments/hparam_search.py ({metric} = {value}); train it with
    btsbot-train --config={path} --workdir=DIR
"""

import json

import ml_collections

_CONFIG = json.loads(r"""{json}""")


def get_config():
    return ml_collections.ConfigDict(_CONFIG)
'''


def run_search(config, workdir, num_trials: int, seed: int, metric: str) -> list[dict]:
    from results import write_results

    from btsbot_jax.training.train import train_and_evaluate

    out = Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    lower_better = metric.endswith("loss")
    rows = []
    configs = {}
    for trial in range(num_trials):
        params = sample_trial(seed, trial)
        cfg = apply(config, params)
        wd = out / f"trial_{trial:03d}"
        t0 = time.time()
        print(f"=== trial {trial}: {json.dumps(params)}", flush=True)
        try:
            summary = train_and_evaluate(cfg, wd)
            status = "ok"
        except FloatingPointError as e:  # a diverging trial is a result, not a crash of the search
            summary, status = {}, f"diverged: {e}"
        row = {"trial": trial, **params, "status": status, "best_epoch": summary.get("best_epoch"),
               "best_val_loss": summary.get("best_val_loss", math.nan),
               "best_val_auc": summary.get("best_val_auc", math.nan), "test_auc": summary.get("test_auc", math.nan),
               "wall_s": round(time.time() - t0, 1)}
        rows.append(row)
        configs[trial] = cfg
        ranked = _rank(rows, metric, lower_better)
        write_results(out, ranked, list(ranked[0].keys()))
    ranked = _rank(rows, metric, lower_better)
    best = next((r for r in ranked if r["status"] == "ok"), None)
    if best is not None:
        cfg = configs[best["trial"]]
        text = cfg.to_json_best_effort(indent=2)
        (out / "best_config.json").write_text(text + "\n")
        (out / "best_config.py").write_text(BEST_CONFIG_PY.format(metric=metric, value=best[metric], json=text,
                                                                  path=out / "best_config.py"))
    return ranked


def _rank(rows, metric, lower_better):
    def key(r):
        v = r.get(metric)
        bad = v is None or (isinstance(v, float) and math.isnan(v))
        return (bad, (v if lower_better else -v) if not bad else 0.0, r["trial"])

    return sorted(rows, key=key)


def _main(argv):
    del argv
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs each checkpoint at INFO
    ranked = run_search(FLAGS.config, FLAGS.workdir, FLAGS.num_trials, FLAGS.seed, FLAGS.metric)
    from results import markdown_table

    cols = ["trial", "status", FLAGS.metric, "best_val_auc", "learning_rate", "batch_size", "model.conv1_channels",
            "model.conv_kernel"]
    print(markdown_table(ranked, list(dict.fromkeys(cols))))
    print(f"results: {Path(FLAGS.workdir) / 'results.csv'}; best config: {Path(FLAGS.workdir) / 'best_config.py'}")


def _define_flags():
    """Flags exist only when this file runs as a script, so importing it (tests) defines none."""
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", "experiments/configs/prod.py", "Base training config.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Output directory (one workdir per trial, the results table, best config).")
    flags.DEFINE_integer("num_trials", 20, "Number of random trials.")
    flags.DEFINE_integer("seed", 0, "Seed of the search (trial i uses default_rng([seed, i])).")
    flags.DEFINE_enum("metric", "best_val_loss", ["best_val_loss", "best_val_auc", "test_auc"],
                      "Ranking metric (loss: lower is better; AUC: higher is better).")


if __name__ == "__main__":
    _define_flags()
    flags.mark_flags_as_required(["workdir"])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(_main)
