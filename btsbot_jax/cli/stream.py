"""`btsbot-stream`: score ZTF/Rubin avro alerts live from Kafka, at-least-once, with dead letters.

    btsbot-stream --bootstrap_servers=HOST:PORT --topics=ztf_20231012_programid1 --group_id=btsbot \\
        [--checkpoint=CKPT] --output_topic=btsbot_scores --dead_letter_topic=btsbot_dead_letters \\
        [--output=scores.parquet] [--max_batch=256 --max_wait_ms=500] [--max_alerts=N] [--idle_timeout_s=S]

Run more copies with the same --group_id to split the partitions. SIGTERM/SIGINT finish the current batch, commit
it and exit 0 with a JSON summary on stdout; a second signal aborts at once (the batch is then re-delivered).
Exit status: 0 stopped cleanly, 1 delivery/commit failure (nothing committed past what was delivered), 2 bad flags.
"""

import json
import logging
import signal

from absl import flags

from btsbot_jax import __version__
from btsbot_jax.cli import UsageError, run

FLAGS = flags.FLAGS
flags.DEFINE_string("bootstrap_servers", None, "Kafka bootstrap servers, HOST:PORT[,HOST:PORT...].")
flags.DEFINE_list("topics", None, "Input topics (avro alert packets), comma-separated; a name starting with ^ is a "
                  "regex subscription, e.g. ^ztf_.*_programid1$.")
flags.DEFINE_string("group_id", None, "Consumer group id; processes with the same id share the partitions.")
flags.DEFINE_string("checkpoint", "v1.0.1", "Model directory, training workdir, export directory, or a packaged "
                    "model name (default: the published v1.0.1 weights shipped with btsbot-jax).")
flags.DEFINE_string("output_topic", None, "Topic for the JSON results (one message per alert, keyed by candid).")
flags.DEFINE_string("output", None, "Also write results to this parquet dataset directory (one part file per batch; "
                    "dead letters to X.rejected.parquet beside it).")
flags.DEFINE_string("dead_letter_topic", None, "Topic for alerts that cannot be scored: original bytes as the value, "
                    "reason in the headers.")
flags.DEFINE_integer("max_batch", 256, "Most messages per micro-batch.")
flags.DEFINE_integer("max_wait_ms", 500, "Longest wait to fill a micro-batch.")
flags.DEFINE_integer("max_alerts", None, "Stop after this many messages (tests, backfills).")
flags.DEFINE_float("idle_timeout_s", None, "Stop after this many seconds without a message (drain a topic).")
flags.DEFINE_float("log_every_s", 10.0, "Seconds between progress log lines.")
flags.DEFINE_float("flush_timeout_s", 60.0, "Longest wait for the broker to acknowledge a batch's results.")
flags.DEFINE_boolean("pipeline", True, "Decode/prepare the next batch while the model scores this one.")
flags.DEFINE_boolean("use_rb", False, "Use candidate.rb instead of drb for the drb feature (pre-2020 alerts).")
flags.DEFINE_boolean("create_topics", True, "Create missing output/dead-letter topics at start.")
flags.DEFINE_integer("output_partitions", 1, "Partitions of the output topics this command creates.")
flags.DEFINE_multi_string("consumer_config", [], "Extra librdkafka consumer setting key=value (repeatable), e.g. "
                          "session.timeout.ms=6000, security.protocol=SASL_SSL.")
flags.DEFINE_multi_string("producer_config", [], "Extra librdkafka producer setting key=value (repeatable).")
flags.DEFINE_string("consumer_config_file", None, "File of librdkafka consumer settings, key=value per line (# "
                    "comments), read before --consumer_config. Keeps secrets off the command line (ps shows it); a "
                    "value @PATH or env:VAR in either is read from that file or environment variable.")
flags.DEFINE_string("producer_config_file", None, "File of librdkafka producer settings (as --consumer_config_file).")


def _settings(path: str | None, pairs: list[str]) -> dict:
    """Settings file first, command-line pairs over it; values may be @PATH or env:VAR (never logged unredacted)."""
    from btsbot_jax.serve.kafka_config import parse_config_pairs, read_config_file

    conf = read_config_file(path) if path else {}
    conf.update(parse_config_pairs(pairs))
    return conf


def _main(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {argv[1:]}")
    from btsbot_jax.serve.stream import StreamConfig, StreamError, StreamScorer, warmup

    log = logging.getLogger("btsbot_jax.serve.stream")
    try:
        cfg = StreamConfig(
            bootstrap_servers=FLAGS.bootstrap_servers, topics=FLAGS.topics, group_id=FLAGS.group_id,
            output_topic=FLAGS.output_topic, dead_letter_topic=FLAGS.dead_letter_topic, output_path=FLAGS.output,
            max_batch=FLAGS.max_batch, max_wait_ms=FLAGS.max_wait_ms, max_alerts=FLAGS.max_alerts,
            idle_timeout_s=FLAGS.idle_timeout_s, log_every_s=FLAGS.log_every_s,
            flush_timeout_s=FLAGS.flush_timeout_s, use_rb=FLAGS.use_rb, pipeline=FLAGS.pipeline,
            create_topics=FLAGS.create_topics, output_partitions=FLAGS.output_partitions,
            consumer_config=_settings(FLAGS.consumer_config_file, FLAGS.consumer_config),
            producer_config=_settings(FLAGS.producer_config_file, FLAGS.producer_config))
        cfg.validate()
    except ValueError as e:
        raise UsageError(str(e)) from e

    from btsbot_jax.inference.scorer import CheckpointError, load_scorer

    log.setLevel(logging.INFO)  # our progress lines stay on while `cli.run` keeps the libraries' INFO chatter off
    from btsbot_jax.serve.batch import check_scorer_columns

    try:
        scorer = load_scorer(FLAGS.checkpoint)
        check_scorer_columns(scorer)  # the model's column order (from the artifact) must be the ingestion's
    except (CheckpointError, OSError, ValueError) as e:
        raise UsageError(f"cannot load --checkpoint={FLAGS.checkpoint}: {e}") from e
    warmup(scorer, cfg.max_batch)  # compile before joining the group, so the first batch is not slow
    stream = StreamScorer(scorer, cfg, logger=log)

    def on_signal(signum, _frame):
        name = signal.Signals(signum).name
        if stream.stopping:  # second signal: abort now; the uncommitted batch is re-delivered
            log.warning("%s again: aborting without finishing the batch", name)
            raise KeyboardInterrupt
        log.info("%s: finishing the current batch, committing, exiting", name)
        stream.stop(f"{name} received")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        summary = stream.run()
    except StreamError as e:
        log.error("%s", e)
        print(json.dumps({"error": str(e), "btsbot_jax_version": __version__, **stream.stats.summary()},
                         sort_keys=True), flush=True)
        return 1
    print(json.dumps({"model_version": stream.model_version, "btsbot_jax_version": __version__, **summary},
                     sort_keys=True), flush=True)
    return 0


def main():
    run(_main, required=["bootstrap_servers", "topics", "group_id"], paths=["checkpoint", "output"])


if __name__ == "__main__":
    main()
