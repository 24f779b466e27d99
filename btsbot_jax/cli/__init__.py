"""Command-line entry points (absl flags). Library code never defines flags, so modules import freely."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from btsbot_jax.cli import quiet


def run(main: Callable, required: Sequence[str] = ()) -> None:
    """`absl.app.run(main)` with what every command sets up: its required flags, TensorFlow's C++ INFO logs off,
    and the libraries' INFO chatter off (orbax logs every checkpoint read and write) unless --verbosity is given."""
    from absl import app, flags, logging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    flags.mark_flags_as_required(list(required))

    def wrapped(argv):
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
            quiet.install()
        return main(argv)

    app.run(wrapped)
