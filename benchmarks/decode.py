"""Decode + feature rate of btsbot-jax on real ZTF packets, per core, side by side with the reference path.

What is timed, per alert, from the raw avro bytes (as read from a file or a Kafka message) to the model's inputs
(triplet 63x63x3 + 25 features):
  * btsbot-jax, scoring projection: decode_avro_bytes(projection=SCORING_PROJECTION) + prepare_batch
    (what btsbot-score does);
  * btsbot-jax, full records: decode_avro_bytes (the whole packet) + prepare_batch;
  * reference: fastavro.reader per packet + gzip/astropy per stamp + np.nan_to_num/np.linalg.norm/np.pad +
    the features in plain Python (the way Kowalski prepares BTSbot's inputs).
One process, pinned to one CPU core, single-threaded numpy: the rate is per core, counted in this process's CPU
time (alerts per CPU-second) so that other processes sharing the core do not distort it; wall-clock rates are
printed beside. The paths run in alternating rounds (A B C A B C ..., order rotated) so machine-load drift hits all
of them alike; the ratio is reported per round too. Before timing, the outputs of the fast path and the reference
are compared.

    .venv/bin/python benchmarks/decode.py                 # all 647 real avro packets in ../shared/data
    .venv/bin/python benchmarks/decode.py --quick         # fewer packets and rounds
    .venv/bin/python benchmarks/decode.py --input=DIR --json=out.json
"""

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy: one thread
    os.environ.setdefault(_v, "1")

import gzip  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import fastavro  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from btsbot_jax.constants import METADATA_COLUMNS  # noqa: E402
from btsbot_jax.ingest import stamps  # noqa: E402
from btsbot_jax.ingest.features import prepare_batch  # noqa: E402
from btsbot_jax.ingest.readers import SCORING_PROJECTION, decode_avro_bytes  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("BTSBOT_SHARED", REPO.parent / "shared")) / "data"
TARGET = 2000.0  # alerts/s per core (issue 3)

FLAGS = flags.FLAGS
flags.DEFINE_list("input", [str(DATA / "ztf_alerts"), str(DATA / "ztf_alerts_fink")],
                  "Folders/files of avro packets (one container each).")
flags.DEFINE_bool("quick", False, "200 packets, 3 rounds.")
flags.DEFINE_integer("rounds", 5, "Alternating rounds (each times every path once over all packets).")
flags.DEFINE_integer("max_packets", 0, "Use at most this many packets (0: all).")
flags.DEFINE_integer("batch_size", 256, "prepare_batch batch size.")
flags.DEFINE_integer("cpu", -1, "Pin to this CPU (-1: the first one allowed; -2: do not pin).")
flags.DEFINE_string("json", None, "Also write the results here.")


# ------------------------------------------------------------------------------------------ reference path
def _ref_triplet(record) -> np.ndarray:
    out = np.zeros((63, 63, 3))
    for i, c in enumerate(("cutoutScience", "cutoutTemplate", "cutoutDifference")):
        with gzip.open(io.BytesIO(record[c]["stampData"]), "rb") as f:
            from astropy.io import fits

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with fits.open(io.BytesIO(f.read()), ignore_missing_simple=True) as hdu:
                    data = np.nan_to_num(hdu[0].data)
                    with np.errstate(over="ignore"):
                        data = data / np.linalg.norm(data)
        if data.shape != (63, 63):
            data = np.pad(data, [(0, 63 - data.shape[0]), (0, 63 - data.shape[1])], constant_values=1e-9)
        out[:, :, i] = data
    return out


def _ref_metadata(record) -> np.ndarray:
    cand = record["candidate"]
    hist = [p for p in (record.get("prv_candidates") or []) if p.get("magpsf") is not None] + [cand]
    mags = [h["magpsf"] for h in hist]
    peak = hist[int(np.argmin(mags))]
    first = min(cand["jdstarthist"], min(h["jd"] for h in hist))
    f = dict(cand)
    f.update(age=cand["jd"] - first, days_since_peak=cand["jd"] - peak["jd"], days_to_peak=peak["jd"] - first,
             peakmag_so_far=min(mags), maxmag_so_far=max(mags), nnotdet=cand["ncovhist"] - cand["ndethist"])
    return np.array([f[c] for c in METADATA_COLUMNS], np.float32)


def reference(blobs):
    trip, meta = [], []
    for b in blobs:
        for rec in fastavro.reader(io.BytesIO(b)):
            trip.append(_ref_triplet(rec))
            meta.append(_ref_metadata(rec))
    return np.asarray(trip, np.float32), np.stack(meta)


# ---------------------------------------------------------------------------------------------- fast paths
def fast(blobs, projection, batch_size):
    trip, meta = [], []
    for start in range(0, len(blobs), batch_size):
        alerts = []
        for i, b in enumerate(blobs[start:start + batch_size]):
            alerts += decode_avro_bytes(b, f"#{start + i}", projection=projection)
        p = prepare_batch(alerts)
        trip.append(p.triplets)
        meta.append(p.metadata)
    return np.concatenate(trip), np.concatenate(meta)


def decode_only(blobs, projection):
    for i, b in enumerate(blobs):
        decode_avro_bytes(b, f"#{i}", projection=projection)


def fastavro_only(blobs):
    for b in blobs:
        list(fastavro.reader(io.BytesIO(b)))


def stamps_only(records, fast_reader: bool):
    read = stamps.read_stamp if fast_reader else stamps.read_stamp_astropy
    for r in records:
        for c in ("cutoutScience", "cutoutTemplate", "cutoutDifference"):
            read(r[c]["stampData"])


# ------------------------------------------------------------------------------------------------ driver
def _pin(cpu: int) -> str:
    if cpu == -2 or not hasattr(os, "sched_setaffinity"):
        return "not pinned"
    allowed = sorted(os.sched_getaffinity(0))
    target = allowed[0] if cpu == -1 else cpu
    os.sched_setaffinity(0, {target})
    return f"pinned to CPU {target}"


def _calibration() -> float:
    """CPU seconds of a fixed pure-Python loop (best of 3): how fast this core runs Python, to compare machines."""
    best = float("inf")
    for _ in range(3):
        c0 = time.process_time()
        sum(range(10**7))
        best = min(best, time.process_time() - c0)
    return best


def _load(inputs, limit):
    files = []
    for p in map(Path, inputs):
        files += sorted(p.rglob("*.avro")) if p.is_dir() else [p]
    blobs = [f.read_bytes() for f in files]
    return blobs[:limit] if limit else blobs


def _main(argv):
    del argv
    rounds = 3 if FLAGS.quick else FLAGS.rounds
    limit = FLAGS.max_packets or (200 if FLAGS.quick else 0)
    pinned = _pin(FLAGS.cpu)
    blobs = _load(FLAGS.input, limit)
    if not blobs:
        print(f"no avro packets under {FLAGS.input} (real data lives in ../shared/data)", file=sys.stderr)
        return 2
    n = len(blobs)
    calib = _calibration()
    print(f"{n} packets ({sum(map(len, blobs)) / n / 1024:.0f} KiB each on average), {pinned}, "
          f"{rounds} rounds, isal={'yes' if stamps._isal_zlib is not None else 'no'}, "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; CPU speed check: sum(range(10**7)) "
          f"= {calib:.3f} CPU-s (a fixed pure-Python loop, to compare machines)")

    # correctness first: the fast path equals the reference
    t_ref, m_ref = reference(blobs)
    t_fast, m_fast = fast(blobs, SCORING_PROJECTION, FLAGS.batch_size)
    t_full, m_full = fast(blobs, None, FLAGS.batch_size)
    assert t_fast.shape == t_ref.shape, "some packets were rejected"
    err_t = float(np.abs(t_fast - t_ref).max())
    err_m = float(np.abs(m_fast - m_ref).max())
    assert np.array_equal(t_fast, t_full) and np.array_equal(m_fast, m_full)
    print(f"check: max|triplet - reference| = {err_t:.1e}, max|metadata - reference| = {err_m:.1e}")
    assert err_t < 1e-5 and err_m == 0.0

    records = [a.record for b in blobs for a in decode_avro_bytes(b, "x")]
    cases = {
        "btsbot-jax, scoring projection": lambda: fast(blobs, SCORING_PROJECTION, FLAGS.batch_size),
        "btsbot-jax, full records": lambda: fast(blobs, None, FLAGS.batch_size),
        "reference (fastavro + astropy)": lambda: reference(blobs),
        "  avro only: btsbot-jax projection": lambda: decode_only(blobs, SCORING_PROJECTION),
        "  avro only: btsbot-jax full": lambda: decode_only(blobs, None),
        "  avro only: fastavro.reader": lambda: fastavro_only(blobs),
        "  stamps only: btsbot-jax": lambda: stamps_only(records, True),
        "  stamps only: gzip + astropy": lambda: stamps_only(records, False),
        "  features only: prepare_batch(records)": lambda: [prepare_batch(records[i:i + FLAGS.batch_size])
                                                          for i in range(0, n, FLAGS.batch_size)],
    }
    names = list(cases)
    wall = {k: [] for k in names}
    cpu = {k: [] for k in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for k in order:
            c0, t0 = time.process_time(), time.perf_counter()
            cases[k]()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
        print(f"  round {r + 1}/{rounds} done", file=sys.stderr)

    # Per core = alerts per CPU-second of this single-threaded process (what other processes on a shared core
    # take is not counted); wall-clock rates are shown too. Medians over rounds.
    ref_name = "reference (fastavro + astropy)"
    rate = {k: n / float(np.median(v)) for k, v in cpu.items()}
    rate_wall = {k: n / float(np.median(v)) for k, v in wall.items()}
    per_round_ratio = {k: [tr / tk for tk, tr in zip(v, cpu[ref_name])] for k, v in cpu.items()}
    print(f"\n{'path':45s} {'alerts/CPU-s':>13s} {'us/alert':>9s} {'x reference':>12s} {'(per round)':>12s} "
          f"{'alerts/s wall':>14s}")
    for k in names:
        pr = per_round_ratio[k]
        print(f"{k:45s} {rate[k]:13.0f} {1e6 / rate[k]:9.0f} {rate[k] / rate[ref_name]:12.1f} "
              f"{f'{min(pr):.1f}-{max(pr):.1f}':>12s} {rate_wall[k]:14.0f}")
    main = "btsbot-jax, scoring projection"
    main_rate = rate[main]
    print(f"\ndecode+feature rate: {main_rate:.0f} alerts/s per core (CPU time; {rate_wall[main]:.0f}/s wall clock "
          f"at load average {os.getloadavg()[0]:.1f}); target {TARGET:.0f}: "
          f"{'met' if main_rate >= TARGET else 'NOT met'}; "
          f"{main_rate / rate[ref_name]:.1f}x the reference path")
    if FLAGS.json:
        out = {"packets": n, "rounds": rounds, "pinned": pinned, "machine": platform.platform(),
               "python_sum_range_1e7_cpu_s": calib,
               "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
               "alerts_per_cpu_second": rate, "alerts_per_s_wall": rate_wall, "cpu_seconds_per_round": cpu,
               "wall_seconds_per_round": wall, "ratio_vs_reference_per_round": per_round_ratio,
               "max_abs_err_triplet": err_t, "max_abs_err_metadata": err_m}
        Path(FLAGS.json).parent.mkdir(parents=True, exist_ok=True)
        Path(FLAGS.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(_main(argv)))
