"""Why a model scores one source as it does: swap one input at a time for a typical label-1 value and rescore.

    python experiments/explain_source.py --checkpoint=RUN/train --data=RUN/sim --object=ZTF21aacqpiz \
        [--split=test] [--reference=v1.0.1] [--out=explain.json]

`btsbot-evaluate` names the sources that decide a split's AUC (`sources.csv`: `auc_change`); this says which of their
inputs the model's score hangs on. For each of the 25 metadata features in turn, every alert of the source gets the
median of that feature over the label-1 alerts of the training split (the others unchanged), and the source's mean
score is recomputed; then the images and the metadata are swapped as wholes with as many label-1 training alerts
(drawn with seed 0). A feature whose swap moves the score from 0.0004 to 0.9 is the cue the model used. A
diagnostic of what a trained model learned, not an attribution method with guarantees: features move together in
real alerts and one swap at a time ignores that (docs/sim_to_real.md, section 10).
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def explain(scorer, data_dir: str, object_id: str, split: str = "test", reference=None) -> dict:
    from btsbot_jax.constants import METADATA_COLUMNS
    from btsbot_jax.data.training_set import load_split

    s = load_split(data_dir, split)
    train = load_split(data_dir, "train")
    mine = np.flatnonzero(s.cand["objectId"].astype(str).to_numpy() == object_id)
    if mine.size == 0:
        raise SystemExit(f"{object_id} has no alerts in the {split} split of {data_dir}")
    trip = np.asarray(s.triplets[mine], np.float32)
    meta = np.asarray(s.metadata[mine], np.float32)
    pos = np.flatnonzero(train.labels == 1)
    if pos.size == 0:
        raise SystemExit(f"the train split of {data_dir} has no label-1 alerts to take typical values from")
    typical = np.median(train.metadata[pos], axis=0)

    def mean_score(t, m) -> float:
        return float(np.mean(scorer(t, m)))

    base = mean_score(trip, meta)
    rows = []
    for j, name in enumerate(METADATA_COLUMNS):
        m = meta.copy()
        m[:, j] = typical[j]
        rows.append({"feature": name, "value_median": float(np.median(meta[:, j])),
                     "typical_label_1": float(typical[j]), "score_with_typical": mean_score(trip, m)})
    rows.sort(key=lambda r: -abs(r["score_with_typical"] - base))
    pick = np.sort(np.random.default_rng(0).choice(pos, size=mine.size, replace=pos.size < mine.size))
    row0 = s.cand.iloc[mine[0]]
    out = {
        "object": object_id, "split": split, "data": str(data_dir), "n_alerts": int(mine.size),
        "label": int(s.labels[mine[0]]),
        **{k: str(row0[k]) for k in ("source_set", "subtype") if k in s.cand.columns},
        "mean_score": base,
        "features": rows,
        "label_1_images_with_its_metadata": mean_score(np.asarray(train.triplets[pick], np.float32), meta),
        "its_images_with_label_1_metadata": mean_score(trip, np.asarray(train.metadata[pick], np.float32)),
    }
    if reference is not None:
        out["reference_mean_score"] = float(np.mean(reference(trip, meta)))
    return out


def main(argv=None) -> None:
    import btsbot_jax

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="model directory or training workdir")
    ap.add_argument("--data", required=True, help="training-set folder (a btsbot-simulate output)")
    ap.add_argument("--object", required=True, help="objectId of the source")
    ap.add_argument("--split", default="test")
    ap.add_argument("--reference", default="", help="a second model to score the source with (e.g. v1.0.1)")
    ap.add_argument("--top", type=int, default=8, help="features printed")
    ap.add_argument("--out", default="", help="write the JSON here as well")
    args = ap.parse_args(argv)
    ref = btsbot_jax.load_scorer(args.reference) if args.reference else None
    res = explain(btsbot_jax.load_scorer(args.checkpoint), args.data, args.object, args.split, ref)
    head = f"{res['object']} ({res.get('source_set', '?')}, {res.get('subtype', '?')}, label {res['label']}, " \
           f"{res['n_alerts']} alerts): mean score {res['mean_score']:.4f}"
    if "reference_mean_score" in res:
        head += f", reference {res['reference_mean_score']:.4f}"
    print(head)
    print(f"  {'feature':16s} {'its median':>12s} {'label-1 typical':>16s} {'score with typical':>19s}")
    for r in res["features"][:args.top]:
        print(f"  {r['feature']:16s} {r['value_median']:12.4g} {r['typical_label_1']:16.4g} "
              f"{r['score_with_typical']:19.4f}")
    print(f"  label-1 images + its metadata: {res['label_1_images_with_its_metadata']:.4f}; its images + label-1 "
          f"metadata: {res['its_images_with_label_1_metadata']:.4f}")
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
