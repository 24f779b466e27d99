"""End to end: ZTF alert packets -> scores, against the model alone and against a Kowalski-style per-alert loop.

    python benchmarks/end_to_end.py             # >= 20,000 alerts through the pipeline at batch 64 (+256, 1024)
    python benchmarks/end_to_end.py --quick     # smoke run (< 1-2 min)

Three things are measured in the same process, in interleaved rounds (common.interleave), on the same packets:

  pipeline    btsbot_jax.serve.batch.score_alerts, the library behind `btsbot-score` and the stream: decode the avro
              bytes (btsbot_jax.ingest.readers.decode_avro_bytes, scoring projection), cutouts + 25 features
              (btsbot_jax.ingest.features.prepare_batch), batches, the JAX scorer, the scores table and the
              nothing-lost bookkeeping. Decoding the next batch overlaps with the model scoring the previous one.
  model_only  the same scorer on the already-prepared arrays of those alerts, same batch size.
  kowalski    what the Kowalski broker does per alert: fastavro.reader on the packet bytes, gzip + astropy.io.fits
              for each of the three stamps (NaN -> 0, L2 normalisation, 1e-9 padding), the 25 features, and one
              call of the v1.0.1 TF SavedModel serving signature with a batch of 1.

Corpus: the real ZTF avro packets of ../shared/data (36 from Kowalski's repository, 611 from Fink's) read
once into memory as bytes and decoded again for every copy, each copy given fresh candids (the pipeline drops
repeated candids as duplicates, so plain repeats would not be scored); where the data are absent, packets from the
simulator (btsbot_jax.sim). Reading the files from disk is left out on purpose: it is the page cache's speed, not
ours (`btsbot-score` on a folder adds only the file reads). The scores of the pipeline and of the Kowalski loop
are compared (max |difference|).
"""

from __future__ import annotations

import gzip
import io
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "Smoke mode: a few hundred alerts, batch 64 only (checks structure, not speed).")
flags.DEFINE_integer("batch_size", 64, "Main batch size (the fastest on a 2-core CPU, see benchmarks/README.md); "
                     "gets --num_alerts alerts.")
flags.DEFINE_integer("num_alerts", 20_000, "Alerts through the pipeline at the main batch size (over all rounds).")
flags.DEFINE_list("extra_batch_sizes", ["256", "1024"], "More batch sizes (256: btsbot-score's default), "
                  "--extra_alerts each.")
flags.DEFINE_integer("extra_alerts", 4096, "Alerts through the pipeline at each extra batch size.")
flags.DEFINE_integer("kowalski_alerts", 1200, "Alerts through the Kowalski-style loop at the main batch size (over "
                     "all rounds; a third of that at each extra batch size).")
flags.DEFINE_integer("rounds", 4, "Interleaved rounds.")
flags.DEFINE_string("checkpoint", None,
                    "Model directory (default: v1.0.1 imported from ../shared/data, else the packaged v1.0.1).")
flags.DEFINE_string("out_dir", str(common.RESULTS_DIR), "Where the JSON and PNG go.")
flags.DEFINE_string("tag", None, "File name stem (default end_to_end_<backend>[_quick]).")


# ----------------------------------------------------------------------------------------------- corpus
def load_packets(workdir: Path) -> tuple[list[tuple[str, bytes]], str]:
    """[(name, avro container bytes)], description. Real packets when present, else simulated ones."""
    files = [p for d in (common.ZTF_ALERTS, common.ZTF_ALERTS_FINK) if d.exists() for p in sorted(d.rglob("*.avro"))]
    if files:
        return [(str(p.relative_to(common.SHARED_DATA)), p.read_bytes()) for p in files], \
            f"{len(files)} real ZTF avro packets from {common.ZTF_ALERTS.name} and {common.ZTF_ALERTS_FINK.name}"
    from btsbot_jax.sim.pipeline import SimConfig, simulate

    res = simulate(workdir / "sim", SimConfig(num_sources=12, seed=0, workers=1, training_set=False))
    files = sorted((workdir / "sim" / "alerts").glob("*.avro"))
    return [(p.name, p.read_bytes()) for p in files], f"{res.num_alerts} simulated packets in {len(files)} files"


class UniqueStream:
    """Cycles through the packets, decoding each copy anew and giving its alerts fresh candids, so that every
    alert the pipeline sees is distinct (as in a real night) while the bytes stay the real ones."""

    def __init__(self, packets: list[tuple[str, bytes]]):
        self.packets = packets
        self.i = 0  # packets decoded so far
        self.next_candid = 1

    def take(self, n: int):
        from btsbot_jax.ingest.readers import SCORING_PROJECTION, decode_avro_bytes

        produced = 0
        while produced < n:
            name, data = self.packets[self.i % len(self.packets)]
            copy = self.i // len(self.packets)
            self.i += 1
            for a in decode_avro_bytes(data, f"{name}@{copy}", projection=SCORING_PROJECTION):
                if a.record is not None:
                    a.record["candid"] = self.next_candid
                    if isinstance(a.record.get("candidate"), dict):
                        a.record["candidate"]["candid"] = self.next_candid
                    self.next_candid += 1
                yield a
                produced += 1
                if produced >= n:
                    return


# ----------------------------------------------------------------------------------------------- Kowalski
def kowalski_triplet(record: dict) -> np.ndarray:
    """Kowalski's make_triplet: gzip + astropy per stamp, NaN -> 0, divide by the L2 norm, pad to 63x63 with 1e-9."""
    from astropy.io import fits

    triplet = np.zeros((63, 63, 3), np.float32)
    for i, name in enumerate(("cutoutScience", "cutoutTemplate", "cutoutDifference")):
        with gzip.open(io.BytesIO(record[name]["stampData"]), "rb") as f:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with fits.open(io.BytesIO(f.read()), ignore_missing_simple=True) as hdu:
                    img = np.nan_to_num(np.array(hdu[0].data, np.float32))
        with np.errstate(over="ignore"):  # float32 norm overflow -> cutout of zeros, as in production
            img /= np.linalg.norm(img)
        if img.shape != (63, 63):
            pad = np.full((63, 63), 1e-9, np.float32)
            pad[:img.shape[0], :img.shape[1]] = img
            img = pad
        triplet[:, :, i] = img
    return triplet


class KowalskiLoop:
    """One alert at a time, as the broker does: fastavro.reader, astropy stamps, features, TF batch of 1."""

    STAGES = ("read", "stamps", "features", "model")

    def __init__(self, packets, tf_fn, tf):
        self.packets, self.fn, self.tf = packets, tf_fn, tf
        self.i = 0
        self.seconds = dict.fromkeys(self.STAGES, 0.0)  # time per stage, for the breakdown in the JSON
        self.alerts = 0

    def score_packet(self, data: bytes) -> list[float]:
        import fastavro

        from btsbot_jax.ingest.features import metadata_from_record

        out = []
        clock, sec = time.perf_counter, self.seconds
        t0 = clock()
        records = list(fastavro.reader(io.BytesIO(data)))
        sec["read"] += clock() - t0
        for rec in records:
            self.alerts += 1
            try:
                t0 = clock()
                t = kowalski_triplet(rec)
                t1 = clock()
                m = metadata_from_record(rec)
                t2 = clock()
                sec["stamps"] += t1 - t0
                sec["features"] += t2 - t1
            except Exception:  # Kowalski logs and skips an alert it cannot prepare
                out.append(float("nan"))
                continue
            res = self.fn(triplet=self.tf.constant(t[None]), metadata=self.tf.constant(m[None]))
            out.append(float(res["fc_out"].numpy()[0, 0]))
            sec["model"] += clock() - t2
        return out

    def breakdown(self) -> dict[str, float]:
        """Milliseconds per alert in each stage, over every alert this loop has scored."""
        return {k: round(1e3 * v / max(self.alerts, 1), 3) for k, v in self.seconds.items()}

    def run(self, n: int) -> int:
        done = 0
        while done < n:
            done += len(self.score_packet(self.packets[self.i % len(self.packets)][1]))
            self.i += 1
        return done


# ----------------------------------------------------------------------------------------------- main
def _main(argv):
    del argv
    import jax

    from btsbot_jax.inference.scorer import DEFAULT_BUCKETS, load_scorer
    from btsbot_jax.ingest.features import prepare_batch
    from btsbot_jax.serve.batch import score_alerts

    quick = FLAGS.quick
    main_bs = 64 if quick else FLAGS.batch_size
    extra = [] if quick else sorted({int(b) for b in FLAGS.extra_batch_sizes} - {main_bs})
    rounds = 2 if quick else FLAGS.rounds
    n_main = 256 if quick else FLAGS.num_alerts
    n_extra = FLAGS.extra_alerts
    n_kow = 32 if quick else FLAGS.kowalski_alerts
    info = common.machine_info()
    common.log(f"end-to-end benchmark on {info['cpu_model']} ({info['cpu_cores_usable']} cores), "
               f"jax {info['jax_backend']}: {info['devices']}; load average {info['load_average_at_start']}")

    with tempfile.TemporaryDirectory(prefix="btsbot-e2e-") as tmp:
        workdir = Path(tmp)
        mdir, source = common.model_dir(workdir, FLAGS.checkpoint)
        packets, corpus = load_packets(workdir)
        common.log(f"model: {source}; corpus: {corpus}, {sum(len(b) for _, b in packets) / 1e6:.1f} MB")
        # quick: one bucket, so the smoke run compiles one program; otherwise the defaults plus the measured sizes
        buckets = (main_bs,) if quick else tuple(sorted(set(DEFAULT_BUCKETS) | {main_bs, *extra}))
        scorer = load_scorer(mdir, buckets=buckets)
        scorer.warmup()

        # Prepared arrays of one pass over the corpus, for model_only and for the agreement check.
        n_records = sum(1 for _, d in packets for _ in _records(d))
        list(UniqueStream(packets).take(n_records))  # warm: decoders compiled (once per schema), files cached
        t0 = time.perf_counter()
        one_pass = list(UniqueStream(packets).take(n_records))
        t1 = time.perf_counter()
        prepared = prepare_batch(one_pass)
        t2 = time.perf_counter()
        n_good = len(prepared)
        common.log(f"one pass: {len(one_pass)} records, {n_good} preparable, {len(prepared.rejected)} rejected "
                   f"({sorted({r.kind for r in prepared.rejected})})")
        t3 = time.perf_counter()
        ours_one_pass = scorer(prepared.triplets, prepared.metadata)
        t4 = time.perf_counter()
        # serial cost of each stage of our pipeline on one pass (ms per alert; the pipeline overlaps them)
        stages = {"decode_avro": (t1 - t0), "cutouts_and_features": (t2 - t1), "model": (t4 - t3)}
        stages = {k: round(1e3 * v / len(one_pass), 3) for k, v in stages.items()}
        common.log(f"pipeline stages, serial, ms per alert: {stages}")

        kow = None
        skipped = {}
        if common.V101_SAVED_MODEL.exists() and source.startswith("v1.0.1"):
            import tensorflow as tf

            sig = tf.saved_model.load(str(common.V101_SAVED_MODEL)).signatures["serving_default"]
            kow = KowalskiLoop(packets, sig, tf)
        else:
            skipped["kowalski"] = ("needs the v1.0.1 TF SavedModel and its weights in the pipeline "
                                   f"({common.V101_SAVED_MODEL} absent or --checkpoint given)")
            common.log(f"skip kowalski: {skipped['kowalski']}")

        agreement = None
        if kow is not None:
            n_check = 64 if quick else len(packets)  # every packet once (quick: the first 64)
            kscores = np.asarray([s for _, d in packets[:n_check] for s in kow.score_packet(d)], np.float64)
            ours_by_source = dict(zip(prepared.info["source"], ours_one_pass))
            ours = np.asarray([ours_by_source.get(a.source, np.nan) for a in one_pass[:len(kscores)]], np.float64)
            both = ~np.isnan(kscores) & ~np.isnan(ours)
            agreement = {"alerts_compared": int(both.sum()),
                         "max_abs_difference": float(np.abs(kscores[both] - ours[both]).max()),
                         "scored_by_one_only": int((np.isnan(kscores) != np.isnan(ours)).sum()),
                         "unscorable_by_both": int((np.isnan(kscores) & np.isnan(ours)).sum())}
            common.log(f"pipeline vs Kowalski loop on one pass: {agreement}")

        results, ratios, rows = {}, {}, {}
        stream = UniqueStream(packets)
        for bs in [main_bs, *extra]:
            n_total = n_main if bs == main_bs else n_extra
            per_call = -(-n_total // rounds)
            reps = -(-per_call // n_good)
            t_rep = np.concatenate([prepared.triplets] * reps)[:per_call]
            m_rep = np.concatenate([prepared.metadata] * reps)[:per_call]
            summaries = []

            def pipeline(bs=bs, per_call=per_call, summaries=summaries):
                res = score_alerts(scorer, stream.take(per_call), batch_size=bs)
                s = res.summary
                assert s["records_read"] == per_call == s["scored"] + s["rejected"] + s["duplicates"], s
                summaries.append(s)

            def model_only(bs=bs, t_rep=t_rep, m_rep=m_rep):
                for i in range(0, len(t_rep), bs):
                    scorer(t_rep[i:i + bs], m_rep[i:i + bs])

            cases = {"pipeline": pipeline, "model_only": model_only}
            kow_per_call = -(-(n_kow if bs == main_bs else n_kow // 3) // rounds)
            if kow is not None:  # in every batch size's rounds, so each ratio is measured under the same drift
                cases["kowalski"] = lambda n=kow_per_call: kow.run(n)
            common.log(f"batch {bs}: {rounds} rounds; per call: pipeline {per_call} alerts, model_only "
                       f"{len(t_rep)}" + (f", kowalski {kow_per_call}" if "kowalski" in cases else ""))
            raw = common.interleave(cases, rounds=rounds, slice_seconds=0.0, min_calls=1, warmup=0,
                                    log=common.log)
            items = {"pipeline": per_call, "model_only": len(t_rep), "kowalski": kow_per_call}
            results[bs] = {k: common.summarize(v, items[k]) for k, v in raw.items()}
            rows[bs] = {"records": sum(s["records_read"] for s in summaries),
                        "scored": sum(s["scored"] for s in summaries),
                        "rejected": sum(s["rejected"] for s in summaries),
                        "duplicates": sum(s["duplicates"] for s in summaries)}
            r = {"pipeline_vs_model_only": common.ratio(results[bs]["pipeline"], results[bs]["model_only"])}
            if "kowalski" in results[bs]:
                r["pipeline_vs_kowalski"] = common.ratio(results[bs]["pipeline"], results[bs]["kowalski"])
                r["model_only_vs_kowalski"] = common.ratio(results[bs]["model_only"], results[bs]["kowalski"])
            ratios[bs] = r
            common.log("  " + "  ".join(f"{k} {v['throughput']:.1f}/s" for k, v in results[bs].items())
                       + "  " + "  ".join(f"{k} {v['ratio']:.2f}x" for k, v in r.items()))
        info = common.finish_machine_info(info)

    targets = [{"target": "end-to-end >= 0.8x model-only", "threshold": 0.8,
                **{k: ratios[main_bs]["pipeline_vs_model_only"][k] for k in ("ratio", "per_round_min")}}]
    if "pipeline_vs_kowalski" in ratios[main_bs]:
        targets.append({"target": "end-to-end >= 3x the Kowalski-style per-alert loop", "threshold": 3.0,
                        **{k: ratios[main_bs]["pipeline_vs_kowalski"][k] for k in ("ratio", "per_round_min")}})
    for t in targets:
        t["met"] = t["ratio"] >= t["threshold"]
    report = {
        "benchmark": "end_to_end",
        "machine": info,
        "config": {"quick": quick, "batch_size": main_bs, "extra_batch_sizes": extra, "rounds": rounds,
                   "num_alerts": n_main, "extra_alerts": n_extra, "kowalski_alerts": n_kow, "buckets": list(buckets)},
        "model": {"source": source},
        "corpus": {"description": corpus, "packets": len(packets), "records_per_pass": len(one_pass),
                   "preparable_per_pass": n_good, "rejected_per_pass": len(prepared.rejected),
                   "method": "packets read once into memory; every copy decoded again from its bytes with fresh "
                             "candids"},
        "pipeline_accounting": {str(k): v for k, v in rows.items()},
        "stream_rates_per_s": dict(common.STREAM_RATES),
        "results": {str(k): v for k, v in results.items()},
        "ratios": {str(k): v for k, v in ratios.items()},
        "kowalski_agreement": agreement,
        "stage_ms_per_alert": {"pipeline_serial_one_pass": stages,
                               "kowalski": kow.breakdown() if kow is not None else None},
        "skipped": skipped,
        "targets": targets,
    }
    stem = FLAGS.tag or f"end_to_end_{jax.default_backend()}" + ("_quick" if quick else "")
    out_dir = Path(FLAGS.out_dir)
    path = common.write_json(out_dir / f"{stem}.json", report)
    common.log(f"wrote {path}")
    bss = [main_bs, *extra]
    order = sorted(bss)
    series = {k: (order, [results[b][k]["throughput"] for b in order]) for k in ("pipeline", "model_only")}
    series = {"end-to-end pipeline (packets -> scores)": series["pipeline"],
              "model only (same scorer, prepared arrays)": series["model_only"]}
    if "kowalski" in results[main_bs]:
        series["Kowalski-style per-alert loop (batch 1)"] = ([1], [results[main_bs]["kowalski"]["throughput"]])
    png = common.plot_throughput(out_dir / f"{stem}.png", series,
                                 title=f"BTSbot end to end, {info['device_kind']} x{info['device_count']} "
                                       f"({info['cpu_model']}, {info['cpu_cores_usable']} cores), "
                                       f"{info['date_utc'][:10]}")
    common.log(f"wrote {png}")
    for t in targets:
        print(f"target: {t['target']}: {t['ratio']:.3f} (per-round min {t['per_round_min']}) "
              f"{'MET' if t['met'] else 'MISSED'}")


def _records(data: bytes):
    import fastavro

    return fastavro.reader(io.BytesIO(data))


def main():
    app.run(_main)


if __name__ == "__main__":
    main()
