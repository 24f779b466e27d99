"""Keep TensorFlow's start-up chatter off a command's stderr.

TensorFlow writes its oneDNN notice, "Could not find cuda drivers" and the failed `cuInit` of a CPU-only machine
straight to file descriptor 2 from C++ (before absl logging is initialised, so TF_CPP_MIN_LOG_LEVEL does not
silence them). A command that is not asked for `--verbosity` therefore imports TensorFlow, and lets it probe for
GPUs, with descriptor 2 pointed at /dev/null. Only the first import is wrapped; TF's later warnings and errors, and
everything else on stderr, still show.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import os
import sys


@contextlib.contextmanager
def stderr_silenced():
    """Point file descriptor 2 (what C++ writes to) at /dev/null for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """On the first `import tensorflow` (wherever it happens), do that import and the GPU probe silently."""

    def __init__(self):
        self._busy = False

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow" or self._busy:
            return None
        self._busy = True
        try:
            with stderr_silenced():
                tf = importlib.import_module("tensorflow")
                with contextlib.suppress(Exception):
                    tf.config.list_physical_devices("GPU")  # the cuInit probe happens here, once per process
        finally:
            uninstall()
        return None  # tensorflow is now in sys.modules; the import machinery returns it


_finder: _QuietTensorFlowImport | None = None


def install() -> None:
    """Silence TensorFlow's first import in this process (no-op if it is already imported)."""
    global _finder
    if _finder is None and "tensorflow" not in sys.modules:
        _finder = _QuietTensorFlowImport()
        sys.meta_path.insert(0, _finder)


def uninstall() -> None:
    global _finder
    if _finder is not None:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(_finder)
        _finder = None
