"""`btsbot-prepare --candidates=alerts.csv --triplets=triplets.npy --out=DIR`: per-alert table -> training set.

Applies the paper's cleaning cuts, the 81/9/10 split by source and the N_max rule (Rehemtulla et al. 2024) and writes
`{split}_cand_{version}_N{n_max}.csv` + `{split}_triplets_{version}_N{n_max}.npy`, which `btsbot-train` reads.
"""

import json
from pathlib import Path

from absl import flags

from btsbot_jax.cli import UsageError, run

FLAGS = flags.FLAGS
flags.DEFINE_string("candidates", None, "Per-alert table (.csv or .parquet), one row per alert, same order as "
                    "--triplets; needs objectId, jd, isdiffpos, fid, sgscore1, sgscore2, magpsf and the features.")
flags.DEFINE_string("triplets", None, "Triplets .npy, shape (N, 63, 63, 3), in the row order of --candidates.")
flags.DEFINE_string("sources", None, "Optional table (.csv/.parquet) with objectId,source_set (trues, vars, dims, "
                    "rejects); without it the candidates table must have a source_set column.")
flags.DEFINE_string("out", None, "Output directory for the training-set files.")
flags.DEFINE_string("data_version", "v10", "Version tag in the file names.")
flags.DEFINE_integer("n_max", 100, "N_max: alerts kept per source (Rehemtulla et al. 2024).")
flags.DEFINE_integer("seed", 2, "Seed of the split by source and of the random N_max subsets.")


def _existing(flag: str) -> Path:
    p = Path(getattr(FLAGS, flag))
    if not p.exists():
        raise UsageError(f"--{flag}={p}: no such file")
    if not p.is_file():
        raise UsageError(f"--{flag}={p}: not a file")
    return p


def _read_table(flag: str):
    import pandas as pd

    p = _existing(flag)
    try:
        return pd.read_parquet(p) if p.suffix.lower() == ".parquet" else pd.read_csv(p)
    except Exception as e:  # noqa: BLE001 - pandas/pyarrow raise many types for a file that is not a table
        raise UsageError(f"--{flag}={p}: cannot read it as a {'parquet' if p.suffix.lower() == '.parquet' else 'CSV'}"
                         f" table: {type(e).__name__}: {e}") from e


def _main(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {argv[1:]}")
    import numpy as np

    from btsbot_jax.data.prepare import prepare_training_set

    table = _read_table("candidates")
    try:
        triplets = np.load(_existing("triplets"), mmap_mode="r")
    except (ValueError, OSError) as e:
        raise UsageError(f"--triplets={FLAGS.triplets}: cannot read it as a .npy array: {e}") from e
    sources = _read_table("sources") if FLAGS.sources else None
    result = prepare_training_set(table, triplets, FLAGS.out, version=FLAGS.data_version, n_max=FLAGS.n_max,
                                  seed=FLAGS.seed, source_sets=sources)
    s = result.summary
    print(f"alerts in: {s['alerts_in']}, kept: {s['alerts_kept']}, removed: {json.dumps(s['removed'])}")
    print(result.counts().to_string())
    for split, (csv, npy) in result.files.items():
        print(f"{split}: {csv} + {npy.name}")


def main():
    run(_main, required=["candidates", "triplets", "out"], paths=["candidates", "triplets", "sources", "out"])


if __name__ == "__main__":
    main()
