"""btsbot-jax: BTSbot (Rehemtulla et al. 2024) in JAX/Flax.

BTSbot v2 (Rehemtulla et al. 2025) models are imported from their PyTorch weights with `import_torch`.
The heavy entry points are imported lazily so `import btsbot_jax` stays cheap (no TensorFlow import).
"""

__version__ = "0.1.0"

_LAZY = {
    "import_keras": "btsbot_jax.inference.import_keras",
    "import_torch": "btsbot_jax.inference.import_torch",
    "load_scorer": "btsbot_jax.inference.scorer",
    "Scorer": "btsbot_jax.inference.scorer",
    "create_model": "btsbot_jax.models",
    "default_model_config": "btsbot_jax.models",
    "load_model": "btsbot_jax.models.model_dir",
    "save_model": "btsbot_jax.models.model_dir",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'btsbot_jax' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
