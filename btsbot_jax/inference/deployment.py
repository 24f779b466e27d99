"""What an exported model says about itself, so a broker that keeps only the artifact still knows how to call it.

`deployment_card(card)` is the part of a model card a deployment needs: architecture, model and btsbot-jax versions,
the metadata column order, the input layout and names, what the output means (a sigmoid score, not a logit), the
alert-level decision threshold and the source-level policy constants. `btsbot_jax.inference.export` writes it
into every artifact (ONNX `metadata_props`, a SavedModel asset and `model_card` signature, the StableHLO export's
model_card.json beside the artifact); `btsbot_jax.inference.runtimes` reads the column order back from the artifact.

Light module: json and the constants only (the runtimes import it without jax, flax or tensorflow).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from btsbot_jax import __version__
from btsbot_jax.constants import COLUMN_ALIASES, METADATA_COLUMNS, PAD_VALUE

# Keys of the ONNX metadata_props entries (all strings; lists and dicts as JSON).
ONNX_CARD_KEY = "model_card"  # the whole deployment card as JSON
SAVEDMODEL_CARD_ASSET = "model_card.json"  # in the SavedModel's assets/
SAVEDMODEL_CARD_SIGNATURE = "model_card"  # signature with no inputs -> {"model_card": JSON string}

# Decision and policy constants. v1 (Rehemtulla et al. 2024, its evaluation policies): an alert is positive when its
# score > 0.5; bts_p1 = at least 2 positive alerts with magpsf < 19 so far; bts_p2 = bts_p1 and the brightest magpsf
# so far <= 18.5. v2 (Rehemtulla et al. 2025, the production policies of its evaluation): prod_p1 = at least 1 alert
# with score > 0.85 and magpsf < 19 so far; prod_p2 = prod_p1 and the brightest magpsf so far <= 18.5.
DECISION_THRESHOLD = 0.5
PROD_SCORE_THRESHOLD = 0.85


def policy_constants() -> dict[str, dict[str, Any]]:
    """The source-level policies, each alert seeing only the alerts of its source so far (strict > and <)."""
    from btsbot_jax.evaluation.policies import BRIGHT_LIMIT, MAG_LIMIT, MIN_POSITIVE, SCORE_THRESHOLD

    def policy(min_alerts, threshold, bright, text):
        p = {"min_alerts": min_alerts, "score_above": threshold, "magpsf_below": MAG_LIMIT, "description": text}
        if bright:
            p["brightest_magpsf_so_far_at_most"] = BRIGHT_LIMIT
        return p

    return {
        "bts_p1": policy(MIN_POSITIVE, SCORE_THRESHOLD, False,
                         f"select a source at its first alert with >= {MIN_POSITIVE} alerts so far having "
                         f"score > {SCORE_THRESHOLD} and magpsf < {MAG_LIMIT}"),
        "bts_p2": policy(MIN_POSITIVE, SCORE_THRESHOLD, True,
                         f"bts_p1 and the brightest magpsf so far <= {BRIGHT_LIMIT}"),
        "prod_p1": policy(1, PROD_SCORE_THRESHOLD, False,
                          f"select a source at its first alert having score > {PROD_SCORE_THRESHOLD} and magpsf < "
                          f"{MAG_LIMIT} (BTSbot v2 production policy)"),
        "prod_p2": policy(1, PROD_SCORE_THRESHOLD, True,
                          f"prod_p1 and the brightest magpsf so far <= {BRIGHT_LIMIT} (BTSbot v2 production policy)"),
    }


def deployment_card(card: dict[str, Any], input_names: Sequence[str] = ("triplet", "metadata"),
                    output_name: str = "fc_out") -> dict[str, Any]:
    """The self-description of a model (see the module docstring) from its btsbot-jax model card."""
    columns = list(card["metadata_columns"])
    s = int(card.get("image_size", 63))
    arch = card["architecture"]
    # every export takes both inputs (the v1.0.1 signature); a single-branch architecture ignores one of them
    inputs = {
        input_names[0]: {
            "shape": ["N", s, s, 3], "dtype": "float32", "layout": "NHWC (channels last)",
            "channels": ["science", "template", "difference"], "used": arch not in ("um_nn", "v2_um_nn"),
            "preprocessing": f"each cutout: gunzip FITS, NaN -> 0, divided by its own L2 norm, cutouts smaller than "
                             f"{s}x{s} padded at the bottom/right with {PAD_VALUE:g} after normalising",
        },
        input_names[1]: {
            "shape": ["N", len(columns)], "dtype": "float32", "columns": columns,
            "used": arch not in ("um_cnn", "v2_ConvNeXt", "v2_MaxViT"),
            "preprocessing": "raw values in this column order (the model normalises them itself)",
        },
    }
    layout = "; ".join(
        f"{name}: float32 ({', '.join(map(str, spec['shape']))}) "
        + ("NHWC, channels science, template, difference" if "channels" in spec else "raw, in metadata_columns order")
        + ("" if spec["used"] else " (not used by this architecture)")
        for name, spec in inputs.items()
    )
    return {
        "name": card.get("name", "btsbot"),
        "architecture": arch,
        "model_version": str(card.get("version", "unknown")),
        "btsbot_jax_version": __version__,
        "metadata_columns": columns,
        "input_names": list(input_names),
        "input_layout": layout,
        "inputs": inputs,
        "output_meaning": "score",
        "output": {
            "name": output_name, "shape": ["N", 1], "dtype": "float32", "meaning": "score",
            "description": "sigmoid probability in [0, 1] that the alert is of a bright transient (not a logit)",
        },
        "decision_threshold": DECISION_THRESHOLD,
        "decision": f"an alert is positive when score > {DECISION_THRESHOLD}",
        "policies": policy_constants(),
        "reference": "Rehemtulla et al. 2024, ApJ 972, 7 (BTSbot); github.com/nabeelre/BTSbot",
    }


def deployment_card_v2(card: dict[str, Any], input_names: Sequence[str], output_name: str = "logits"
                       ) -> dict[str, Any]:
    """The self-description of a BTSbot v2 ONNX export: upstream's signature (Rehemtulla et al. 2025, to_onnx.py),
    `image` channels-first and/or `metadata` in, one logit out (score = sigmoid(logit))."""
    d = deployment_card(card)
    s = int(card.get("image_size", 63))
    image = dict(d["inputs"]["triplet"], shape=["N", 3, s, s], layout="NCHW (channels first)", used=True)
    metadata = dict(d["inputs"]["metadata"], used=True)
    d["inputs"] = {n: image if n == "image" else metadata for n in input_names}
    d["input_names"] = list(input_names)
    d["input_layout"] = "; ".join(
        f"{n}: float32 ({', '.join(map(str, spec['shape']))}) "
        + ("NCHW, channels science, template, difference" if n == "image" else "raw, in metadata_columns order")
        for n, spec in d["inputs"].items())
    d["output_meaning"] = "logit"
    d["output"] = {"name": output_name, "shape": ["N", 1], "dtype": "float32", "meaning": "logit",
                   "description": "one logit per alert; score = sigmoid(logit), in [0, 1]"}
    d["decision"] = f"an alert is positive when sigmoid(logit) > {DECISION_THRESHOLD}"
    d["reference"] = "Rehemtulla et al. 2025 (BTSbot v2); github.com/nabeelre/BTSbot"
    return d


def onnx_metadata(dcard: dict[str, Any]) -> dict[str, str]:
    """ONNX metadata_props: the whole card under `model_card` plus its top-level fields as flat strings."""
    props = {ONNX_CARD_KEY: json.dumps(dcard, sort_keys=True)}
    for key, value in dcard.items():
        props[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    props["version"] = dcard["model_version"]  # the key earlier btsbot-jax exports used
    return props


def columns_from_onnx_metadata(props: dict[str, str]) -> tuple[str, ...] | None:
    """The metadata column order an ONNX model states, or None for a model that states none."""
    if "metadata_columns" not in props:
        return None
    cols = json.loads(props["metadata_columns"])
    if not (isinstance(cols, list) and all(isinstance(c, str) for c in cols)):
        raise ValueError(f"metadata_columns is not a list of names: {props['metadata_columns'][:200]!r}")
    return tuple(cols)


class ColumnOrderError(ValueError):
    """A model whose metadata column order is not the one btsbot-jax's ingestion builds."""


def check_column_order(columns: Sequence[str], where: str, expected: Sequence[str] = METADATA_COLUMNS) -> None:
    """Refuse a model that expects its 25 features in another order than the ingestion produces. The published
    spellings of the same feature count as that feature (`new_drb` is `drb`, `nnondet` is `nnotdet`: BTSbot v2's
    train_config.json lists `new_drb`)."""
    columns, expected = tuple(columns), tuple(expected)
    if tuple(COLUMN_ALIASES.get(c, c) for c in columns) == tuple(COLUMN_ALIASES.get(c, c) for c in expected):
        return
    if len(columns) != len(expected):
        detail = f"it expects {len(columns)} columns, the ingestion builds {len(expected)}"
    else:
        i = next(i for i, (a, b) in enumerate(zip(columns, expected)) if a != b)
        detail = f"first difference at position {i}: model {columns[i]!r}, ingestion {expected[i]!r}"
    raise ColumnOrderError(
        f"{where}: the model's metadata column order differs from the one btsbot-jax builds from alert packets "
        f"({detail}); model order {list(columns)}, ingestion order {list(expected)}. Scoring would feed features "
        f"into the wrong inputs; re-export the model from a btsbot-jax model directory"
    )


__all__ = [
    "ColumnOrderError", "DECISION_THRESHOLD", "ONNX_CARD_KEY", "PROD_SCORE_THRESHOLD", "SAVEDMODEL_CARD_ASSET",
    "SAVEDMODEL_CARD_SIGNATURE", "check_column_order", "columns_from_onnx_metadata", "deployment_card",
    "onnx_metadata", "policy_constants",
]
