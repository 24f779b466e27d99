"""`btsbot-simulate --num_sources=N --seed=S --out=DIR`: a mock ZTF survey with labelled alert packets.

Writes into DIR:
- `alerts/sim_NNNNN.avro`: the alert packets (ZTF avro layout, gzipped-FITS cutouts), time-ordered per file;
- `truth.csv`: one row per source (objectId, set trues/vars/dims/rejects, label, sub-type, peak magnitudes, host);
- `alerts.parquet`: one row per alert (candidate fields + the 25 model features as the ingestion code computes
  them + set/label/sub-type, and the avro file it is in);
- `{train,val,test}_cand_{version}_N{n_max}.csv` + `..._triplets_...npy`: the published training-set format
  (cleaning cuts, split by source, N_max), readable by `btsbot-train`;
- `simulation_summary.json`, `prepare_summary_{version}_N{n_max}.json`: counts of everything.

Optional, with ../shared/data (real packets) at --real_data:
- `--plot_compare=PNG`: simulated triplets beside real ones;
- `--compare_table=MD`: quantiles of the 25 features, simulated vs real, as a markdown table.
With `--skip_generation` these read an existing DIR instead of simulating again.
"""

import json
import sys
import time
from pathlib import Path

from absl import flags

from btsbot_jax.cli import UsageError, run

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_sources", 1000, "Number of sources (about 45 alerts each on average).")
flags.DEFINE_integer("seed", 0, "Seed: the same seed gives byte-identical files.")
flags.DEFINE_string("out", None, "Output directory.")
flags.DEFINE_string("data_version", "v10", "Version tag of the training-set file names.")
flags.DEFINE_integer("n_max", 100, "N_max of the training set (alerts kept per source, Rehemtulla et al. 2024).")
flags.DEFINE_integer("split_seed", None, "Seed of the split by source and of the N_max subsets (default: --seed).")
flags.DEFINE_string("fractions", None, "Mix of source sets: all four, summing to 1, e.g. "
                    "'trues=0.27,vars=0.06,dims=0.45,rejects=0.22' (default: Table 1 of the paper).")
flags.DEFINE_integer("workers", 0, "Processes (0: all CPUs). The output does not depend on it.")
flags.DEFINE_integer("chunk_sources", 40, "Sources per work item / per avro file.")
flags.DEFINE_integer("gzip_level", 1, "Compression level of the FITS cutouts.")
flags.DEFINE_bool("training_set", True, "Write the training-set files.")
flags.DEFINE_bool("keep_packets", True, "Keep the avro packets (False: only tables and training set).")
flags.DEFINE_bool("skip_generation", False, "Do not simulate; only make --plot_compare/--compare_table from --out.")
flags.DEFINE_string("plot_compare", None, "PNG path: simulated triplets beside real ones from --real_data.")
flags.DEFINE_string("compare_table", None, "Markdown path: 25-feature quantiles, simulated vs real packets.")
flags.DEFINE_string("real_data", None, "Real data directory (default: ../shared/data beside the repository).")
flags.DEFINE_bool("progress", True, "Show progress.")


def _fractions(text):
    """'trues=0.3,vars=0.1,dims=0.4,rejects=0.2' -> dict. All four sets, each in [0, 1], summing to 1 (within
    0.01): a partial mix like 'trues=0.5' would otherwise be renormalised into a survey of trues only."""
    from btsbot_jax.sim.population import SETS

    expected = "expected all of " + ",".join(f"{k}=F" for k in SETS) + " with fractions summing to 1"
    out = {}
    for part in text.split(","):
        k, eq, v = part.partition("=")
        k = k.strip()
        if not eq or k not in SETS:
            raise UsageError(f"--fractions: unknown item {part!r}; {expected}")
        if k in out:
            raise UsageError(f"--fractions: {k} given twice")
        try:
            out[k] = float(v)
        except ValueError:
            raise UsageError(f"--fractions: bad fraction {v!r} for {k}; {expected}") from None
    missing = [k for k in SETS if k not in out]
    if missing:
        raise UsageError(f"--fractions={text} leaves out {', '.join(missing)}; {expected} (e.g. "
                         "trues=0.5,vars=0.1,dims=0.2,rejects=0.2)")
    if any(not 0.0 <= v <= 1.0 for v in out.values()):
        raise UsageError(f"--fractions: each fraction must be in [0, 1]; got {text}")
    total = sum(out.values())
    if abs(total - 1.0) > 0.01:
        raise UsageError(f"--fractions sum to {total:g}; {expected}")
    return {k: out[k] for k in SETS}


def _real_dir():
    if FLAGS.real_data:
        return Path(FLAGS.real_data)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _main(argv):
    del argv
    from btsbot_jax.sim.pipeline import SimConfig, simulate

    out = Path(FLAGS.out)
    if not FLAGS.skip_generation:
        cfg = SimConfig(num_sources=FLAGS.num_sources, seed=FLAGS.seed, version=FLAGS.data_version,
                        n_max=FLAGS.n_max,
                        workers=FLAGS.workers, chunk_sources=FLAGS.chunk_sources, gzip_level=FLAGS.gzip_level,
                        training_set=FLAGS.training_set, keep_packets=FLAGS.keep_packets,
                        split_seed=FLAGS.split_seed)
        if FLAGS.fractions:
            cfg.fractions = _fractions(FLAGS.fractions)
        if cfg.num_sources < 1:
            raise UsageError("--num_sources must be >= 1")
        t0 = time.perf_counter()
        res = simulate(out, cfg, progress=FLAGS.progress)
        dt = time.perf_counter() - t0
        s = res.summary
        print(f"{res.num_sources} sources, {res.num_alerts} alerts in {dt:.1f} s "
              f"({res.num_alerts / max(dt, 1e-9):.0f} alerts/s) -> {out}")
        print(f"sources by set: {json.dumps(s['sources_by_set'])}; alerts by set: {json.dumps(s['alerts_by_set'])}")
        if s["alerts_rejected_by_ingestion"]:
            print(f"alerts the ingestion code rejected: {s['alerts_rejected_by_ingestion']} (see {out}/"
                  "simulation_summary.json)")
        if s["training_set"]:
            print(f"training set: {json.dumps(s['training_set']['alerts'])}")
            for split in ("train", "val", "test"):
                if not sum(s["training_set"]["alerts"].get(split, {}).values()):
                    print(f"btsbot-simulate: warning: the {split} split is empty: {cfg.num_sources} sources are too "
                          "few for the 81/9/10 split by source (btsbot-train needs train and val); use a larger "
                          "--num_sources", file=sys.stderr)
        elif FLAGS.training_set:
            print("btsbot-simulate: warning: no training set written (no alerts survived)", file=sys.stderr)
    elif not (out / "alerts.parquet").exists():
        raise UsageError(f"--skip_generation but {out} holds no simulation (alerts.parquet)")
    if FLAGS.plot_compare or FLAGS.compare_table:
        from btsbot_jax.sim import compare

        real = _real_dir()
        if not real.exists():
            raise UsageError(f"real data {real} not found (pass --real_data)")
        if FLAGS.plot_compare:
            png = compare.plot_compare(out, real, FLAGS.plot_compare, seed=FLAGS.seed)
            print(f"picture: {png}")
        if FLAGS.compare_table:
            md = compare.write_compare_table(out, real, FLAGS.compare_table)
            print(f"feature table: {md}")


def main():
    run(_main, required=["out"], paths=["out", "plot_compare", "compare_table", "real_data"])


if __name__ == "__main__":
    main()
