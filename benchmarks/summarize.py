"""Markdown tables from the benchmark JSONs (what benchmarks/README.md's results section is made of).

    python benchmarks/summarize.py                       # every results/*.json that is not a --quick run
    python benchmarks/summarize.py results/inference_cpu.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _machine(m: dict) -> str:
    la = m.get("load_average_at_start"), m.get("load_average_at_end")
    return (f"{m['date_utc'][:16].replace('T', ' ')} UTC, {m['cpu_model']} ({m['cpu_cores_usable']} cores), "
            f"{m['device_kind']} x{m['device_count']}, jax {m['versions'].get('jax')}, "
            f"TF {m['versions'].get('tensorflow', m['versions'].get('tensorflow-cpu'))}, "
            f"onnxruntime {m['versions'].get('onnxruntime')}; 1-min load average {la[0][0] if la[0] else '?'} at "
            f"start, {la[1][0] if la[1] else '?'} at end" + (" (machine busy)" if m.get("machine_busy") else ""))


def inference(r: dict) -> str:
    names = r["runtimes"]
    lines = [f"Inference ({_machine(r['machine'])}). Alerts/s, ratio to TF v1.0.1 in brackets "
             f"(per-round min-max), compute limit measured in the same rounds:", "",
             "| batch | " + " | ".join(names) + " | compute limit |", "|---" * (len(names) + 2) + "|"]
    for b, row in r["results"].items():
        rr = r["ratios_vs_tf_v101"].get(b, {})
        cells = []
        for n in names:
            c = f"{row[n]['throughput']:.1f}"
            if n in rr and n != "tf_v101":
                c += f" ({rr[n]['ratio']:.2f}x, {rr[n]['per_round_min']:.2f}-{rr[n]['per_round_max']:.2f})"
            cells.append(c)
        lines.append(f"| {b} | " + " | ".join(cells) + f" | {row['compute_limit']['throughput']:.1f} |")
    lines += ["", "p50 / p99 latency per call (ms):", "", "| batch | " + " | ".join(names) + " |",
              "|---" * (len(names) + 1) + "|"]
    for b, row in r["results"].items():
        lines.append(f"| {b} | " + " | ".join(
            f"{row[n]['latency_ms']['p50']:.1f} / {row[n]['latency_ms']['p99']:.1f}" for n in names) + " |")
    lines += ["", "Best fraction of the compute limit reached: " + ", ".join(
        f"{k} {v:.2f}" for k, v in r["best_fraction_of_compute_limit"].items())]
    return "\n".join(lines)


def end_to_end(r: dict) -> str:
    lines = [f"End to end ({_machine(r['machine'])}); corpus: {r['corpus']['description']}.", "",
             "| batch | alerts through the pipeline | pipeline alerts/s | model-only alerts/s | Kowalski loop alerts/s "
             "| pipeline / model-only | pipeline / Kowalski | model-only / Kowalski |", "|---" * 8 + "|"]
    for b, row in r["results"].items():
        rr = r["ratios"][b]
        k = row.get("kowalski")
        cells = [b, f"{r['pipeline_accounting'][b]['records']:,}", f"{row['pipeline']['throughput']:.1f}",
                 f"{row['model_only']['throughput']:.1f}", f"{k['throughput']:.1f}" if k else "-"]
        for key in ("pipeline_vs_model_only", "pipeline_vs_kowalski", "model_only_vs_kowalski"):
            x = rr.get(key)
            cells.append(f"{x['ratio']:.2f}x ({x['per_round_min']:.2f}-{x['per_round_max']:.2f})" if x else "-")
        lines.append("| " + " | ".join(cells) + " |")
    st = r.get("stage_ms_per_alert") or {}
    if st:
        lines += ["", f"Serial stage costs, ms per alert: ours {st.get('pipeline_serial_one_pass')}; "
                      f"Kowalski loop {st.get('kowalski')}"]
    if r.get("kowalski_agreement"):
        lines += [f"Scores of the pipeline vs the Kowalski loop: {r['kowalski_agreement']}"]
    return "\n".join(lines)


def training(r: dict) -> str:
    res = r["results_samples_per_s"]
    lines = [f"Training ({_machine(r['machine'])}), batch {r['config']['batch_size']}, "
             f"{r['config']['rounds']} rounds x {r['config']['steps_per_call']} steps:", "",
             "| runtime | samples/s | per round | first call (compile + 1 step), s |", "|---|---|---|---|"]
    for k, v in res.items():
        lines.append(f"| {k} | {v['throughput']:.1f} | {', '.join(f'{x:.1f}' for x in v['throughput_per_round'])} "
                     f"| {r['compile_or_first_call_seconds'].get(k, '-')} |")
    lines += ["", "Ratios (per-round min-max): " + "; ".join(
        f"jax_train_step / {k}: {v['ratio']:.2f}x ({v['per_round_min']:.2f}-{v['per_round_max']:.2f})"
        for k, v in r["ratios_jax_vs"].items())]
    return "\n".join(lines)


def targets(r: dict) -> str:
    return "\n".join(f"- {t['target']}: {t['ratio']:.2f}x (worst round {t['per_round_min']:.2f}x) -> "
                     f"{'met' if t['met'] else 'MISSED'}" for t in r.get("targets", []))


def main(paths: list[str]) -> None:
    files = [Path(p) for p in paths] or sorted(p for p in RESULTS.glob("*.json")
                                               if "_quick" not in p.stem and not p.stem.startswith("profile"))
    for f in files:
        r = json.loads(f.read_text())
        kind = r.get("benchmark")
        body = {"inference": inference, "end_to_end": end_to_end, "training": training}.get(kind)
        if body is None:
            continue
        print(f"### {f.name}\n\n{body(r)}\n\n{targets(r)}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
