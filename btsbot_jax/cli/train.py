"""`btsbot-train --config=experiments/configs/prod.py --workdir=DIR [--config.batch_size=32 ...]`.

Trains per an ml_collections config file (any field overridable from the command line, e.g.
`--config.data_dir=DIR --config.num_epochs=50`), checkpointing into --workdir and resuming from it when it already
holds a checkpoint. The best model ends up in WORKDIR/best/ (loadable with `btsbot_jax.load_scorer(WORKDIR)`).
Each epoch's metrics go to the log (shown unless --verbosity says otherwise) and to TensorBoard (WORKDIR/tensorboard).

Several hosts (docs/multi_host.md): start the same command on every host, with the same --workdir on a shared file
system. Plain hosts: --coordinator_address=HOST0:PORT --num_processes=N --process_id=I (I = 0..N-1). TPU pod slice
or SLURM: --distributed, and jax.distributed.initialize() finds the cluster itself. Each process reads its slice of
every batch; process 0 alone writes metrics.json/csv, TensorBoard events, summary.json and best/.
"""

import json
import os

from absl import flags, logging
from ml_collections import config_flags

from btsbot_jax.cli import UsageError, expand_path, run

PATH_FIELDS = ("data_dir", "tfds_data_dir")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None,
                                "Training config: a packaged name (prod, demo, um_cnn, um_nn; v2: convnext_pico, "
                                "mm_convnext_pico, um_nn_v2, frozen_fusion, maxvit_tiny) or a get_config() file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, TensorBoard events and best/.")
flags.DEFINE_bool("distributed", False,
                  "Multi-host: call jax.distributed.initialize() with the cluster auto-detected (TPU pod, SLURM).")
flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0 (same on every process).")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index, 0..num_processes-1.")


class _EpochLines(logging.logging.Filter):
    """At the default verbosity, let INFO through only for the per-epoch metrics (clu's LoggingWriter) and this
    package's own messages; the libraries' INFO chatter (orbax logs every checkpoint) stays hidden."""

    def filter(self, record):
        return (record.levelno >= logging.logging.WARNING or record.module == "logging_writer"
                or record.name.startswith("btsbot_jax"))


def _main(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {argv[1:]}")
    import jax

    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.INFO)
        logging.get_absl_handler().addFilter(_EpochLines())
    if FLAGS.coordinator_address or FLAGS.num_processes or FLAGS.distributed:
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                   num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
    from btsbot_jax.training.train import train_and_evaluate

    logging.info("JAX process %d/%d, local devices %s", jax.process_index(), jax.process_count(),
                 jax.local_devices())
    config = FLAGS.config
    for field in PATH_FIELDS:  # `~` and $VARS in path fields of the config (and their overrides)
        if isinstance(config.get(field), str):
            config[field] = expand_path(config[field])
    summary = train_and_evaluate(config, FLAGS.workdir)
    if jax.process_index() == 0:
        print(json.dumps(summary, indent=2))
        print(f"best model: {os.path.join(summary['workdir'], 'best')}")


def _packaged_config_paths(argv: list[str]) -> list[str]:
    """`--config=prod` (a packaged config's name) -> the path of btsbot_jax/configs/prod.py; a path gets `~` and
    $VARS expanded and must exist (UsageError otherwise, before the slow imports)."""
    from btsbot_jax import configs

    out = []
    for a in argv:
        if a.startswith("--config="):
            name, sep, arg = a[len("--config="):].partition(":")
            if name in configs.NAMES and not os.path.exists(name):
                a = f"--config={configs.CONFIG_DIR / (name + '.py')}{sep}{arg}"
            else:
                path = expand_path(name)
                if not os.path.isfile(path):
                    raise UsageError(f"--config={name}: no such config file (give a get_config() .py file or one "
                                     f"of the packaged configs: {', '.join(configs.NAMES)})")
                a = f"--config={path}{sep}{arg}"
        out.append(a)
    return out


def main():
    import sys

    try:
        sys.argv = _packaged_config_paths(sys.argv)
    except UsageError as e:
        sys.stderr.write(f"btsbot-train: {e}\n")
        sys.exit(e.code)
    run(_main, required=["config", "workdir"], paths=["workdir"])


if __name__ == "__main__":
    main()
