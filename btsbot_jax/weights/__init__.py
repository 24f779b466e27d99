"""Models shipped inside the package, loadable by name: `btsbot_jax.load_scorer("v1.0.1")`.

Each is an ordinary model directory (`btsbot_jax.models.model_dir`: model_card.json + weights.safetensors) with the
upstream licence and a PROVENANCE.md beside the weights. `btsbot_jax.weights.build` re-creates them from the
published SavedModel; tests/test_packaged_weights.py checks the shipped bytes against such a rebuild.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PACKAGED = ("v1.0.1",)  # names a user can pass wherever a checkpoint path is expected
DEFAULT_MODEL = "v1.0.1"  # what btsbot-score / btsbot-stream use without --checkpoint


def packaged_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """Path of a packaged model directory (inside the installed package; read-only for users)."""
    if name not in PACKAGED:
        raise KeyError(f"no packaged model {name!r}; packaged: {', '.join(PACKAGED)}")
    path = Path(str(resources.files(__name__).joinpath(name)))
    if not (path / "model_card.json").is_file():
        raise FileNotFoundError(
            f"packaged model {name!r} is missing from this installation ({path}); reinstall btsbot-jax"
        )
    return path


__all__ = ["DEFAULT_MODEL", "PACKAGED", "packaged_model_dir"]
