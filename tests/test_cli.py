"""The command-line contract of every console script (README: exit 0 ok; 1 some input path unreadable, btsbot-score;
2 bad flags or unusable input): own flags in --help, --version, one-line messages instead of tracebacks, `~`/$VARS
in paths, and the documented commands end to end on a tiny simulated survey (issue 20; issue 16 item 4)."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

import btsbot_jax

VERSION = f"btsbot-jax {btsbot_jax.__version__}"
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
LIBRARY_FLAGS = ("--jax_", "--xla_", "--tt_", "--only_check_args", "--pdb_post_mortem")


def cli(script: str, *args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600
        ) -> subprocess.CompletedProcess:
    """Run a console script as pip's wrapper does (argv[0] = bin/<script>, then `sys.exit(main())`), with this
    checkout first on the path, so the test needs no install."""
    module, func = SCRIPTS[script].split(":")
    code = (f"import sys; sys.argv[0] = {str(Path(sys.executable).parent / script)!r}; "
            f"from {module} import {func}; sys.exit({func}())")
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
                "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **(env or {})}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd or REPO,
                          env=full_env, timeout=timeout)


def own_flags(script: str) -> list[str]:
    """The flags a command's module defines, read from its source (importing them all would clash)."""
    module = SCRIPTS[script].split(":")[0]
    src = (REPO / (module.replace(".", "/") + ".py")).read_text()
    return re.findall(r"(?:flags|config_flags)\.DEFINE_\w+\(\s*\"(\w+)\"", src)


def doc_first_line(script: str) -> str:
    module = SCRIPTS[script].split(":")[0]
    return ast.get_docstring(ast.parse((REPO / (module.replace(".", "/") + ".py")).read_text())).splitlines()[0]


def message(p: subprocess.CompletedProcess) -> str:
    """The last stderr line: where `run()` writes its one-line message."""
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def assert_one_line_error(p, script, code, *expected):
    assert p.returncode == code, (p.returncode, p.stderr[-3000:])
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    msg = message(p)
    assert msg.startswith(f"{script}: "), p.stderr[-3000:]
    for e in expected:
        assert e in msg, (e, msg)


def test_every_console_script_is_covered():
    assert len(SCRIPTS) >= 9 and all(v.startswith("btsbot_jax.cli.") for v in SCRIPTS.values())
    assert all(len(own_flags(s)) >= 3 for s in SCRIPTS)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_shows_the_commands_own_flags_and_version_prints_it(script):
    flags = own_flags(script)
    for opt in ("--help", "--helpshort"):
        p = cli(script, opt, timeout=120)
        assert p.returncode == 0, p.stderr[-2000:]
        out = p.stdout
        missing = [f for f in flags if f"--{f}:" not in out and f"--[no]{f}:" not in out]
        assert not missing, (opt, missing, out[-2000:])
        assert "--[no]version:" in out
        assert not [f for f in LIBRARY_FLAGS if f in out], out[-2000:]
        assert doc_first_line(script) in out  # the command's own docstring, not absl's generic USAGE line
    p = cli(script, "--version", timeout=120)  # works without the required flags
    assert p.returncode == 0 and p.stdout == VERSION + "\n", (p.stdout, p.stderr[-2000:])


MISTAKES = [  # (script, args, what the message must say)
    ("btsbot-score", ["--checkpoint=m", "--input=a", "--output=s.csv", "--batch_size=0"], "--batch_size"),
    ("btsbot-score", ["--checkpoint=m", "--input=a", "--output=s.csv", "--batch_size=abc"], "--batch_size=abc"),
    ("btsbot-score", ["--checkpoint=m", "--input=a", "--output=s.csv", "--workers=-1"], "--workers"),
    ("btsbot-score", ["--checkpoint=m", "--output=s.csv"], "missing required flag(s) --input"),
    ("btsbot-score", ["--checkpoint=m", "--input=a", "--output=s.json"], ".csv or .parquet"),
    ("btsbot-score", ["--checkpoint=m", "--input=a", "--output=s.csv", "extra"], "unexpected arguments"),
    ("btsbot-score", ["--checkpoint=m", "--input=a", "--output=s.csv", "--num_shards=2", "--shard_index=2"],
     "--shard_index=2 must be < --num_shards=2"),
    # (--checkpoint of btsbot-stream defaults to the packaged v1.0.1)
    ("btsbot-stream", [], "missing required flag(s) --bootstrap_servers, --topics, --group_id"),
    ("btsbot-evaluate", ["--scores=s.csv", "--checkpoint=m", "--data=d", "--out=r"], "exactly one of"),
    ("btsbot-evaluate", ["--out=r"], "exactly one of"),
    ("btsbot-evaluate", ["--scores=s.csv", "--out=r", "--threshold=1.5"], "--threshold=1.5 must be between 0 and 1"),
    ("btsbot-evaluate", ["--scores=s.csv", "--out=r", "--threshold=0"], "between 0 and 1"),
    ("btsbot-train", ["--config=experiments/configs/nope.py", "--workdir=w"],
     "--config=experiments/configs/nope.py: no such config file"),
    ("btsbot-train", ["--config=demo", "--config.nonexistent=1", "--workdir=w"], "unknown config field"),
    ("btsbot-train", ["--config=demo"], "missing required flag(s) --workdir"),
    ("btsbot-prepare", ["--candidates=missing.parquet", "--triplets=t.npy", "--out=o"],
     "--candidates=missing.parquet: no such file"),
    ("btsbot-simulate", ["--fractions=trues=0.5", "--out=o"], "leaves out vars, dims, rejects"),
    ("btsbot-simulate", ["--fractions=trues=0.5,vars=0.5,dims=0.5,rejects=0.5", "--out=o"], "sum to 2"),
    ("btsbot-simulate", ["--fractions=bright=1", "--out=o"], "unknown item 'bright=1'"),
    ("btsbot-simulate", ["--num_sources=0", "--out=o"], "--num_sources must be >= 1"),
    ("btsbot-export", ["--checkpoint=m", "--out=o", "--format=tflite"], "--format"),
    ("btsbot-import-keras", ["--out=o"], "missing required flag(s) --saved_model"),
]


@pytest.mark.parametrize("script,args,expected", MISTAKES, ids=[f"{s}{' '.join(a)}" for s, a, _ in MISTAKES])
def test_mistakes_get_one_line_and_exit_2(tmp_path, script, args, expected):
    p = cli(script, *args, cwd=tmp_path, timeout=300)
    assert_one_line_error(p, script, 2, expected)
    assert not any(tmp_path.iterdir()), "a refused command must not write anything"


@pytest.mark.slow
@pytest.mark.parametrize("script,args,expected", [
    ("btsbot-score", ["--checkpoint=missing_model", "--input=a", "--output=s.csv"], "cannot load --checkpoint"),
    ("btsbot-export", ["--checkpoint=missing_model", "--out=o"], "missing_model"),
    ("btsbot-import-keras", ["--saved_model=missing_model", "--out=o"], "missing_model"),
    ("btsbot-evaluate", ["--checkpoint=missing_model", "--data=d", "--out=r"], "missing_model"),
])
def test_unusable_checkpoint_is_exit_2(tmp_path, script, args, expected):
    p = cli(script, *args, cwd=tmp_path, timeout=300)
    assert_one_line_error(p, script, 2, expected)


def test_traceback_only_with_verbosity(tmp_path):
    quiet = cli("btsbot-evaluate", "--scores=missing.csv", "--out=r", cwd=tmp_path, timeout=300)
    assert_one_line_error(quiet, "btsbot-evaluate", 2, "missing.csv")
    loud = cli("btsbot-evaluate", "--scores=missing.csv", "--out=r", "--verbosity=1", cwd=tmp_path, timeout=300)
    assert loud.returncode == 2 and "Traceback" in loud.stderr
    assert message(loud).startswith("btsbot-evaluate: ") and "missing.csv" in message(loud)


def test_checkpoint_error_is_importable_where_the_docs_say():
    from btsbot_jax.inference.scorer import CheckpointError
    from btsbot_jax.models.model_dir import CheckpointError as defined

    assert CheckpointError is defined is btsbot_jax.CheckpointError and issubclass(defined, ValueError)


def test_old_version_flag_of_simulate_and_prepare_still_means_the_file_tag(tmp_path):
    from test_prepare import _n_max_table, _triplets_for

    table = _n_max_table(40, 4)
    home = tmp_path / "home"
    home.mkdir()
    table.to_csv(home / "alerts.csv", index=False)
    np.save(tmp_path / "trip.npy", _triplets_for(table))
    # `~` and $VARS in path flags are expanded (a folder literally named `~` is a trap: issue 20 item 1)
    p = cli("btsbot-prepare", "--candidates=~/alerts.csv", "--triplets=$TRIP_DIR/trip.npy", "--out=~/out",
            "--n_max=2", "--version=v3", cwd=tmp_path, env={"HOME": str(home), "TRIP_DIR": str(tmp_path)},
            timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "--data_version" in p.stderr
    assert sorted(f.name for f in (home / "out").glob("*_cand_*.csv")) == [
        "test_cand_v3_N2.csv", "train_cand_v3_N2.csv", "val_cand_v3_N2.csv"]
    assert not (tmp_path / "~").exists()


@pytest.mark.slow
def test_empty_splits_are_named(tmp_path):
    """16 sources (seed 3) leave the val and test splits empty: simulate warns, training says so (issue 20 item 5)."""
    p = cli("btsbot-simulate", "--num_sources=16", "--seed=3", "--out=sim", "--noprogress", "--workers=1",
            cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "warning: the val split is empty" in p.stderr and "warning: the test split is empty" in p.stderr
    t = cli("btsbot-train", "--config=demo", "--config.data_dir=sim", "--workdir=train", cwd=tmp_path)
    assert_one_line_error(t, "btsbot-train", 2, "the validation split is empty")


@pytest.mark.slow
def test_documented_commands_end_to_end(tmp_path):
    """`make demo`'s chain in small: simulate -> train (TFDS source, the production v10/N100 names) -> evaluate ->
    export ONNX -> score, with the paths `make demo` writes (demo_out/sim, demo_out/train), `~` and $VARS in
    paths, and the Python examples; every output carries the btsbot-jax version."""
    env = {"HOME": str(tmp_path), "OUT": "demo_out"}
    run = lambda script, *a: cli(script, *a, cwd=tmp_path, env=env)  # noqa: E731

    p = run("btsbot-simulate", "--num_sources=60", "--seed=2", "--out=~/demo_out/sim", "--noprogress",
            "--data_version=v10", "--n_max=100")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "warning" not in p.stderr
    sim = tmp_path / "demo_out" / "sim"
    assert (sim / "val_cand_v10_N100.csv").exists()

    p = run("btsbot-train", "--config=demo", "--config.data_dir=$OUT/sim", "--config.num_epochs=1",
            "--config.max_steps_per_epoch=4", "--config.data_source=tfds", "--config.data_version=v10",
            "--config.data_n_max=100", "--config.tfds_data_dir=~/tfds", "--workdir=demo_out/train")
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "tfds" / "btsbot_alerts" / "v10_N100").is_dir()  # the registered config, under ~
    card = json.loads((tmp_path / "demo_out" / "train" / "best" / "model_card.json").read_text())
    assert card["btsbot_jax_version"] == btsbot_jax.__version__

    p = run("btsbot-evaluate", "--checkpoint=demo_out/train", "--data=demo_out/sim", "--split=test",
            "--out=demo_out/report", "--noprogress", "--nofigures")
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads((tmp_path / "demo_out" / "report" / "report.json").read_text())
    assert report["btsbot_jax_version"] == btsbot_jax.__version__

    p = run("btsbot-export", "--checkpoint=demo_out/train", "--format=onnx", "--out=demo_out/export")
    assert p.returncode == 0, p.stderr[-3000:]
    again = run("btsbot-export", "--checkpoint=demo_out/train", "--format=onnx", "--out=demo_out/export")
    assert_one_line_error(again, "btsbot-export", 2, "--overwrite")
    export_cards = list((tmp_path / "demo_out" / "export").rglob("model_card.json"))
    assert export_cards and all(json.loads(c.read_text())["btsbot_jax_version"] == btsbot_jax.__version__
                                for c in export_cards)
    onnx_dir = export_cards[0].parent

    p = run("btsbot-score", f"--checkpoint={onnx_dir}", "--input=demo_out/sim/alerts", "--output=demo_out/s.csv",
            "--noprogress", "--summary_json=demo_out/summary.json")
    assert p.returncode == 0, p.stderr[-3000:]
    scores = pd.read_csv(tmp_path / "demo_out" / "s.csv")
    summary = json.loads((tmp_path / "demo_out" / "summary.json").read_text())
    assert len(scores) == summary["scored"] > 0 and scores["score"].between(0, 1).all()
    assert (scores["btsbot_jax_version"] == btsbot_jax.__version__).all()
    assert summary["btsbot_jax_version"] == btsbot_jax.__version__

    (tmp_path / "empty").mkdir()
    p = run("btsbot-score", f"--checkpoint={onnx_dir}", "--input=empty", "--output=e.csv", "--noprogress")
    assert p.returncode == 0 and "nothing to score" in p.stderr, p.stderr[-2000:]

    # one rule for a named file that cannot be opened as its kind: an unreadable path with its reason, exit 1
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 this is not parquet")
    with tarfile.open(tmp_path / "night.tar.gz", "w:gz") as tf:
        tf.add(sim / "alerts", arcname="alerts")
    data = (tmp_path / "night.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[:200])
    for bad, reason in (("junk.parquet", "not a readable parquet file"), ("cut.tar.gz", "not a readable tarball")):
        p = run("btsbot-score", f"--checkpoint={onnx_dir}", f"--input={bad}", "--output=b.csv", "--noprogress")
        assert p.returncode == 1, p.stderr[-2000:]
        assert f"cannot read input {tmp_path / bad}: {reason}" in p.stderr or f"cannot read input {bad}: {reason}" \
            in p.stderr, p.stderr[-2000:]
        assert "Traceback" not in p.stderr

    # the Python examples, pasted into a plain script (no __main__ guard), with the paths `make demo` writes
    script = tmp_path / "example.py"
    script.write_text(
        "import btsbot_jax\n"
        "from btsbot_jax.inference.scorer import CheckpointError, load_scorer\n"
        "from btsbot_jax.evaluation.report import evaluate_dataset\n"
        "from btsbot_jax.serve.batch import score_paths\n"
        "print('script body runs')\n"
        "ev = evaluate_dataset('demo_out/train', 'demo_out/sim', 'test', progress=False)\n"
        "res = score_paths(load_scorer('demo_out/train'), 'demo_out/sim/alerts', workers=2)\n"
        "print('scored', res.summary['scored'], 'test alerts', ev.report['alert_level']['n_alerts'])\n"
        "assert issubclass(CheckpointError, ValueError)\n")
    env_py = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "HOME": str(tmp_path),
              "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, env=env_py,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("script body runs") == 1  # the decode workers did not re-run the script
    assert f"scored {summary['scored']}" in p.stdout
    assert "alerts/s" not in p.stderr and "it/s" not in p.stderr  # no progress bar unless asked
