"""The scores and rejected tables of btsbot-score are whole or absent: written to a temporary file, fsynced and
renamed (`serve.batch.write_table`). Checked by killing a writer with SIGKILL at random moments of a large write,
and by a write that fails part-way (the file-size limit standing in for a full disk)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from btsbot_jax.serve.batch import read_table, write_table

ROWS = 400_000

WRITER = r"""
import os, resource, signal, sys
import numpy as np, pandas as pd
from btsbot_jax.serve.batch import write_table
path, rows, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(rows)
df = pd.DataFrame({"candid": np.arange(rows, dtype=np.int64) + 2_400_000_000_000_000_000,
                   "objectId": [f"ZTF24a{i:07d}" for i in range(rows)], "score": rng.random(rows)})
if limit:  # the disk fills: writes past `limit` bytes fail with EFBIG instead of killing the process
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
print("ready", flush=True)
sys.stdin.readline()
write_table(df, path)
print("done", flush=True)
"""


def _expected(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(rows)
    return pd.DataFrame({"candid": np.arange(rows, dtype=np.int64) + 2_400_000_000_000_000_000,
                         "objectId": [f"ZTF24a{i:07d}" for i in range(rows)], "score": rng.random(rows)})


def _writer(path, rows: int, limit: int = 0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(rows), str(limit)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "ready", p.stderr.read()
    return p


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_kill_9_during_a_write_leaves_the_table_whole_or_absent(tmp_path, suffix):
    want = _expected(ROWS)
    # how long one write takes here, so the kills land inside it
    path = tmp_path / f"timing{suffix}"
    p = _writer(path, ROWS)
    t0 = time.monotonic()
    p.stdin.write("go\n")
    p.stdin.flush()
    assert p.stdout.readline().strip() == "done"
    took = time.monotonic() - t0
    p.wait(30)
    pd.testing.assert_frame_equal(read_table(path), want)

    rng = np.random.default_rng(5)
    outcomes = {"absent": 0, "whole": 0}
    for k in range(6):
        path = tmp_path / f"scores_{k}{suffix}"
        if k % 2:  # an older table is already there: it must stay whole until the new one replaces it
            write_table(want.head(10), path)
        p = _writer(path, ROWS)
        p.stdin.write("go\n")
        p.stdin.flush()
        time.sleep(float(rng.uniform(0.05, 0.9)) * took)
        p.send_signal(signal.SIGKILL)
        p.wait(30)
        if not path.exists():
            outcomes["absent"] += 1
            continue
        got = read_table(path)  # never a truncated file: either the old table or the new one, whole
        if len(got) == 10:
            pd.testing.assert_frame_equal(got, want.head(10))
            outcomes["absent"] += 1  # the new one is absent
        else:
            pd.testing.assert_frame_equal(got, want)
            outcomes["whole"] += 1
    assert outcomes["absent"] >= 1, outcomes  # the kills did land during writes
    print(f"\n{suffix}: one write {took:.2f} s; after 6 kills: {outcomes}")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_write_that_fails_part_way_leaves_nothing_behind(tmp_path, suffix):
    path = tmp_path / f"scores{suffix}"
    write_table(_expected(10), path)  # the previous table
    p = _writer(path, 50_000, limit=200_000)  # the table is larger than the "disk"
    p.stdin.write("go\n")
    p.stdin.flush()
    _, err = p.communicate(timeout=120)
    assert p.returncode != 0 and "File too large" in err, err[-2000:]
    pd.testing.assert_frame_equal(read_table(path), _expected(10))  # the old table, untouched
    assert sorted(f.name for f in tmp_path.iterdir()) == [path.name]  # no temporary file left
