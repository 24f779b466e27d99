"""Multi-process (multi-host) training, run as 2 JAX processes on localhost (CPU devices, gloo collectives) through
the `btsbot-train` command line, against a 1-process run of the same global batch and seed:

- the 2-process run finishes, and its per-epoch losses/metrics equal the 1-process run's (the tolerance of the
  4-device test in test_train.py: what differs is only the reduction order of the gradient all-reduce);
- its checkpoint restores in a 1-process run, which continues it as the 1-process run would have;
- killing one process, then the other, and starting both again resumes and ends as an uninterrupted run;
- process 0 alone writes the summaries (one TensorBoard events file, the summary JSON on its stdout only).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import synthetic_training  # noqa: E402
import test_train as tt  # noqa: E402

EPOCHS = 3
RUN = [f"--config.num_epochs={EPOCHS}", "--config.max_steps_per_epoch=4", "--config.seed=5",
       "--config.reduce_lr_patience=1", "--config.reduce_lr_min_delta=0.05", "--config.evaluate_test=True"]
NUMERIC = ("loss", "accuracy", "val_loss", "val_accuracy", "val_auc", "lr")

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    return tt._env(JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")


def _start_two(workdir, data_dir, *extra, logs=None):
    port = _free_port()
    procs = []
    for i in range(2):
        cmd = tt._train_cmd(workdir, data_dir, *RUN, *extra, f"--coordinator_address=127.0.0.1:{port}",
                            "--num_processes=2", f"--process_id={i}")
        out = open(logs / f"p{i}.log", "w") if logs else subprocess.DEVNULL
        procs.append(subprocess.Popen(cmd, env=_env(), stdout=out, stderr=subprocess.STDOUT, text=True))
    return procs


def _wait(procs, logs, timeout=600):
    for i, p in enumerate(procs):
        rc = p.wait(timeout=timeout)
        assert rc == 0, f"process {i} exited {rc}:\n" + (logs / f"p{i}.log").read_text()[-4000:]


def _rows(workdir):
    return json.loads((Path(workdir) / "metrics.json").read_text())


def _assert_same_history(got, want):
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want]
    for k in NUMERIC:
        np.testing.assert_allclose([r[k] for r in got], [r[k] for r in want], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return synthetic_training.training_dir(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """The 1-process run (one CPU device, the same global batch) every multi-process run is compared with."""
    wd = tmp_path_factory.mktemp("ref") / "wd"
    r = subprocess.run(tt._train_cmd(wd, data_dir, *RUN), env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return wd


def test_two_processes_equal_one_and_restore_in_one(data_dir, reference, tmp_path):
    # 2 processes, the first EPOCHS-1 epochs
    wd = tmp_path / "two"
    _wait(_start_two(wd, data_dir, f"--config.num_epochs={EPOCHS - 1}", logs=tmp_path), tmp_path)
    ref = _rows(reference)
    two = _rows(wd)
    _assert_same_history(two, ref[: EPOCHS - 1])
    assert ref[0]["loss"] != ref[-1]["loss"] and len({r["lr"] for r in ref}) > 1  # it trained; the plateau acted
    diff = max(abs(a["loss"] - b["loss"]) for a, b in zip(two, ref))
    print(f"max |epoch loss, 2 processes - 1 process| = {diff:.3g}")
    summary = json.loads((wd / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["devices"] == 2
    # only process 0 writes: one TensorBoard events file, the summary JSON on process 0's output only
    assert len(list((wd / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert '"processes": 2' in (tmp_path / "p0.log").read_text()
    assert '"processes": 2' not in (tmp_path / "p1.log").read_text()

    # the 2-process checkpoint restores in a 1-process run, which continues it like the 1-process run went on
    r = subprocess.run(tt._train_cmd(wd, data_dir, *RUN), env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    _assert_same_history(_rows(wd), ref)
    s_ref = json.loads((reference / "summary.json").read_text())
    s_one = json.loads((wd / "summary.json").read_text())
    assert s_one["processes"] == 1 and s_one["best_epoch"] == s_ref["best_epoch"]
    np.testing.assert_allclose(s_one["test_loss"], s_ref["test_loss"], rtol=1e-5, atol=1e-6)
    from btsbot_jax.inference.scorer import load_scorer

    load_scorer(wd)  # best/ was exported from the restored checkpoint


def test_kill_one_process_then_both_then_resume(data_dir, reference, tmp_path):
    wd = tmp_path / "run"
    procs = _start_two(wd, data_dir)
    ck = wd / "checkpoints"
    deadline = time.time() + 500
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if (ck / "1").is_dir():  # epochs 0 and 1 checkpointed: kill during epoch 2
            break
        time.sleep(0.02)
    assert all(p.poll() is None for p in procs), "a process ended before it could be killed"
    os.kill(procs[1].pid, signal.SIGKILL)
    procs[1].wait()
    time.sleep(0.5)
    if procs[0].poll() is None:  # process 0 waits in a collective for its dead peer (or has failed already)
        os.kill(procs[0].pid, signal.SIGKILL)
    procs[0].wait()
    steps = sorted(int(p.name) for p in ck.iterdir() if p.name.isdigit())
    assert steps and max(steps) < EPOCHS - 1, steps

    logs = tmp_path / "logs"
    logs.mkdir()
    _wait(_start_two(wd, data_dir, logs=logs), logs)
    _assert_same_history(_rows(wd), _rows(reference))
    s_ref = json.loads((reference / "summary.json").read_text())
    s_run = json.loads((wd / "summary.json").read_text())
    assert s_run["epochs_run"] == EPOCHS and s_run["best_epoch"] == s_ref["best_epoch"]
    np.testing.assert_allclose(s_run["test_loss"], s_ref["test_loss"], rtol=1e-5, atol=1e-6)
    shutil.rmtree(wd / "checkpoints")
