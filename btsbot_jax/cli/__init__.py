"""Command-line entry points (absl flags). Library code never defines flags, so modules import freely.

Every command goes through `run()`, the one place that decides what a user sees when something is wrong:

- exit 0: done; 1: some input could not be read (btsbot-score) or an unexpected error; 2: bad flags or arguments,
  or an input that cannot be used (missing file, bad config, unusable checkpoint, ...);
- a mistake is one line on stderr, `btsbot-<command>: <what is wrong>`, never a traceback (an unexpected error
  shows its traceback only with --verbosity);
- `--help`/`--helpshort` list the command's own flags, `--version` prints `btsbot-jax <version>`;
- `~` and environment variables in path flags are expanded (a literal folder named `~` is a trap).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence

from btsbot_jax.cli import quiet

# Library errors that mean "the user's input or flags are wrong" (all ValueError/OSError subclasses; listed so the
# intent is explicit). Anything else escaping a command is a bug: one line, exit 1, traceback with --verbosity.
USER_ERRORS = (ValueError, OSError)


class UsageError(Exception):
    """A mistake the user can fix; `run()` prints `btsbot-<cmd>: <message>` and exits with `code`."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def expand_path(path):
    """`~` and `$VARS` expanded (None and non-strings pass through)."""
    if isinstance(path, (str, os.PathLike)):
        return os.path.expandvars(os.path.expanduser(os.fspath(path)))
    return path


def version_string() -> str:
    from btsbot_jax import __version__

    return f"btsbot-jax {__version__}"


def _command_name(module_name: str) -> str:
    if module_name == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module_name = getattr(spec, "name", None) or os.path.basename(sys.argv[0])
    return "btsbot-" + module_name.rsplit(".", 1)[-1].replace("_", "-").removeprefix("btsbot-")


def _fail(cmd: str, message: str, code: int) -> None:
    sys.stderr.write(f"{cmd}: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


def _verbose() -> bool:
    from absl import flags

    try:
        return flags.FLAGS["verbosity"].present > 0
    except Exception:  # noqa: BLE001 - flags not parsed yet
        return any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:])


def _show_own_flags_in_help(module_name: str) -> None:
    """absl's --help lists the flags of the module named sys.argv[0]; a console script's argv[0] is its wrapper
    (bin/btsbot-score), so register the command module's flags under that name too."""
    from absl import flags

    main = sys.modules["__main__"]
    if module_name != "__main__":
        own = flags.FLAGS.get_flags_for_module(module_name)
        have = {f.name for f in flags.FLAGS.get_flags_for_module(sys.argv[0])}
        for f in own:
            if f.name not in have:
                flags.FLAGS.register_flag_by_module(sys.argv[0], f)
        if not main.__doc__:
            main.__doc__ = sys.modules[module_name].__doc__
    if "version" in flags.FLAGS and flags.FLAGS["version"] not in flags.FLAGS.get_flags_for_module(sys.argv[0]):
        flags.FLAGS.register_flag_by_module(sys.argv[0], flags.FLAGS["version"])


def run(main: Callable, required: Sequence[str] = (), paths: Iterable[str] = ()) -> None:
    """`absl.app.run(main)` with what every command shares (see the module docstring). `required`: flags that
    must be given; `paths`: flags holding paths (or lists of paths) whose `~`/`$VARS` are expanded."""
    from absl import app, flags, logging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    module_name = getattr(main, "__module__", "__main__")
    cmd = _command_name(module_name)
    if "--version" in sys.argv[1:]:
        print(version_string())
        sys.exit(0)
    if "data_version" in flags.FLAGS:  # simulate/prepare called their file-name tag --version before 0.1.1
        for i, a in enumerate(sys.argv):
            if a.startswith("--version="):
                sys.stderr.write(f"{cmd}: --version=TAG is now --data_version=TAG (--version prints the "
                                 "btsbot-jax version)\n")
                sys.argv[i] = "--data_version=" + a[len("--version="):]
    if "version" not in flags.FLAGS:
        flags.DEFINE_bool("version", False, "Print the btsbot-jax version and exit.")
    _show_own_flags_in_help(module_name)

    def parse(argv):
        try:
            return flags.FLAGS(argv)
        except SystemExit as e:  # absl's --help/--helpshort/--helpfull print and exit 1; asking for help is ok
            help_flags = ("--help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")
            if e.code == 1 and any(a in help_flags for a in argv[1:]):
                sys.exit(0)
            raise
        except flags.Error as e:
            _fail(cmd, f"{e} (see --help)", 2)
        except (AttributeError, KeyError, ValueError, OSError, TypeError) as e:  # ml_collections config flags
            if _verbose():
                traceback.print_exc()
            if isinstance(e, (AttributeError, KeyError)) and any(a.startswith("--config.") for a in argv):
                _fail(cmd, f"unknown config field {e} in a --config.FIELD=VALUE override (the fields are those "
                           "of the config file's get_config())", 2)
            _fail(cmd, f"cannot parse the flags: {type(e).__name__}: {e}", 2)

    def wrapped(argv):
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
            quiet.install()
        missing = [f"--{name}" for name in required if flags.FLAGS[name].value in (None, [], "")]
        if missing:
            _fail(cmd, f"missing required flag(s) {', '.join(missing)} (see --help)", 2)
        for name in paths:
            fl = flags.FLAGS[name]
            if isinstance(fl.value, list):
                fl.value = [expand_path(v) for v in fl.value]
            else:
                fl.value = expand_path(fl.value)
        try:
            return main(argv)
        except UsageError as e:
            _fail(cmd, str(e), e.code)
        except app.UsageError as e:
            _fail(cmd, f"{e} (see --help)", 2)
        except USER_ERRORS as e:
            if _verbose():
                traceback.print_exc()
            msg = str(e) or type(e).__name__
            if isinstance(e, OSError) and e.filename is not None and str(e.filename) not in msg:
                msg = f"{e.filename}: {msg}"
            _fail(cmd, msg, 2)
        except (SystemExit, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - a bug: say so in one line; the traceback is one flag away
            if _verbose():
                traceback.print_exc()
                _fail(cmd, f"internal error: {type(e).__name__}: {e}", 1)
            _fail(cmd, f"internal error: {type(e).__name__}: {e} (rerun with --verbosity=1 for the traceback)", 1)

    app.run(wrapped, flags_parser=parse)
