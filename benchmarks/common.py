"""Shared helpers of the benchmarks: what ran them, interleaved timing, stream rates, model FLOPs, figures.

Timings on a shared machine drift by tens of percent within a minute, so every benchmark measures the runtimes it
compares in the same process and in alternating slices (A B C A B C ..., the order rotated every round): drift
then hits all of them alike and the ratios stay meaningful even when the absolute rates do not. Each round gives
one throughput per runtime; the ratio of two runtimes is reported over the whole run and per round (min/max), so
a reader sees how much the ratio itself moved.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
SHARED_DATA = Path(os.environ.get("BTSBOT_SHARED", REPO.parent / "shared")) / "data"
V101_SAVED_MODEL = SHARED_DATA / "btsbot_v1.0.1" / "best_model"
ZTF_ALERTS = SHARED_DATA / "ztf_alerts"
ZTF_ALERTS_FINK = SHARED_DATA / "ztf_alerts_fink"

# Alert stream rates (ZTF and Rubin/LSST published rates), in alerts per second.
STREAM_RATES: tuple[tuple[str, float], ...] = (
    ("ZTF average (1e6 alerts / 10 h night)", 1e6 / (10 * 3600)),
    ("Rubin/LSST (10,000 alerts / 30 s visit)", 10_000 / 30),
    ("ZTF burst (~80,000 alerts / min)", 80_000 / 60),
)
VERSIONED_PACKAGES = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax", "numpy",
                      "tensorflow", "tensorflow-cpu", "keras", "tf-keras", "onnx", "onnxruntime", "onnxruntime-gpu",
                      "fastavro", "astropy")


# ----------------------------------------------------------------------------------------------- machine
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "btsbot_jax", "benchmarks"],
                               capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    """Installed versions, read from package metadata (imports nothing heavy)."""
    found = {}
    for p in VERSIONED_PACKAGES:
        try:
            found[p] = _metadata.version(p)
        except _metadata.PackageNotFoundError:
            pass
    return found


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    """Everything a reader needs to place the numbers: host, CPU, accelerators, versions, flags, load."""
    import jax

    devices = jax.devices()
    try:
        cores_usable = len(os.sched_getaffinity(0))
    except AttributeError:
        cores_usable = os.cpu_count()
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        mem_gib = None
    return {
        "date_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_cores_usable": cores_usable,
        "memory_gib": mem_gib,
        "load_average_at_start": load_average(),
        "jax_backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "devices": [str(d) for d in devices],
        "versions": versions(),
        "env": {k: os.environ[k] for k in ("XLA_FLAGS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS",
                                           "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "JAX_PLATFORMS")
                if k in os.environ},
        "git_commit": _git_commit(),
        "argv": sys.argv,
    }


def finish_machine_info(info: dict[str, Any]) -> dict[str, Any]:
    info["load_average_at_end"] = load_average()
    la = [x for x in (info.get("load_average_at_start") or [])[:1] + (info["load_average_at_end"] or [])[:1]]
    cores = info.get("cpu_cores_usable") or 1
    info["machine_busy"] = bool(la) and max(la) > 0.75 * cores + 0.5
    return info


# ----------------------------------------------------------------------------------------------- model
def mm_cnn_flops(image_size: int = 63, c1: int = 32, c2: int = 64, k: int = 5, n_meta: int = 25,
                 meta1: int = 128, meta2: int = 128, comb: int = 8) -> int:
    """Floating-point operations of one mm_cnn forward pass (a multiply-add counts 2), from the paper's Table 2."""
    s1, s2 = image_size, image_size // 2
    convs = 2 * k * k * (s1 * s1 * (3 * c1 + c1 * c1) + s2 * s2 * (c1 * c2 + c2 * c2))
    flat = (s2 // 4) ** 2 * c2
    dense = 2 * (n_meta * meta1 + meta1 * meta2 + (flat + meta2) * comb + comb)
    return int(convs + dense)


def matmul_call(n: int = 1024):
    """(zero-argument call of a jitted n x n float32 matmul on the default jax device, its FLOPs): interleaved
    with the model, its rate is the attainable compute ceiling under the same machine load."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    return (lambda: f(a).block_until_ready()), 2.0 * n**3


def matmul_gflops(seconds: float = 2.0, n: int = 1024) -> dict[str, float]:
    """Attainable float32 GFLOP/s of the default jax device on a large matmul: the compute ceiling to which the
    model's rate is compared (on a CPU this is the BLAS-like peak of all cores; on a GPU, of the chip)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best, times = 0.0, []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 3:
        t0 = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t0)
    flops = 2.0 * n**3
    best = flops / min(times) / 1e9
    return {"n": n, "best_gflops": round(best, 2), "median_gflops": round(flops / float(np.median(times)) / 1e9, 2)}


def model_dir(workdir: Path, checkpoint: str | None = None) -> tuple[Path, str]:
    """(model directory, where its weights come from): `checkpoint` if given, else the published v1.0.1 weights
    imported from ../shared/data (so every ratio to TF v1.0.1 compares the same model), else the same weights as
    shipped inside the package (bit-identical; tests/test_packaged_weights.py)."""
    if checkpoint:
        return Path(checkpoint), f"checkpoint {checkpoint}"
    if V101_SAVED_MODEL.exists():
        from btsbot_jax.inference.import_keras import import_keras

        return Path(import_keras(V101_SAVED_MODEL, workdir / "v101")), "v1.0.1 imported from ../shared/data"
    from btsbot_jax.weights import packaged_model_dir

    return packaged_model_dir("v1.0.1"), "v1.0.1 shipped in the package (btsbot_jax/weights)"


# ----------------------------------------------------------------------------------------------- timing
def interleave(cases: Mapping[str, Callable[[], Any]], *, rounds: int, slice_seconds: float, min_calls: int = 1,
               max_calls: int = 100_000, warmup: int = 1,
               log: Callable[[str], None] | None = None) -> dict[str, list[list[float]]]:
    """Time each case in alternating slices: `rounds` rounds, each giving every case about `slice_seconds`
    (at least `min_calls` calls); the order of the cases is rotated every round. Each callable must block until
    its result is ready. Returns {case: [[call seconds of round 0], [round 1], ...]}."""
    names = list(cases)
    for name in names:
        for _ in range(warmup):
            cases[name]()
    out: dict[str, list[list[float]]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            fn, times = cases[name], []
            t_slice = time.perf_counter() + slice_seconds
            while (len(times) < min_calls or time.perf_counter() < t_slice) and len(times) < max_calls:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            out[name].append(times)
        if log is not None:
            log(f"  round {r + 1}/{rounds}: " + ", ".join(
                f"{n} {len(out[n][-1])} calls" for n in names))
    return out


def summarize(rounds: list[list[float]], items_per_call: float) -> dict[str, Any]:
    """Throughput (items/s over all calls), per-round throughputs, and per-call latency percentiles in ms."""
    all_t = np.asarray([t for r in rounds for t in r], np.float64)
    per_round = [items_per_call * len(r) / sum(r) for r in rounds if r]
    return {
        "calls": int(all_t.size),
        "items_per_call": items_per_call,
        "seconds": round(float(all_t.sum()), 4),
        "throughput": round(items_per_call * all_t.size / float(all_t.sum()), 3),
        "throughput_per_round": [round(x, 3) for x in per_round],
        "latency_ms": {
            "p50": round(1e3 * float(np.percentile(all_t, 50)), 4),
            "p90": round(1e3 * float(np.percentile(all_t, 90)), 4),
            "p99": round(1e3 * float(np.percentile(all_t, 99)), 4),
            "min": round(1e3 * float(all_t.min()), 4),
            "mean": round(1e3 * float(all_t.mean()), 4),
        },
    }


def ratio(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, float]:
    """a/b throughput over the whole run, and the min/median/max of the per-round ratios (same round = same drift)."""
    per = [x / y for x, y in zip(a["throughput_per_round"], b["throughput_per_round"]) if y > 0]
    return {
        "ratio": round(a["throughput"] / b["throughput"], 4),
        "per_round_min": round(min(per), 4) if per else None,
        "per_round_median": round(float(np.median(per)), 4) if per else None,
        "per_round_max": round(max(per), 4) if per else None,
    }


# ----------------------------------------------------------------------------------------------- output
def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(path: str | os.PathLike, obj: Mapping[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(obj), indent=2) + "\n")
    tmp.replace(path)
    return path


def plot_throughput(path: str | os.PathLike, series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
                    title: str, xlabel: str = "batch size (alerts per call)",
                    ylabel: str = "throughput (alerts / s)", ceiling: float | None = None,
                    ceiling_label: str = "float32 compute limit", points: Mapping[str, float] | None = None,
                    log_x: bool = True) -> Path:
    """Throughput per runtime against batch size (log-log), with the three stream rates as horizontal lines,
    the compute ceiling if known, and single-rate `points` (e.g. an end-to-end rate) as labelled lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 5.5), dpi=120)
    markers = "osD^v<>ph*"
    for i, (name, (xs, ys)) in enumerate(series.items()):
        ax.plot(xs, ys, marker=markers[i % len(markers)], label=name)
    styles = (":", "--", "-.")
    for i, (label, rate) in enumerate(STREAM_RATES):
        ax.axhline(rate, color="0.35", ls=styles[i % 3], lw=1.2)
        ax.annotate(f"{label}: {rate:,.0f}/s", xy=(0.01, rate), xycoords=("axes fraction", "data"),
                    xytext=(0, 3), textcoords="offset points", fontsize=8, color="0.25")
    if ceiling:
        ax.axhline(ceiling, color="tab:red", ls="-", lw=0.8, alpha=0.6)
        ax.annotate(f"{ceiling_label}: {ceiling:,.0f}/s", xy=(0.99, ceiling), xycoords=("axes fraction", "data"),
                    xytext=(0, 3), textcoords="offset points", fontsize=8, color="tab:red", ha="right")
    for i, (label, rate) in enumerate((points or {}).items()):
        ax.axhline(rate, color=f"C{(len(series) + i) % 10}", ls="--", lw=1.5, label=f"{label}: {rate:,.0f}/s")
    if log_x:
        ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def log(msg: str) -> None:
    print(msg, flush=True)


def make_inputs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Alert-like inputs: L2-normalised noise cutouts (the scale of real ones, no denormals) and metadata from the
    39 real labelled alerts where present (so the BatchNorm branch sees real magnitudes), else around them."""
    rng = np.random.default_rng(seed)
    t = np.abs(rng.normal(size=(n, 63, 63, 3))).astype(np.float32)
    t /= np.sqrt((t**2).sum(axis=(1, 2), keepdims=True))
    csv = SHARED_DATA / "btsbot_examples" / "usage_candidates.csv"
    if csv.exists():
        import pandas as pd

        from btsbot_jax.data.training_set import metadata_matrix

        real = metadata_matrix(pd.read_csv(csv))
        m = real[rng.integers(0, len(real), n)]
    else:
        m = rng.normal(size=(n, 25)).astype(np.float32) * 10
    return np.ascontiguousarray(t), np.ascontiguousarray(m, dtype=np.float32)
