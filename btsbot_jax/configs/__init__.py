"""`get_config()` files, importable (`from btsbot_jax.configs import prod`) and loadable by path
(`btsbot-train --config=experiments/configs/prod.py`, or by name: `--config=prod`). Each variant starts from
`default.get_config()` or another variant and changes a few fields, as the Flax examples do."""

from __future__ import annotations

import importlib
from pathlib import Path

CONFIG_DIR = Path(__file__).parent
NAMES = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.stem.startswith("_")))


def get(name: str):
    """`get_config()` of the packaged config `name` (e.g. 'prod', 'demo')."""
    if name not in NAMES:
        raise ValueError(f"no packaged config {name!r}; the packaged configs are {', '.join(NAMES)}")
    return importlib.import_module(f"btsbot_jax.configs.{name}").get_config()
