"""`btsbot-evaluate`: the paper's evaluation as one command.

    btsbot-evaluate --checkpoint=CKPT --data=DIR_OR_FILES --split=test --out=REPORT_DIR
    btsbot-evaluate --scores=FILE --out=REPORT_DIR

CKPT is a model directory, a training workdir (its best checkpoint; its metrics.csv gives the training curves) or
an export directory: whatever `load_scorer` accepts. DIR_OR_FILES is a directory in the training-set format or
comma-separated `{split}_cand_{version}_N{n}.csv` files. FILE is a CSV/parquet table of objectId, jd, magpsf, label,
score (+ save_jd, trigger_jd), e.g. another model's or a scanner's output.
"""

import os

from absl import flags

from btsbot_jax.cli import UsageError, expand_path, run

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Model dir, training workdir (uses best/) or export dir to score --data.")
flags.DEFINE_string("data", None, "Training-set format directory, or comma-separated {split}_cand_*_N*.csv files.")
flags.DEFINE_string("split", "test", "Split to evaluate when --data is a directory.")
flags.DEFINE_string("data_version", None, "Dataset version in the file names (e.g. v10) when several are present.")
flags.DEFINE_integer("n_max", None, "N_max in the file names (e.g. 100) when several are present.")
flags.DEFINE_string("scores", None, "Existing scores table (CSV or parquet) to evaluate instead of a checkpoint.")
flags.DEFINE_string("out", None, "Report directory (report.json, sources.csv, rejected.csv, figures).")
flags.DEFINE_float("threshold", 0.5, "Alert-level decision: score > threshold.")
# = btsbot_jax.evaluation.policies.DEFAULT_POLICIES (written out so that --help does not import numpy/pandas)
flags.DEFINE_list("policies", ["bts_p1", "bts_p2", "prod_p1", "prod_p2"],
                  "Source-level policies to evaluate (registered names). Default: the v1 paper's bts_p1, bts_p2 and "
                  "BTSbot v2's production prod_p1, prod_p2; e.g. --policies=bts_p1,bts_p2 for the v1 paper's only.")
flags.DEFINE_multi_string("policy_module", [], "Module name or .py file to import first; it registers extra "
                                               "policies with btsbot_jax.evaluation.policies.register_policy.")
flags.DEFINE_integer("min_alerts", 2, "Sources need at least this many alerts to be evaluated (the paper: 2).")
flags.DEFINE_string("training_metrics", None, "metrics.csv of a training run (default: the checkpoint's workdir).")
flags.DEFINE_integer("batch_size", 4096, "Alerts read from the triplet memory map per scoring step.")
flags.DEFINE_bool("figures", True, "Write the PNG figures.")
flags.DEFINE_bool("progress", True, "Show a progress bar while scoring.")


def _main(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {argv[1:]}")
    if (FLAGS.checkpoint is None) == (FLAGS.scores is None):
        raise UsageError("give exactly one of --checkpoint (with --data) or --scores")
    if FLAGS.checkpoint is not None and not FLAGS.data:
        raise UsageError("--checkpoint needs --data (a training-set directory or cand CSV files)")
    if FLAGS.scores is not None and FLAGS.data:
        raise UsageError("--data is only used with --checkpoint")
    if not 0.0 < FLAGS.threshold < 1.0:
        raise UsageError(f"--threshold={FLAGS.threshold} must be between 0 and 1 (exclusive): scores are "
                         "probabilities and an alert counts as bright when score > threshold")
    if FLAGS.min_alerts < 1:
        raise UsageError(f"--min_alerts={FLAGS.min_alerts} must be >= 1")

    from btsbot_jax.evaluation.policies import load_policy_module
    from btsbot_jax.evaluation.report import (
        evaluate_dataset,
        evaluate_scores,
        read_scores_table,
        summary_lines,
        write_report,
    )

    kwargs = dict(policies=FLAGS.policies, threshold=FLAGS.threshold, min_alerts=FLAGS.min_alerts)
    for mod in FLAGS.policy_module:
        load_policy_module(mod)
    if FLAGS.scores is not None:
        ev = evaluate_scores(read_scores_table(FLAGS.scores),
                             input_info={"mode": "scores", "scores": os.path.abspath(FLAGS.scores)}, **kwargs)
    else:
        data = ",".join(expand_path(p) for p in FLAGS.data.split(","))
        ev = evaluate_dataset(FLAGS.checkpoint, data, FLAGS.split, version=FLAGS.data_version,
                              n_max=FLAGS.n_max, batch_size=FLAGS.batch_size, progress=FLAGS.progress, **kwargs)
    files = write_report(ev, FLAGS.out, training_metrics=FLAGS.training_metrics, figures=FLAGS.figures)
    for line in summary_lines(ev.report):
        print(line)
    print(f"report: {files['report']}")
    for name, path in files.items():
        if name != "report":
            print(f"  {name}: {path}")
    for name, why in ev.report.get("figures_skipped", {}).items():
        print(f"  (no {name} figure: {why})")
    return 0


def main():
    run(_main, required=["out"], paths=["checkpoint", "scores", "out", "training_metrics", "policy_module"])


if __name__ == "__main__":
    main()
