"""Kafka client settings from the command line, a file or the environment, with secrets kept out of logs.

A password on the command line is visible to every user of the machine (`ps`), so a setting's value may instead
name where to find it: `@PATH` (the file's content, one trailing newline dropped) or `env:VAR` (an environment
variable); `read_config_file` reads `key=value` lines (`#` comments) in which values may do the same. `redact`
replaces the values of secret settings (passwords, keys, tokens, JAAS configs) by `***` for anything that is
logged or reported.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

REDACTED = "***"
# librdkafka settings that hold secrets: *.password, sasl.jaas.config, ssl.key.pem, ssl.keystore.password,
# sasl.oauthbearer.client.secret, sasl.oauthbearer.config (may hold a client secret), ssl_key-like PEM contents
_SECRET = re.compile(r"(password|secret|jaas|\.pem$|token|credential|oauthbearer\.config|private)", re.I)


class ConfigError(ValueError):
    """A setting that cannot be read (bad pair, missing file or variable)."""


def is_secret(key: str) -> bool:
    return bool(_SECRET.search(key))


def resolve_value(key: str, value: str) -> str:
    """`@PATH` -> the file's content; `env:VAR` -> the variable's value; anything else as is (`@@x` -> `@x`)."""
    if value.startswith("@@"):
        return value[1:]
    if value.startswith("@"):
        path = Path(value[1:]).expanduser()
        try:
            text = path.read_text()
        except OSError as e:
            raise ConfigError(f"setting {key}: cannot read {path}: {e.strerror or e}") from None
        return text[:-1] if text.endswith("\n") else text
    if value.startswith("env:"):
        var = value[4:]
        if var not in os.environ:
            raise ConfigError(f"setting {key}: environment variable {var} is not set")
        return os.environ[var]
    return value


def _typed(v: str) -> Any:
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    try:
        return int(v)
    except ValueError:
        return v


def parse_config_pairs(pairs: Iterable[str]) -> dict[str, Any]:
    """`["fetch.wait.max.ms=100", "sasl.password=@/run/secrets/pw", ...]` -> dict; values resolved (see
    `resolve_value`), ints and booleans converted (librdkafka accepts strings too; a secret stays a string)."""
    out: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            shown = f"{key}=***" if sep and is_secret(key) else pair
            raise ConfigError(f"expected key=value, got {shown!r}")
        v = resolve_value(key, value.strip())
        out[key] = v if is_secret(key) else _typed(v)
    return out


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A `key=value` per line (Java-properties style, `#` or `!` comments, blank lines ignored)."""
    p = Path(path).expanduser()
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read Kafka settings file {p}: {e.strerror or e}") from None
    pairs = []
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s[0] in "#!":
            continue
        if "=" not in s:
            raise ConfigError(f"{p}:{n}: expected key=value")
        pairs.append(s)
    return parse_config_pairs(pairs)


def redact(conf: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `conf` with the values of secret settings replaced by `***` (for logs, reports, reprs)."""
    return {k: (REDACTED if is_secret(k) and v not in (None, "") else v) for k, v in conf.items()}


def redact_text(text: str, conf: Mapping[str, Any]) -> str:
    """`text` with every secret value of `conf` replaced by `***` (e.g. a client library's error message)."""
    for k, v in conf.items():
        if is_secret(k) and isinstance(v, str) and len(v) >= 4:
            text = text.replace(v, REDACTED)
    return text


__all__ = ["ConfigError", "REDACTED", "is_secret", "parse_config_pairs", "read_config_file", "redact",
           "redact_text", "resolve_value"]
