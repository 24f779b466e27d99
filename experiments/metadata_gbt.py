"""How much a simulated survey's training split supports: gradient-boosted trees on the 25 metadata features.

    python experiments/metadata_gbt.py --data=SIM0,SIM1,... --out=benchmarks/results/metadata_gbt_s400.json

A diagnostic, not a product model: scikit-learn's HistGradientBoostingClassifier (fixed seed, default settings,
200 iterations) is fitted on the train split of each `btsbot-simulate` output and scored on its val and test splits.
Trees need no feature scaling and little data to find thresholds such as `peakmag_so_far` near 18.5, so where they
also miss 0.95 on a split, the training split (its few near-threshold trues and dims), not the network or its
schedule, is what limits the demo config there (docs/sim_to_real.md, "What still differs").
"""

from __future__ import annotations

import argparse
import json

from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

from btsbot_jax.data.training_set import load_split


def run(data_dir: str) -> dict:
    train = load_split(data_dir, "train")
    model = HistGradientBoostingClassifier(max_iter=200, random_state=0).fit(train.metadata, train.labels)
    out = {"data": data_dir, "train_sources": int(train.cand["objectId"].nunique())}
    for split in ("val", "test"):
        s = load_split(data_dir, split)
        out[f"{split}_auc"] = round(float(roc_auc_score(s.labels, model.predict_proba(s.metadata)[:, 1])), 4)
        out[f"{split}_sources"] = int(s.cand["objectId"].nunique())
        out[f"{split}_alerts"] = len(s.labels)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="comma-separated btsbot-simulate output directories")
    ap.add_argument("--out", default="", help="write the JSON here as well")
    args = ap.parse_args(argv)
    res = {"what": __doc__.splitlines()[0], "model": "sklearn HistGradientBoostingClassifier(max_iter=200, "
           "random_state=0) on the 25 metadata features", "runs": [run(d) for d in args.data.split(",")]}
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
