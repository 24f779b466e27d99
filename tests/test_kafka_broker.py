"""The test broker itself (tansu on S3 storage, tests/kafka_broker.py): what the broker-restart test of
test_stream_hostile.py relies on, and the defect it works around.

tansu 0.6 stores a produced batch in up to three S3 writes: an idempotent producer's new sequence number
(meta.json), the partition's high watermark (watermark.json), then the record batch (a .batch object). Here a proxy
between tansu and its S3 server holds the watermark write of one batch, tansu is killed (SIGKILL) meanwhile and
restarted on the same storage, and the producer, still running, retries the batch. A plain producer's retry is
stored; an idempotent producer's retry is answered DUPLICATE_SEQUENCE_NUMBER (the sequence number was written), which
the client reports as delivered although the batch was never stored.
"""

from __future__ import annotations

import http.client
import http.server
import threading
import time

import pytest
from kafka_broker import BrokerUnavailable, free_port, start_broker, start_s3


class _HoldingProxy:
    """Forwards HTTP to the S3 server; while `hold` is set, never answers tansu's PUT of topic `t`'s watermark."""

    def __init__(self, target_port: int):
        self.hold = False
        self.held = threading.Event()
        self.release = threading.Event()
        self.writes: list[str] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def forward(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                if self.command == "PUT":
                    proxy.writes.append(self.path.split("?")[0].rsplit("/", 1)[-1])
                if proxy.hold and self.command == "PUT" and "/topics/t/" in self.path and \
                        self.path.endswith("/watermark.json"):
                    proxy.held.set()
                    proxy.release.wait(120)  # tansu is killed meanwhile; this write never reaches S3
                    self.close_connection = True
                    return
                conn = http.client.HTTPConnection("127.0.0.1", target_port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    r = conn.getresponse()
                    data = r.read()
                finally:
                    conn.close()
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
@pytest.mark.parametrize("idempotent", [False, True], ids=["plain", "idempotent"])
def test_tansu_killed_between_the_writes_of_a_batch(tmp_path, idempotent):
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

    try:
        s3 = start_s3(tmp_path)
    except (BrokerUnavailable, ImportError) as e:  # moto is in the test extra: missing is a failure
        pytest.fail(f"cannot start the local S3 server: {e}")
    proxy = _HoldingProxy(int(s3.endpoint.rsplit(":", 1)[1]))
    b = None
    try:
        b = start_broker(tmp_path, storage=s3.storage_url, env={**s3.env, "AWS_ENDPOINT": proxy.endpoint})
        b.create_topic("t", 1)
        reports: dict[str, str | None] = {}
        p = Producer({"bootstrap.servers": b.bootstrap, "enable.idempotence": idempotent, "acks": "all",
                      "reconnect.backoff.max.ms": 500})

        def report(err, msg):
            reports[msg.value().decode()] = None if err is None else err.name()

        p.produce("t", b"m0", partition=0, on_delivery=report)
        assert p.flush(30) == 0
        proxy.hold = True
        proxy.writes.clear()
        p.produce("t", b"m1", partition=0, on_delivery=report)
        p.poll(0)
        assert proxy.held.wait(30), "tansu never wrote the watermark of m1"
        written = list(proxy.writes)
        b.kill()
        b.env = s3.env  # back on the S3 server directly: nothing is held any more
        b.restart()
        assert p.flush(60) == 0
        assert reports == {"m0": None, "m1": None}  # both reported delivered

        c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "reader", "enable.auto.commit": False,
                      "enable.partition.eof": True})
        try:
            c.assign([TopicPartition("t", 0, OFFSET_BEGINNING)])
            stored: list[str] = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # to the end of the partition
                msgs = c.consume(10, 0.5)
                stored += [m.value().decode() for m in msgs if m.error() is None]
                if any(m.error() is not None and m.error().code() == KafkaError._PARTITION_EOF for m in msgs):
                    break
            else:
                pytest.fail(f"topic t not read to its end in 30 s: {stored}")
        finally:
            c.close()
    finally:
        proxy.close()
        if b is not None:
            b.kill()  # nothing left to keep; a SIGTERM would wait for tansu's graceful shutdown
        s3.stop()

    if not idempotent:  # what the broker-restart test relies on: a plain retry is stored again
        assert written == ["watermark.json"]
        assert stored == ["m0", "m1"]
    else:  # the sequence number was written before the batch: the retry is taken for a duplicate, m1 is lost
        assert written == ["meta.json", "watermark.json"]
        assert stored == ["m0"], ("tansu now stores an idempotent batch killed between its writes: the broker-restart "
                                  "test of test_stream_hostile.py can keep the scorer's idempotent producer")
