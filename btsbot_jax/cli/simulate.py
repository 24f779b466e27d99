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
import time
from pathlib import Path

from absl import flags

from btsbot_jax.cli import run

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_sources", 1000, "Number of sources (about 45 alerts each on average).")
flags.DEFINE_integer("seed", 0, "Seed: the same seed gives byte-identical files.")
flags.DEFINE_string("out", None, "Output directory.")
flags.DEFINE_string("version", "v10", "Version tag of the training-set file names.")
flags.DEFINE_integer("n_max", 100, "N_max of the training set (alerts kept per source, Rehemtulla et al. 2024).")
flags.DEFINE_integer("split_seed", None, "Seed of the split by source and of the N_max subsets (default: --seed).")
flags.DEFINE_string("fractions", None, "Mix of source sets, e.g. 'trues=0.27,vars=0.06,dims=0.45,rejects=0.22' "
                    "(default: Table 1 of the paper).")
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
    from btsbot_jax.sim.population import SETS

    out = {}
    for part in text.split(","):
        k, _, v = part.partition("=")
        k = k.strip()
        if k not in SETS:
            raise SystemExit(f"btsbot-simulate: unknown source set {k!r} in --fractions (one of {SETS})")
        try:
            out[k] = float(v)
        except ValueError:
            raise SystemExit(f"btsbot-simulate: bad fraction {v!r} for {k}") from None
    if any(v < 0 for v in out.values()) or sum(out.values()) <= 0:
        raise SystemExit("btsbot-simulate: --fractions must be >= 0 and not all zero")
    return {k: out.get(k, 0.0) for k in SETS}


def _real_dir():
    if FLAGS.real_data:
        return Path(FLAGS.real_data)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _main(argv):
    del argv
    from btsbot_jax.sim.pipeline import SimConfig, simulate

    out = Path(FLAGS.out)
    if not FLAGS.skip_generation:
        cfg = SimConfig(num_sources=FLAGS.num_sources, seed=FLAGS.seed, version=FLAGS.version, n_max=FLAGS.n_max,
                        workers=FLAGS.workers, chunk_sources=FLAGS.chunk_sources, gzip_level=FLAGS.gzip_level,
                        training_set=FLAGS.training_set, keep_packets=FLAGS.keep_packets,
                        split_seed=FLAGS.split_seed)
        if FLAGS.fractions:
            cfg.fractions = _fractions(FLAGS.fractions)
        if cfg.num_sources < 1:
            raise SystemExit("btsbot-simulate: --num_sources must be >= 1")
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
    elif not (out / "alerts.parquet").exists():
        raise SystemExit(f"btsbot-simulate: --skip_generation but {out} holds no simulation (alerts.parquet)")
    if FLAGS.plot_compare or FLAGS.compare_table:
        from btsbot_jax.sim import compare

        real = _real_dir()
        if not real.exists():
            raise SystemExit(f"btsbot-simulate: real data {real} not found (pass --real_data)")
        if FLAGS.plot_compare:
            png = compare.plot_compare(out, real, FLAGS.plot_compare, seed=FLAGS.seed)
            print(f"picture: {png}")
        if FLAGS.compare_table:
            md = compare.write_compare_table(out, real, FLAGS.compare_table)
            print(f"feature table: {md}")


def main():
    run(_main, required=["out"])


if __name__ == "__main__":
    main()
