"""Kafka secrets for btsbot-stream come from a file or the environment (not the command line, which `ps` shows),
and never appear in its logs or summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO
from test_stream import FAST_GROUP, alert_files, broker, model_dir, packets, produce  # noqa: F401 - fixtures

from btsbot_jax.serve.kafka_config import (
    ConfigError,
    parse_config_pairs,
    read_config_file,
    redact,
    redact_text,
)

FILE_SECRET = "s3cr3t-from-a-file-7f1c"
ENV_SECRET = "s3cr3t-from-the-env-92ab"
PROPS_SECRET = "s3cr3t-in-properties-c0de"


def test_values_from_files_and_the_environment(tmp_path, monkeypatch):
    pw = tmp_path / "pw"
    pw.write_text(FILE_SECRET + "\n")  # one trailing newline (as `echo` writes it) is not part of the secret
    monkeypatch.setenv("BTSBOT_TEST_SECRET", ENV_SECRET)
    got = parse_config_pairs([f"sasl.password=@{pw}", "ssl.key.password=env:BTSBOT_TEST_SECRET",
                              "fetch.wait.max.ms=100", "enable.partition.eof=false", "client.rack=@@literal",
                              "sasl.username=12345"])
    assert got == {"sasl.password": FILE_SECRET, "ssl.key.password": ENV_SECRET, "fetch.wait.max.ms": 100,
                   "enable.partition.eof": False, "client.rack": "@literal", "sasl.username": 12345}
    assert parse_config_pairs(["sasl.password=12345"]) == {"sasl.password": "12345"}  # a secret stays a string
    props = tmp_path / "kafka.properties"
    props.write_text(f"# a comment\n! another\n\nsecurity.protocol = SASL_SSL\nsasl.password={PROPS_SECRET}\n"
                     f"sasl.oauthbearer.client.secret=env:BTSBOT_TEST_SECRET\n")
    assert read_config_file(props) == {"security.protocol": "SASL_SSL", "sasl.password": PROPS_SECRET,
                                       "sasl.oauthbearer.client.secret": ENV_SECRET}
    with pytest.raises(ConfigError, match="BTSBOT_NO_SUCH_VAR is not set"):
        parse_config_pairs(["sasl.password=env:BTSBOT_NO_SUCH_VAR"])
    with pytest.raises(ConfigError, match="cannot read"):
        parse_config_pairs([f"sasl.password=@{tmp_path / 'missing'}"])
    with pytest.raises(ConfigError) as e:  # a malformed pair holding a secret is not echoed back
        parse_config_pairs([f"sasl.password{FILE_SECRET}"])
    assert "expected key=value" in str(e.value)


def test_redaction():
    conf = {"sasl.password": FILE_SECRET, "ssl.key.password": ENV_SECRET, "sasl.jaas.config": "x y z",
            "sasl.oauthbearer.client.secret": "abcd", "ssl.key.pem": "-----BEGIN", "sasl.username": "alice",
            "bootstrap.servers": "h:9092", "session.timeout.ms": 6000}
    r = redact(conf)
    assert r == {"sasl.password": "***", "ssl.key.password": "***", "sasl.jaas.config": "***",
                 "sasl.oauthbearer.client.secret": "***", "ssl.key.pem": "***", "sasl.username": "alice",
                 "bootstrap.servers": "h:9092", "session.timeout.ms": 6000}
    assert redact_text(f"auth failed for {FILE_SECRET}", conf) == "auth failed for ***"


def test_stream_config_repr_hides_secrets():
    from btsbot_jax.serve.stream import StreamConfig

    cfg = StreamConfig(bootstrap_servers="h:1", topics=["t"], group_id="g", output_topic="o",
                       dead_letter_topic="d", consumer_config={"sasl.password": FILE_SECRET},
                       producer_config={"sasl.password": ENV_SECRET})
    assert FILE_SECRET not in repr(cfg) and ENV_SECRET not in repr(cfg) and "***" in repr(cfg)
    assert cfg.consumer_conf()["sasl.password"] == FILE_SECRET  # the client still gets the real value


@pytest.mark.slow
def test_cli_reads_secrets_from_file_and_env_and_never_logs_them(broker, model_dir, packets, tmp_path):  # noqa: F811
    values = [p.value for p in packets[:4]]
    produce(broker, "k_in", values, partitions=1)
    props = tmp_path / "consumer.properties"
    props.write_text("".join(f"{k}={v}\n" for k, v in FAST_GROUP.items()) + f"sasl.password={PROPS_SECRET}\n")
    pw = tmp_path / "pw"
    pw.write_text(FILE_SECRET)
    cmd = [sys.executable, "-m", "btsbot_jax.cli.stream", f"--bootstrap_servers={broker.bootstrap}",
           "--topics=k_in", "--group_id=k_group", f"--checkpoint={model_dir}", "--output_topic=k_out",
           "--dead_letter_topic=k_dlq", f"--max_alerts={len(values)}", "--max_batch=4", "--max_wait_ms=200",
           f"--consumer_config_file={props}", f"--consumer_config=ssl.key.password=@{pw}",
           "--producer_config=sasl.password=env:BTSBOT_TEST_SECRET"]
    assert not any(s in " ".join(cmd) for s in (FILE_SECRET, ENV_SECRET, PROPS_SECRET))  # what `ps` shows
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), "BTSBOT_TEST_SECRET": ENV_SECRET}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["messages"] == len(values)
    for secret in (FILE_SECRET, ENV_SECRET, PROPS_SECRET):
        assert secret not in out.stdout and secret not in out.stderr
    assert "sasl.password': '***'" in out.stderr  # the settings are logged, redacted
