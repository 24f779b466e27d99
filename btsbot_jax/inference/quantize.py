"""Post-training static int8 quantisation of the ONNX export, for CPU brokers (`btsbot-export --format=onnx_int8`).

Route: ONNX Runtime's `quantize_static` in QDQ format (QuantizeLinear/DequantizeLinear pairs around each quantised
op, which ONNX Runtime fuses into integer kernels: QLinearConv, MatMulInteger, VNNI/AMX where the CPU has them),
weights quantised per output channel (symmetric int8), activations asymmetric uint8 with ranges calibrated on
alert-like inputs: simulated packets (`btsbot_jax.sim`) and, where available, real ones.

A naive int8 model (per-tensor weights, every op quantised, ranges from a few random inputs) moves the scores by a
large fraction of the [0, 1] range. What matters is (a) per-channel weights, (b) the calibration method of the
activation ranges (MinMax, Entropy, Percentile) and (c) leaving the few sensitive, cheap nodes in float: the first
conv (3 input channels, ~4% of the FLOPs, sees the raw cutouts), the metadata branch (BatchNorm'd features of very
different scales) and the final Dense before the sigmoid. `search` quantises every candidate configuration and
picks by agreement with the float32 model on held-out inputs (fraction of identical decisions at 0.5 first, then
the largest |score difference|); the export records the chosen configuration and the agreement it measured.

An int8 export is an ordinary ONNX export directory (`model.onnx` + model card with format `btsbot-jax/onnx-int8`):
`btsbot_jax.inference.runtimes` loads it with the same `OnnxScorer`, so `btsbot-score` / `btsbot-stream` take it as
`--checkpoint` unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from btsbot_jax.inference.export import ExportError
from btsbot_jax.inference.runtimes import ONNX_INT8_FORMAT as INT8_FORMAT

log = logging.getLogger(__name__)

MIN_IDENTICAL = 0.995  # identical decisions required of an int8 export on its held-out inputs
THRESHOLD = 0.5  # the decision threshold of the paper's policies (Rehemtulla et al. 2024, Sec. 5)
METHODS = ("minmax", "entropy", "percentile")
# Node names of the hand-built graph (btsbot_jax.inference.export.build_onnx) that may stay in float32.
# A float group takes its ReLUs along, so no quantise/dequantise pair is left between two float ops.
SENSITIVE = {
    "conv1": ("image/conv1/conv",),
    "metadata": ("metadata/fc1/gemm", "metadata/fc1/relu", "metadata/fc2/gemm", "metadata/fc2/relu"),
    "head": ("head/fc/gemm", "head/fc/relu", "head/out/gemm"),
    "out": ("head/out/gemm",),
}
# Ops quantised at all: the heavy ones (convolutions, dense layers) and the cheap ones between them that would
# otherwise force a dequantise/requantise round trip (pooling, the NCHW<->NHWC transposes, flatten).
OP_TYPES = ("Conv", "Relu", "Gemm", "MaxPool", "Transpose", "Flatten")


class QuantizationError(ExportError):
    """Quantisation that cannot run (no onnxruntime.quantization, no calibration data) or misses its agreement."""


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """One candidate: calibration method, which SENSITIVE groups stay float, per-channel weights."""

    method: str = "minmax"
    keep_float: tuple[str, ...] = ()
    per_channel: bool = True
    percentile: float = 99.999
    bias_correction: bool = True

    @property
    def name(self) -> str:
        keep = "+".join(self.keep_float) or "none"
        pc = "" if self.per_channel else ",per-tensor"
        bc = ",bias-corrected" if self.bias_correction and "out" in self.float_groups() else ""
        return f"{self.method},float[{keep}]{pc}{bc}"

    def float_groups(self) -> set[str]:
        return set(self.keep_float) | ({"out"} if "head" in self.keep_float else set())

    def nodes_to_exclude(self) -> list[str]:
        unknown = set(self.keep_float) - set(SENSITIVE)
        if unknown:
            raise QuantizationError(f"unknown node group(s) {sorted(unknown)}; expected some of {sorted(SENSITIVE)}")
        return sorted({n for g in self.keep_float for n in SENSITIVE[g]})


# The dense layers (metadata branch and head, < 0.1% of the FLOPs) always stay float in the default candidates:
# quantising them flips a large share of the decisions whatever the calibration (docs/int8.md has the figures).
DEFAULT_CANDIDATES: tuple[QuantConfig, ...] = tuple(
    QuantConfig(method, keep) for method in METHODS for keep in (("metadata", "head"), ("conv1", "metadata", "head"))
)
# What `search` chose for the v1.0.1 weights; the speed benchmark uses it when no int8 export is given.
DEFAULT_CONFIG = QuantConfig("minmax", ("conv1", "metadata", "head"))


# --------------------------------------------------------------------------------------------- calibration data
def simulated_inputs(n_sources: int = 60, seed: int = 1234, split: str = "train",
                     workdir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(triplets, metadata) of a small simulated survey's split: packets rendered by btsbot_jax.sim and prepared by
    the same ingest code as real ones."""
    from btsbot_jax.data.training_set import load_split
    from btsbot_jax.sim.pipeline import SimConfig, simulate

    with tempfile.TemporaryDirectory(prefix="btsbot-calib-", dir=workdir) as tmp:
        simulate(Path(tmp) / "sim", SimConfig(num_sources=n_sources, seed=seed, workers=1, keep_packets=False))
        s = load_split(Path(tmp) / "sim", split, mmap=False)
        return np.ascontiguousarray(s.triplets, np.float32), np.ascontiguousarray(s.metadata, np.float32)


class _Recorder:
    """A scorer stand-in for `score_paths` that keeps the model inputs (less the zero rows it pads with)."""

    def __init__(self, scorer):
        self._scorer = scorer
        self.triplets: list[np.ndarray] = []
        self.metadata: list[np.ndarray] = []

    def __getattr__(self, name):
        return getattr(self._scorer, name)

    def __call__(self, t, m):
        t, m = np.asarray(t, np.float32), np.asarray(m, np.float32)
        real = ~((t.reshape(len(t), -1) == 0).all(axis=1) & (m == 0).all(axis=1))
        self.triplets.append(t[real])
        self.metadata.append(m[real])
        return self._scorer(t, m)


def packet_inputs(scorer, paths: Sequence[str | os.PathLike]) -> tuple[np.ndarray, np.ndarray, Any]:
    """(triplets, metadata, ScoreResult) of the alert packets under `paths`, exactly as `btsbot-score` feeds the
    model (btsbot_jax.serve.batch.score_paths); the ScoreResult holds `scorer`'s scores."""
    from btsbot_jax.serve.batch import score_paths

    rec = _Recorder(scorer)
    res = score_paths(rec, list(paths), progress=False)
    if not rec.triplets:
        raise QuantizationError(f"no scorable alerts under {list(map(str, paths))}")
    return np.concatenate(rec.triplets), np.concatenate(rec.metadata), res


class _Reader:
    """onnxruntime CalibrationDataReader over (triplets, metadata) in fixed-size batches."""

    def __init__(self, t: np.ndarray, m: np.ndarray, batch: int = 64):
        self.t, self.m, self.batch = t, m, batch
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def _batches(self):
        for i in range(0, len(self.t), self.batch):
            yield {"triplet": self.t[i:i + self.batch], "metadata": self.m[i:i + self.batch]}

    def get_next(self):
        if self._it is None:
            self._it = self._batches()
        return next(self._it, None)

    def rewind(self):
        self._it = None


# --------------------------------------------------------------------------------------------------- quantising
def quantize(float_onnx: str | os.PathLike, out_onnx: str | os.PathLike, triplets: np.ndarray, metadata: np.ndarray,
             config: QuantConfig = QuantConfig()) -> Path:
    """Write the int8 QDQ model of `float_onnx` calibrated on (triplets, metadata) to `out_onnx`."""
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
    except ImportError as e:  # pragma: no cover - onnxruntime ships it
        raise QuantizationError(f"onnxruntime.quantization is not importable: {e}") from e
    if config.method not in METHODS:
        raise QuantizationError(f"unknown calibration method {config.method!r}; expected one of {METHODS}")
    if len(triplets) == 0 or len(triplets) != len(metadata):
        raise QuantizationError(f"calibration needs matching non-empty inputs, got {len(triplets)} triplets and "
                                f"{len(metadata)} metadata rows")
    reader = type("Reader", (_Reader, CalibrationDataReader), {})(np.asarray(triplets, np.float32),
                                                                 np.asarray(metadata, np.float32))
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[config.method]
    extra = {"ActivationSymmetric": False, "WeightSymmetric": True}
    if config.method == "percentile":
        extra["CalibPercentile"] = config.percentile
    out_onnx = Path(out_onnx)
    out_onnx.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="btsbot-quant-") as tmp:
        cache = None
        if config.method == "entropy":
            # quantize_static cannot pass the histogram size to the entropy calibrator, and with its default (128
            # bins, 128 quantised bins) the only threshold it can pick for a ReLU output is the full range, i.e.
            # MinMax. Calibrate here with 2048 bins (the usual TensorRT-style setting) and hand the ranges over as
            # quantize_static's calibration cache.
            from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

            cal = create_calibrator(Path(float_onnx), list(OP_TYPES),
                                    augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                    calibrate_method=method, providers=["CPUExecutionProvider"],
                                    extra_options={"num_bins": 2048, "num_quantized_bins": 128, "symmetric": False})
            cal.collect_data(reader)
            cache = Path(tmp) / "ranges.json"
            save_tensors_data(cal.compute_data(), cache)
            reader.rewind()
        quantize_static(  # calibration's augmented model goes to a temporary directory of onnxruntime's own
            str(float_onnx), str(out_onnx), reader,
            quant_format=QuantFormat.QDQ, per_channel=config.per_channel,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=False,
            op_types_to_quantize=list(OP_TYPES), nodes_to_exclude=config.nodes_to_exclude(),
            calibrate_method=method, extra_options=extra, calibration_providers=["CPUExecutionProvider"],
            calibration_cache_path=cache,
        )
    if config.bias_correction and "out" in config.float_groups():
        _correct_output_bias(float_onnx, out_onnx, triplets, metadata)
    return out_onnx


def _logit(s: np.ndarray) -> np.ndarray:
    s = np.clip(np.asarray(s, np.float64), 1e-7, 1 - 1e-7)
    return np.log(s / (1 - s))


def _correct_output_bias(float_onnx, int8_onnx, triplets, metadata) -> float:
    """Bias correction (Nagel et al. 2019, "Data-free quantization through weight equalization and bias
    correction", Sec. 4.2, applied to the last layer): int8 rounding shifts the logit systematically, which moves
    the scores lying just below 0.5 across the threshold. The median logit shift over the calibration inputs is
    added to the bias of the final Dense layer (kept in float32), so the int8 logits are centred on the float ones."""
    import onnx
    from onnx import numpy_helper

    shift = float(np.median(_logit(run_session(session(float_onnx), triplets, metadata))
                            - _logit(run_session(session(int8_onnx), triplets, metadata))))
    model = onnx.load(str(int8_onnx))
    for init in model.graph.initializer:
        if init.name == "head/out/bias":
            value = numpy_helper.to_array(init).astype(np.float32) + np.float32(shift)
            init.CopyFrom(numpy_helper.from_array(value, init.name))
            break
    else:
        raise QuantizationError(f"{int8_onnx}: no float 'head/out/bias' initializer to correct")
    onnx.save(model, str(int8_onnx))
    return shift


# ---------------------------------------------------------------------------------------------------- agreement
def session(onnx_path: str | os.PathLike, threads: int | None = None):
    """ONNX Runtime CPU session with its worker threads not spinning between calls (they would otherwise keep the
    cores busy after each call, to the cost of whatever runs next on the machine)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads:
        so.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])


def run_session(sess, t: np.ndarray, m: np.ndarray, batch: int = 256) -> np.ndarray:
    out = [sess.run(["fc_out"], {"triplet": t[i:i + batch], "metadata": m[i:i + batch]})[0][:, 0]
           for i in range(0, len(t), batch)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0,), np.float32)


def agreement(reference: np.ndarray, scores: np.ndarray, threshold: float = THRESHOLD) -> dict[str, Any]:
    """How far `scores` are from `reference`: fraction of identical decisions at `threshold` (score > threshold,
    as the policies use it), the rows that flip, and the |difference| statistics."""
    reference, scores = np.asarray(reference, np.float64), np.asarray(scores, np.float64)
    if reference.shape != scores.shape:
        raise ValueError(f"score arrays differ in shape: {reference.shape} vs {scores.shape}")
    flips = np.flatnonzero((reference > threshold) != (scores > threshold))
    d = np.abs(reference - scores)
    return {
        "n": int(reference.size),
        "identical_decisions": round(1.0 - flips.size / max(reference.size, 1), 6),
        "n_flipped": int(flips.size),
        "flipped_rows": flips[:20].tolist(),
        "max_abs_diff": round(float(d.max()), 6) if d.size else 0.0,
        "mean_abs_diff": round(float(d.mean()), 6) if d.size else 0.0,
        "p99_abs_diff": round(float(np.percentile(d, 99)), 6) if d.size else 0.0,
    }


def search(float_onnx: str | os.PathLike, calibration: tuple[np.ndarray, np.ndarray],
           holdout: dict[str, tuple[np.ndarray, np.ndarray]], candidates: Sequence[QuantConfig] = DEFAULT_CANDIDATES,
           workdir: str | os.PathLike | None = None) -> tuple[QuantConfig, list[dict[str, Any]]]:
    """Quantise with every candidate, score every held-out set with it and with the float model, and pick the
    candidate with the most identical decisions (summed over the sets), then the smallest max |difference|, then
    the fewest float nodes (faster). Returns (chosen config, one row per candidate)."""
    if not candidates:
        raise QuantizationError("no candidate configurations")
    ref_sess = session(float_onnx)
    refs = {k: run_session(ref_sess, t, m) for k, (t, m) in holdout.items()}
    rows = []
    with tempfile.TemporaryDirectory(prefix="btsbot-qsearch-", dir=workdir) as tmp:
        for i, cfg in enumerate(candidates):
            path = Path(tmp) / f"cand{i}.onnx"
            quantize(float_onnx, path, *calibration, config=cfg)
            sess = session(path)
            agree = {k: agreement(refs[k], run_session(sess, t, m)) for k, (t, m) in holdout.items()}
            flipped = sum(a["n_flipped"] for a in agree.values())
            worst = max(a["max_abs_diff"] for a in agree.values())
            rows.append({"config": dataclasses.asdict(cfg), "name": cfg.name, "n_flipped": flipped,
                         "max_abs_diff": worst, "agreement": agree})
            log.info("int8 candidate %s: %d flipped decisions, max |diff| %.4f", cfg.name, flipped, worst)
    best = min(range(len(rows)), key=lambda i: (rows[i]["n_flipped"], rows[i]["max_abs_diff"],
                                                len(candidates[i].nodes_to_exclude())))
    return candidates[best], rows


__all__ = [
    "DEFAULT_CANDIDATES", "METHODS", "QuantConfig", "QuantizationError", "SENSITIVE", "THRESHOLD", "agreement",
    "packet_inputs", "quantize", "run_session", "search", "session", "simulated_inputs",
]


# ------------------------------------------------------------------------------------------------------- export
def simulated_splits(n_sources: int = 60, seed: int = 1234, workdir: str | os.PathLike | None = None
                     ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (triplets, metadata)} of a small simulated survey (train for calibration, val to choose)."""
    from btsbot_jax.data.training_set import load_split
    from btsbot_jax.sim.pipeline import SimConfig, simulate

    with tempfile.TemporaryDirectory(prefix="btsbot-calib-", dir=workdir) as tmp:
        simulate(Path(tmp) / "sim", SimConfig(num_sources=n_sources, seed=seed, workers=1, keep_packets=False))
        out = {}
        for split in ("train", "val"):
            s = load_split(Path(tmp) / "sim", split, mmap=False)
            out[split] = (np.ascontiguousarray(s.triplets, np.float32), np.ascontiguousarray(s.metadata, np.float32))
        return out


def export_int8(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False,
                real_paths: Sequence[str | os.PathLike] = (), sim_sources: int = 60, max_calibration: int = 512,
                candidates: Sequence[QuantConfig] = DEFAULT_CANDIDATES,
                min_identical: float = MIN_IDENTICAL) -> dict[str, Any]:
    """`btsbot-export --format=onnx_int8`: float ONNX export -> calibration inputs (a simulated survey's train
    split, and every other real packet under `real_paths`) -> `search` over `candidates` on held-out inputs (the
    simulated val split, the other real packets) -> the chosen int8 model, its card recording the configuration,
    every candidate's agreement and the chosen one's. Refuses (nothing written) when the chosen model's identical
    decisions on the held-out inputs fall below `min_identical`. Returns the written model card."""
    import json
    import shutil

    from btsbot_jax.inference.export import export_model
    from btsbot_jax.inference.runtimes import ARTIFACTS, MODEL_CARD, load_exported

    out = Path(out_dir).absolute()
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
        raise ExportError(f"{out} exists and is not empty; choose another --out or pass overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        float_card = export_model(checkpoint, tmp / "float", "onnx")
        float_onnx = tmp / "float" / ARTIFACTS["onnx"]
        rng = np.random.default_rng(0)
        sim = simulated_splits(sim_sources, workdir=tmp)
        k = min(len(sim["train"][0]), max_calibration // (2 if real_paths else 1))
        pick = np.sort(rng.choice(len(sim["train"][0]), k, replace=False))
        cal_t, cal_m = [sim["train"][0][pick]], [sim["train"][1][pick]]
        holdout = {"simulated_val": sim["val"]}
        n_real = 0
        if real_paths:
            rt, rm, _ = packet_inputs(load_exported(tmp / "float"), real_paths)
            n_real = len(rt)
            cal_t.append(rt[0::2][:max_calibration - k])
            cal_m.append(rm[0::2][:max_calibration - k])
            holdout["real_heldout"] = (rt[1::2], rm[1::2])
        calibration = (np.concatenate(cal_t), np.concatenate(cal_m))
        chosen, rows = search(float_onnx, calibration, holdout, candidates, workdir=tmp)
        d = tmp / "int8"
        d.mkdir()
        quantize(float_onnx, d / ARTIFACTS["onnx"], *calibration, config=chosen)
        best = next(r for r in rows if r["name"] == chosen.name)
        n = sum(a["n"] for a in best["agreement"].values())
        identical = 1.0 - best["n_flipped"] / max(n, 1)
        if identical < min_identical:
            raise QuantizationError(
                f"best int8 configuration ({chosen.name}) agrees with float32 on only {identical:.2%} of the "
                f"{n} held-out decisions (< {min_identical:.2%}); nothing was written")
        card = {k: v for k, v in float_card.items() if k not in ("verification",)}
        card.update(
            format=INT8_FORMAT,
            quantization={
                "route": "onnxruntime.quantization.quantize_static, QDQ, per-channel int8 weights, uint8 activations",
                "config": dataclasses.asdict(chosen), "name": chosen.name,
                "float_nodes": chosen.nodes_to_exclude(), "op_types": list(OP_TYPES),
                "calibration": {"simulated": int(k), "real": int(len(calibration[0]) - k),
                                "simulated_sources": sim_sources, "real_packets_read": n_real},
                "candidates": [{"name": r["name"], "n_flipped": r["n_flipped"], "max_abs_diff": r["max_abs_diff"]}
                               for r in rows],
            },
            verification={"reference": "float32 ONNX export of the same model", "threshold": THRESHOLD,
                          "identical_decisions": round(identical, 6), "max_abs_diff": best["max_abs_diff"],
                          "n_holdout": int(n), "holdout": best["agreement"], "min_identical": min_identical},
        )
        (d / MODEL_CARD).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        load_exported(d)(*probe_batch(calibration))  # the written directory loads through the public path
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        d.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return card


def probe_batch(inputs: tuple[np.ndarray, np.ndarray], n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    return inputs[0][:n], inputs[1][:n]
