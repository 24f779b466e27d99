"""`btsbot-score [--checkpoint=CKPT] --input=PATH[,PATH...] --output=scores.{csv,parquet}`: alert packets -> scores.

Without --checkpoint the published v1.0.1 model shipped inside the package is used.

Inputs: avro files, folders of them (recursive), .tar/.tar.gz archives (ZTF's nightly tarballs) and parquet dumps.
Every record is scored, rejected with its reason (--rejected table), or counted as a duplicate candid; a summary
line says how many of each. Exit status 0 unless an input path could not be read at all (then 1; what could be read
is still scored and written), 2 for bad arguments or an unusable checkpoint.
"""

import json
import sys
from pathlib import Path

from absl import flags

from btsbot_jax.cli import UsageError, run

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", "v1.0.1", "Model directory, training workdir, export directory, or the name of a "
                    "packaged model (default: the published v1.0.1 weights shipped with btsbot-jax).")
flags.DEFINE_list("input", None, "Comma-separated avro files, folders, .tar/.tar.gz or parquet files.")
flags.DEFINE_string("output", None, "Scores table: .csv or .parquet.")
flags.DEFINE_string("rejected", None, "Rejected-alerts table (.csv/.parquet); default: <output stem>_rejected<suffix>.")
flags.DEFINE_string("summary_json", None, "Optionally also write the run summary as JSON here.")
flags.DEFINE_integer("batch_size", 256, "Alerts per model call.", lower_bound=1)
flags.DEFINE_integer("num_shards", 1, "Split the input records into this many shards (one per machine).",
                     lower_bound=1)
flags.DEFINE_integer("shard_index", 0, "Which shard this run scores (0-based).", lower_bound=0)
flags.DEFINE_integer("workers", 1, "Decode in this many processes (the model runs once, in the main process).",
                     lower_bound=1)
flags.DEFINE_bool("use_rb", False, "Use candidate.rb where drb is null (old packets); off: such alerts are rejected.")
flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")


def default_rejected_path(output: str) -> Path:
    p = Path(output)
    return p.with_name(f"{p.stem}_rejected{p.suffix}")


def _main(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {argv[1:]} (give inputs as --input=PATH[,PATH...])")
    if FLAGS.shard_index >= FLAGS.num_shards:
        raise UsageError(f"--shard_index={FLAGS.shard_index} must be < --num_shards={FLAGS.num_shards}")
    inputs = [p for p in (FLAGS.input or []) if p.strip()]
    if not inputs:
        raise UsageError("--input is empty")
    rejected_path = FLAGS.rejected or str(default_rejected_path(FLAGS.output))
    from btsbot_jax.serve.batch import check_scorer_columns, check_table_path, format_summary, score_paths, write_table

    check_table_path(FLAGS.output)
    check_table_path(rejected_path)
    from btsbot_jax.inference.deployment import ColumnOrderError
    from btsbot_jax.inference.scorer import CheckpointError, load_scorer  # imports JAX: after the cheap checks

    try:
        scorer = load_scorer(FLAGS.checkpoint)
    except (CheckpointError, OSError, ValueError) as e:
        raise UsageError(f"cannot load --checkpoint={FLAGS.checkpoint}: {e}") from e
    try:  # the column order the model states (inside the artifact for exports) must be the one ingestion builds
        check_scorer_columns(scorer)
    except ColumnOrderError as e:
        raise UsageError(f"refusing --checkpoint={FLAGS.checkpoint}: {e}") from e

    result = score_paths(scorer, inputs, batch_size=FLAGS.batch_size, num_shards=FLAGS.num_shards,
                         shard_index=FLAGS.shard_index, progress=FLAGS.progress, use_rb=FLAGS.use_rb,
                         workers=FLAGS.workers)
    write_table(result.scores, FLAGS.output)
    write_table(result.rejected, rejected_path)
    s = result.summary
    if FLAGS.summary_json:
        Path(FLAGS.summary_json).parent.mkdir(parents=True, exist_ok=True)
        Path(FLAGS.summary_json).write_text(json.dumps(s, indent=2, default=str) + "\n")
    for line in s.get("unreadable_paths", []):
        print(f"btsbot-score: cannot read input {line}", file=sys.stderr)
    if s["records_read"] == 0 and not s.get("unreadable_paths"):
        print(f"btsbot-score: warning: nothing to score: no alert files under {', '.join(inputs)}", file=sys.stderr)
    print(f"wrote {len(result.scores)} scores to {FLAGS.output} and {len(result.rejected)} rejected to "
          f"{rejected_path}")
    print(format_summary(s))
    return 1 if s.get("unreadable_paths") else 0


def main():
    run(_main, required=["input", "output"],
        paths=["checkpoint", "input", "output", "rejected", "summary_json"])


if __name__ == "__main__":
    main()
