"""The paper's ablation: the multimodal model against its single-modality halves, on the same data and recipe.

    python experiments/ablation.py --config=experiments/configs/prod.py --config.data_dir=DIR --workdir=runs/ablation
    python experiments/ablation.py --config=experiments/configs/demo.py --workdir=demo_out/ablation   # minutes

Trains `mm_cnn`, `um_cnn` and `um_nn` (only `model.architecture` changes; every other field of the config is
shared), each into WORKDIR/<arch>/ (resumable; a finished run is not retrained), then writes WORKDIR/results.csv
and WORKDIR/results.md: parameters, best epoch, validation and test loss/accuracy/ROC AUC, training rate.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from absl import app, flags, logging

FLAGS = flags.FLAGS

COLUMNS = ("architecture", "seed", "parameters", "best_epoch", "epochs_run", "best_val_loss", "best_val_accuracy",
           "best_val_auc", "test_loss", "test_accuracy", "test_auc", "alerts_per_s_median", "wall_s")


def run_ablation(config, workdir: str | os.PathLike, architectures, seeds) -> list[dict]:
    from results import write_results

    from btsbot_jax.models import count_parameters, create_model
    from btsbot_jax.training.train import train_and_evaluate

    out = Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for arch in architectures:
        for seed in seeds:
            cfg = config.copy_and_resolve_references()
            with cfg.unlocked():
                cfg.model.architecture = arch
                cfg.seed = int(seed)
                cfg.model_version = f"{cfg.get('model_version', 'dev')}-{arch}"
            wd = out / (arch if len(seeds) == 1 else f"{arch}_seed{seed}")
            t0 = time.time()
            print(f"=== {arch} (seed {seed}) -> {wd}", flush=True)
            summary = train_and_evaluate(cfg, wd)
            row = {k: summary.get(k) for k in COLUMNS}
            row.update(architecture=arch, seed=int(seed), parameters=count_parameters(create_model(cfg.model))[0],
                       wall_s=round(time.time() - t0, 1))
            rows.append(row)
            write_results(out, rows, COLUMNS)
    return rows


def _main(argv):
    del argv
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs each checkpoint at INFO
    seeds = FLAGS.seeds or [FLAGS.config.seed]
    rows = run_ablation(FLAGS.config, FLAGS.workdir, FLAGS.architectures, seeds)
    from results import markdown_table

    print(markdown_table(rows, COLUMNS))
    print(f"results: {Path(FLAGS.workdir) / 'results.csv'} (and .md, .json)")


def _define_flags():
    """Flags exist only when this file runs as a script, so importing it (tests) defines none."""
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", "experiments/configs/prod.py", "Base training config.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Output directory: one training workdir per architecture plus the table.")
    flags.DEFINE_list("architectures", ["mm_cnn", "um_cnn", "um_nn"], "Architectures to compare.")
    flags.DEFINE_list("seeds", [], "Seeds to repeat each architecture with (default: the config's seed).")


if __name__ == "__main__":
    _define_flags()
    flags.mark_flags_as_required(["workdir"])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(_main)
