"""Results tables of the experiment scripts: CSV, JSON and a Markdown table (no extra dependency)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return "" if v is None else str(v)


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_results(out: Path, rows: Sequence[dict], columns: Sequence[str], name: str = "results") -> None:
    import pandas as pd

    pd.DataFrame(list(rows), columns=list(columns)).to_csv(out / f"{name}.csv", index=False)
    (out / f"{name}.json").write_text(json.dumps(list(rows), indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown_table(rows, columns))
