"""The sim-to-real gap of a model trained on the simulated survey, measured on real alerts.

    python experiments/sim_to_real.py --checkpoint=demo_out/train --reference=models/v1.0.1 \
        --packets=../shared/data/ztf_alerts,../shared/data/ztf_alerts_fink --out=demo_out/sim_to_real.json

Real packets carry no BTS labels, so the model is compared with the published v1.0.1 model's decisions on them
(ROC AUC against v1.0.1's score > 0.5, identical decisions, rank correlation); the 39 labelled real alerts
(`--labelled=DIR` with usage_candidates.csv + usage_triplets.npy) add a view against true labels. With
`--simulated=DIR` (a `btsbot-simulate` output), the reference model's AUC on the simulated test split is reported
too: how separable the simulated classes are to a model trained on real alerts.

    python experiments/sim_to_real.py --table='benchmarks/results/sim_to_real_demo_s*_alertcount.json'

prints the markdown table of docs/sim_to_real.md from such JSONs (`experiments/sim_to_real_sweep.sh` writes them for
seeds x survey sizes).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np


def run(checkpoint, reference, packets, labelled=None, simulated=None, split="test") -> dict:
    import pandas as pd

    import btsbot_jax
    from btsbot_jax.data.training_set import load_split, metadata_matrix
    from btsbot_jax.evaluation.agreement import labelled_metrics, sim_to_real
    from btsbot_jax.evaluation.metrics import source_bootstrap_auc

    model, ref = btsbot_jax.load_scorer(checkpoint), btsbot_jax.load_scorer(reference)
    lab = None
    if labelled:
        table = pd.read_csv(Path(labelled) / "usage_candidates.csv")
        triplets = np.load(Path(labelled) / "usage_triplets.npy").astype(np.float32)
        lab = (triplets, metadata_matrix(table), table["label"].to_numpy())
    out = {"checkpoint": str(checkpoint), "reference": str(reference), "packets_paths": [str(p) for p in packets],
           **sim_to_real(model, ref, packets, labelled=lab, subsets=placeholder_subsets(packets))}
    if simulated:
        s = load_split(simulated, split)
        src = s.cand["objectId"].to_numpy()
        for name, scorer in (("reference_on_simulated", ref), ("model_on_simulated", model)):
            sc = scorer(s.triplets, s.metadata)
            # how much the split's few sources let its AUC say (docs/evaluation.md, "How far the AUC can be trusted")
            ci = source_bootstrap_auc(s.labels, sc, src)["interval"]
            out[name] = {"split": split, **labelled_metrics(sc, s.labels), "auc_source_bootstrap_90": ci,
                         "largest_source_influence": _largest_influence(s.cand, s.labels, sc)}
    return out


def _largest_influence(cand, labels, scores, top: int = 3) -> list[dict]:
    """The `top` sources whose removal raises the split's AUC most (`btsbot-evaluate`'s source influence), with
    their simulated set and sub-type: which sources a run's test AUC hangs on, recorded with the run."""
    from btsbot_jax.evaluation.metrics import largest_influence, source_influence_auc

    t = source_influence_auc(labels, scores, cand["objectId"].to_numpy())
    first = cand.groupby("objectId").first()
    out = []
    for r in largest_influence(t, top).itertuples():
        row = {"objectId": r.objectId, "label": int(r.label), "n_alerts": int(r.n_alerts),
               "mean_score": round(float(r.mean_score), 4), "auc_change": round(float(r.auc_change), 4)}
        for k in ("source_set", "subtype"):
            if k in first.columns:
                row[k] = str(first.loc[r.objectId, k])
        out.append(row)
    return out


def placeholder_subsets(packets) -> dict[str, set[int]]:
    """Split the packets by whether their host fields are placeholders: most of the Fink test packets carry
    distpsnr1 = 120, sgscore1 = 0.2 and jdstarthist one hour before jd whatever their history (docs/sim_to_real.md,
    "What still differs"), fields that no real ZTF alert has, so the comparison is also given without them.

    The packets with real host fields are also split by whether ZTF matched a known solar-system object within
    10" (`ssdistnr`): asteroids are most of the real single-detection alerts, and what a model does on them is
    a cue of its own (docs/sim_to_real.md, section 8)."""
    from btsbot_jax.ingest.readers import iter_alerts

    out = {"placeholder host fields": set(), "real host fields": set(),
           "real host fields, known asteroids": set(), "real host fields, no known asteroid": set()}
    for a in iter_alerts(list(packets)):
        if not a.record or "candid" not in a.record:
            continue  # unreadable: the scorers reject it too, so it is in no comparison
        c = a.record.get("candidate") or {}
        fake = (c.get("distpsnr1") == 120 and abs((c.get("sgscore1") or 0) - 0.2) < 1e-6  # a float32 0.2
                and abs((c.get("jd") or 0) - (c.get("jdstarthist") or 0) - 1 / 24) < 1e-4)
        candid = int(a.record["candid"])
        out["placeholder host fields" if fake else "real host fields"].add(candid)
        if not fake:
            ss = c.get("ssdistnr")
            known = ss is not None and 0 <= ss < 10
            out["real host fields, known asteroids" if known else "real host fields, no known asteroid"].add(candid)
    return out


def _interval(view: dict) -> str:
    ci = view.get("auc_source_bootstrap_90")
    return f"{view['auc']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def markdown_table(paths) -> str:
    """One row per sim_to_real JSON (written with --simulated), by survey size then seed."""
    head = ("| sources | seed | test AUC [90%] (simulated) | v1.0.1 on that split [90%] | AUC vs v1.0.1 on real "
            "packets (768) | agreement | Spearman | real host fields only (382): AUC / agreement | labelled AUC | "
            "test alerts / positives | simulate / train (s) |")
    runs = []
    for path in paths:
        d = json.loads(Path(path).read_text())
        survey = re.search(r"--num_sources=(\d+) --seed=(\d+)", d.get("trained") or "")
        runs.append((tuple(map(int, survey.groups())) if survey else (-1, -1), d))
    ast = "real host fields, known asteroids"
    with_ast = bool(runs) and all(ast in d["packets_by_subset"] for _, d in runs)  # JSONs from section 8 on
    if with_ast:
        head += " known asteroids (110): positives, model / v1.0.1 |"
    rows = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for (size, seed), d in sorted(runs, key=lambda x: x[0]):
        m, r, k = d["model_on_simulated"], d["reference_on_simulated"], d["packets"]
        h = d["packets_by_subset"]["real host fields"]
        t = d.get("timing_s", {})
        size, seed = (size, seed) if size >= 0 else ("-", "-")
        rows.append(f"| {size} | {seed} | {_interval(m)} | {_interval(r)} | {k['auc_vs_reference_decisions']:.3f} | "
                    f"{k['decision_agreement']:.3f} | {k['spearman']:.2f} | {h['auc_vs_reference_decisions']:.3f} / "
                    f"{h['decision_agreement']:.3f} | {d['labelled']['model']['auc']:.2f} | {m['alerts']} / "
                    f"{m['positives']} | {t.get('simulate', '-')} / {t.get('train', '-')} |"
                    + (f" {d['packets_by_subset'][ast]['model_positive']} / "
                       f"{d['packets_by_subset'][ast]['reference_positive']} |" if with_ast else ""))
    return "\n".join(rows)


def _commit() -> str | None:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv):
    del argv
    if FLAGS.table:
        import glob

        paths = glob.glob(FLAGS.table)
        if not paths:
            raise app.UsageError(f"--table={FLAGS.table} matches no file")
        print(markdown_table(paths))
        return
    missing = [f for f in ("checkpoint", "reference", "packets") if not getattr(FLAGS, f)]
    if missing:
        raise app.UsageError(f"--{', --'.join(missing)} required (or --table)")
    res = {"commit": _commit(), "trained": FLAGS.trained,
           **run(FLAGS.checkpoint, FLAGS.reference, FLAGS.packets, FLAGS.labelled, FLAGS.simulated)}
    text = json.dumps(res, indent=2)
    if FLAGS.out:
        Path(FLAGS.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    from absl import app, flags

    FLAGS = flags.FLAGS
    flags.DEFINE_string("checkpoint", None, "The model to measure (model dir, training workdir or export).")
    flags.DEFINE_string("reference", None, "The reference model (the published v1.0.1, imported).")
    flags.DEFINE_list("packets", None, "Real alert packets: avro files, folders, tarballs, parquet.")
    flags.DEFINE_string("labelled", None, "Folder with usage_candidates.csv + usage_triplets.npy (labelled alerts).")
    flags.DEFINE_string("simulated", None, "A btsbot-simulate output folder (adds the reference's AUC on it).")
    flags.DEFINE_string("out", None, "Write the JSON here too.")
    flags.DEFINE_string("trained", None, "What the model was trained on (recorded in the JSON with the commit).")
    flags.DEFINE_string("table", None, "Only print the markdown table of these JSONs (a glob) and stop.")
    app.run(main)
