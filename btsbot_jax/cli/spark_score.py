"""`btsbot-spark-score --checkpoint=CKPT --input=PATH[,PATH...] --output=DIR [--master=local[2]]`: score an alert
archive on Apache Spark (needs the `[spark]` extra).

Inputs as for btsbot-score (avro files, folders, .tar/.tar.gz, parquet), read through Spark's binaryFile source, so
they may be local paths, hdfs:// or s3a:// URIs that every executor can read. Writes DIR/scores (parquet dataset,
partitioned by --partition_by, btsbot-score's columns), DIR/rejected (parquet dataset: candid, objectId, source,
reason, kind) and DIR/summary.json; records read = scored + rejected + duplicates (by candid, over the whole job).
Reruns overwrite DIR/scores and DIR/rejected. Runs under spark-submit too (then --master may be left out). Exit
status 0, 1 if an input path could not be listed (the rest is still scored), 2 for bad arguments or checkpoint.
"""

import json
import sys

from absl import flags

from btsbot_jax.cli import run

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Model directory or export directory, readable at the same path on every "
                    "executor (a shared file system, or shipped with spark-submit --archives).")
flags.DEFINE_list("input", None, "Comma-separated avro files, folders, .tar/.tar.gz or parquet files (paths/URIs).")
flags.DEFINE_string("output", None, "Output folder (local path or URI): scores/, rejected/, summary.json.")
flags.DEFINE_string("master", None, "Spark master, e.g. local[2]; default: spark-submit's, else Spark's default.")
flags.DEFINE_integer("batch_size", 256, "Alerts per model call.", lower_bound=1)
flags.DEFINE_list("partition_by", ["night"], "Columns partitioning the scores dataset (night: UT date YYYYMMDD of "
                  "candidate.jd); empty for none.")
flags.DEFINE_bool("use_rb", False, "Use candidate.rb where drb is null (old packets); off: such alerts are rejected.")
flags.DEFINE_list("spark_conf", [], "Extra Spark settings, key=value,key=value.")


def _main(argv):
    del argv
    from btsbot_jax.models.model_dir import CheckpointError, read_model_card, resolve_checkpoint
    from btsbot_jax.serve.batch import format_summary

    inputs = [p for p in (FLAGS.input or []) if p.strip()]
    if not inputs:
        print("btsbot-spark-score: --input is empty", file=sys.stderr)
        return 2
    conf = {}
    for kv in FLAGS.spark_conf:
        k, sep, v = kv.partition("=")
        if not sep or not k.strip():
            print(f"btsbot-spark-score: --spark_conf entry {kv!r} is not key=value", file=sys.stderr)
            return 2
        conf[k.strip()] = v.strip()
    bad = [c for c in FLAGS.partition_by if c not in ("night", "fid", "model_version")]
    if bad:
        print(f"btsbot-spark-score: cannot partition by {bad} (night, fid or model_version)", file=sys.stderr)
        return 2
    checkpoint = FLAGS.checkpoint
    if "://" not in checkpoint:  # a local path: check it here, before any executor starts
        try:
            model_dir = resolve_checkpoint(checkpoint)
            read_model_card(model_dir)
            checkpoint = str(model_dir.resolve())
        except (CheckpointError, OSError, ValueError) as e:
            print(f"btsbot-spark-score: cannot load checkpoint {FLAGS.checkpoint}: {e}", file=sys.stderr)
            return 2

    from btsbot_jax.serve.spark import score_archive, spark_session

    spark = spark_session(FLAGS.master, conf=conf)
    try:
        s = score_archive(spark, inputs, checkpoint, FLAGS.output, batch_size=FLAGS.batch_size, use_rb=FLAGS.use_rb,
                          partition_by=FLAGS.partition_by)
        _write_summary(spark, FLAGS.output, s)
    finally:
        spark.stop()
    for line in s.get("unreadable_paths", []):
        print(f"btsbot-spark-score: cannot read input {line}", file=sys.stderr)
    print(f"wrote {s['scored']} scores to {s['output']['scores']} and {s['rejected']} rejected to "
          f"{s['output']['rejected']}")
    print(format_summary(s) + f" [spark {s['master']}]")
    return 1 if s.get("unreadable_paths") else 0


def _write_summary(spark, output: str, summary: dict) -> None:
    """OUTPUT/summary.json through Hadoop's file system, so a URI output (hdfs://, s3a://) works as a local one."""
    text = json.dumps(summary, indent=2, default=str) + "\n"
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(output.rstrip("/") + "/summary.json")
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    out = fs.create(path, True)
    try:
        out.write(bytearray(text.encode()))
    finally:
        out.close()


def main():
    run(lambda argv: sys.exit(_main(argv)), required=["checkpoint", "input", "output"])


if __name__ == "__main__":
    main()
