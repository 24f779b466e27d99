"""The published v1.0.1 weights shipped inside the package (btsbot_jax/weights): they are the SavedModel's bits, they
reproduce the published scores, `load_scorer("v1.0.1")` and `btsbot-score` without --checkpoint use them, and they
are inside the wheel."""

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, V101_SAVED_MODEL, require

from btsbot_jax.inference.scorer import Scorer, load_scorer
from btsbot_jax.models.model_dir import (
    SAFETENSORS_FORMAT,
    WEIGHTS_FILE,
    CheckpointError,
    load_model,
    resolve_checkpoint,
)
from btsbot_jax.weights import DEFAULT_MODEL, PACKAGED, packaged_model_dir

SHIPPED = REPO / "btsbot_jax" / "weights" / "v1.0.1"


def test_packaged_model_directory_is_small_and_complete():
    d = packaged_model_dir("v1.0.1")
    assert d.resolve() == SHIPPED.resolve() and PACKAGED == ("v1.0.1",) and DEFAULT_MODEL == "v1.0.1"
    assert sorted(p.name for p in d.iterdir()) == ["LICENSE", "PROVENANCE.md", "model_card.json", WEIGHTS_FILE]
    size = sum(p.stat().st_size for p in d.iterdir())
    assert size < 1_000_000, f"{size} bytes"
    assert "MIT License" in (d / "LICENSE").read_text()
    card = json.loads((d / "model_card.json").read_text())
    assert card["format"] == SAFETENSORS_FORMAT and card["version"] == "v1.0.1" and card["architecture"] == "mm_cnn"
    # the provenance note quotes the same SavedModel hash the importer recorded in the card
    assert card["provenance"]["variables_sha256"] in (d / "PROVENANCE.md").read_text()
    assert "github.com/nabeelre/BTSbot" in card["provenance"]["saved_model_dir"]


def test_load_scorer_by_name_and_a_local_path_wins(tmp_path, monkeypatch):
    s = load_scorer("v1.0.1")
    assert isinstance(s, Scorer) and s.version == "v1.0.1" and len(s.metadata_columns) == 25
    assert resolve_checkpoint("v1.0.1") == packaged_model_dir()
    # a directory of that name in the working directory is what the user means
    monkeypatch.chdir(tmp_path)
    (tmp_path / "v1.0.1").mkdir()
    with pytest.raises(CheckpointError, match="neither a model directory"):
        resolve_checkpoint("v1.0.1")
    with pytest.raises(CheckpointError, match=r"does not exist \(and is not a packaged model: v1.0.1\)"):
        resolve_checkpoint("v9.9.9")


def test_shipped_weights_equal_the_savedmodel_bitwise(tmp_path):
    require(V101_SAVED_MODEL)
    from btsbot_jax.inference.import_keras import read_keras_weights
    from btsbot_jax.models.model_dir import flat_weights
    from btsbot_jax.weights.build import build

    fresh = build(V101_SAVED_MODEL, tmp_path / "v1.0.1")
    # the same file, byte for byte, as a conversion made now
    assert (fresh / WEIGHTS_FILE).read_bytes() == (SHIPPED / WEIGHTS_FILE).read_bytes()
    assert (fresh / "LICENSE").read_bytes() == (SHIPPED / "LICENSE").read_bytes()
    fresh_card = json.loads((fresh / "model_card.json").read_text())
    shipped_card = json.loads((SHIPPED / "model_card.json").read_text())
    for key in ("model_config", "metadata_columns", "provenance", "version", "architecture", "format"):
        assert fresh_card[key] == shipped_card[key], key
    # and every array is the SavedModel's variable, bit for bit
    model, _ = load_model("v1.0.1")
    ours = flat_weights(model)
    keras = {"/".join(k): v for k, v in read_keras_weights(V101_SAVED_MODEL).items()}
    assert ours.keys() == keras.keys() and len(ours) == 20
    for name, value in keras.items():
        assert ours[name].dtype == value.dtype == np.float32
        np.testing.assert_array_equal(ours[name], value, err_msg=name)


def test_packaged_v101_reproduces_the_published_scores(usage_examples):
    table, triplets, metadata = usage_examples
    got = load_scorer("v1.0.1")(triplets, metadata)
    expected = table["expected_scores"].to_numpy()
    assert got.shape == (39,) and np.abs(got - expected).max() < 2e-7
    np.testing.assert_array_equal(got > 0.5, expected > 0.5)
    assert 0 < (expected > 0.5).sum() < 39


def test_broken_safetensors_directories_fail_clearly(tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(SHIPPED, bad)
    (bad / WEIGHTS_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_scorer(bad)
    (bad / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"weights file {WEIGHTS_FILE} is missing"):
        load_scorer(bad)
    # weights of v1.0.1 under a card that claims a smaller network
    shutil.copytree(SHIPPED, tmp_path / "small")
    card = json.loads((tmp_path / "small" / "model_card.json").read_text())
    card["model_config"]["conv1_channels"] = 16
    (tmp_path / "small" / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="conv1"):
        load_scorer(tmp_path / "small")


def test_safetensors_and_orbax_model_directories_score_alike(tmp_path):
    from btsbot_jax.models.model_dir import save_model

    model, card = load_model("v1.0.1")
    save_model(model, tmp_path / "orbax", card)  # orbax: what training writes
    assert json.loads((tmp_path / "orbax" / "model_card.json").read_text())["format"] == "btsbot-jax/orbax"
    rng = np.random.default_rng(0)
    t = rng.normal(size=(5, 63, 63, 3)).astype(np.float32)
    t /= np.linalg.norm(t, axis=(1, 2), keepdims=True)
    m = rng.normal(size=(5, 25)).astype(np.float32)
    np.testing.assert_array_equal(load_scorer(tmp_path / "orbax")(t, m), load_scorer("v1.0.1")(t, m))


@pytest.mark.slow
def test_btsbot_score_without_checkpoint_uses_the_packaged_model(tmp_path):
    """Simulated packets (no real data needed) scored by the CLI with no --checkpoint."""
    import pandas as pd

    from btsbot_jax.ingest.features import prepare_batch
    from btsbot_jax.ingest.readers import iter_alerts
    from btsbot_jax.sim.pipeline import SimConfig, simulate

    simulate(tmp_path / "sim", SimConfig(num_sources=3, seed=1, workers=1, training_set=False))
    r = subprocess.run(
        [sys.executable, "-m", "btsbot_jax.cli.score", f"--input={tmp_path / 'sim' / 'alerts'}",
         f"--output={tmp_path / 'scores.csv'}", "--noprogress"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, r.stderr
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert len(scores) > 10 and set(scores["model_version"]) == {"v1.0.1"}
    prep = prepare_batch(list(iter_alerts(tmp_path / "sim" / "alerts")))
    want = load_scorer("v1.0.1")(prep.triplets, prep.metadata)
    by_candid = dict(zip(prep.info["candid"].tolist(), want.tolist()))
    np.testing.assert_allclose(scores["score"], [by_candid[c] for c in scores["candid"]], atol=1e-6)


@pytest.mark.slow
def test_wheel_carries_the_weights(tmp_path):
    """`pip wheel` then install into a fresh venv (its own site-packages; dependencies come from this environment):
    the packaged model loads from the installed copy, not from this checkout."""
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "-w", str(wheels), "--no-deps", "-q"],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0 and "NewConnectionError" in r.stderr:  # the isolated build fetches setuptools
        pytest.skip(f"package index not reachable for the build backend: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr
    (whl,) = wheels.glob("btsbot_jax-*.whl")
    import zipfile

    names = set(zipfile.ZipFile(whl).namelist())
    for f in ("model_card.json", WEIGHTS_FILE, "LICENSE", "PROVENANCE.md"):
        assert f"btsbot_jax/weights/v1.0.1/{f}" in names
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=False, with_pip=False)
    py = env_dir / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site, str(whl)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    # the fresh venv sees the installed wheel first and this environment's dependencies after it (no checkout)
    deps = [p for p in sys.path if p.endswith("site-packages")]
    code = ("import sys, btsbot_jax, numpy as np; from btsbot_jax.weights import packaged_model_dir; "
            "d = packaged_model_dir(); print(d); print(btsbot_jax.__file__); "
            "s = btsbot_jax.load_scorer('v1.0.1'); "
            "print(s(np.full((2, 63, 63, 3), 0.01, np.float32), np.zeros((2, 25), np.float32)).tolist())")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(deps)
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    where, module, scores = r.stdout.strip().splitlines()[-3:]
    assert Path(where).is_relative_to(site) and Path(module).is_relative_to(site)
    want = load_scorer("v1.0.1")(np.full((2, 63, 63, 3), 0.01, np.float32), np.zeros((2, 25), np.float32))
    np.testing.assert_array_equal(np.asarray(json.loads(scores), np.float32), want)
