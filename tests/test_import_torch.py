"""Import of BTSbot v2 PyTorch weights without torch: the restricted unpickler, key/shape checking, safetensors,
the model directory it writes (load_scorer parity on the fixtures) and the command line."""

import json
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx
from v2_fixtures import SCORE_TOL, fixture_dir, fixture_inputs, sigmoid64, train_config, write_torch_zip

from btsbot_jax.inference.import_torch import (
    TorchImportError,
    UnsafeWeightsError,
    import_torch,
    read_torch_bin,
)
from btsbot_jax.models.model_dir import load_model


def _snapshot(tmp_path, name, state=None, fmt="safetensors"):
    """A snapshot folder with the fixture's train_config and `state` written as safetensors (or a torch zip)."""
    d = tmp_path / f"{name}-{fmt}"
    d.mkdir()
    shutil.copy(fixture_dir(name) / "train_config.json", d / "train_config.json")
    if state is None:
        state = read_torch_bin(fixture_dir(name) / "pytorch_model.bin")
    if fmt == "safetensors":
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(d / "model.safetensors"))
    return d


# ------------------------------------------------------------------------------------------ restricted unpickler


def _hostile_zip(tmp_path, payload: bytes, monkeypatch):
    return write_torch_zip(tmp_path / "pytorch_model.bin", {}, monkeypatch, extra_pickle=payload)


def test_a_pickle_naming_os_system_is_refused_without_running(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    path = _hostile_zip(tmp_path, payload, monkeypatch)
    with pytest.raises(UnsafeWeightsError, match=r"os\.system"):
        read_torch_bin(path)
    assert not marker.exists()


@pytest.mark.parametrize("target", [eval, getattr, shutil.rmtree, np.load])
def test_any_other_callable_is_refused_by_name(tmp_path, monkeypatch, target):
    class Evil:
        def __reduce__(self):
            return (target, ("1",))

    path = _hostile_zip(tmp_path, pickle.dumps({"w": Evil()}, protocol=4), monkeypatch)
    with pytest.raises(UnsafeWeightsError, match=target.__name__):
        read_torch_bin(path)


def test_strided_tensors_are_read_with_their_offset_and_strides(tmp_path, monkeypatch):
    storage = np.arange(30, dtype=np.float32)
    path = write_torch_zip(tmp_path / "w.bin", {
        "plain": np.arange(6, dtype=np.float32).reshape(2, 3),
        "transposed": (storage, 2, (3, 4), (1, 5)),  # a .T view starting at element 2
        "steps": np.arange(4, dtype=np.int64),
    }, monkeypatch)
    sd = read_torch_bin(path)
    np.testing.assert_array_equal(sd["plain"], np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(sd["transposed"], storage[2:22].reshape(4, 5)[:, :3].T)
    assert sd["steps"].dtype == np.int64


def test_a_tensor_reading_past_its_storage_is_refused(tmp_path, monkeypatch):
    path = write_torch_zip(tmp_path / "w.bin", {"w": (np.zeros(10, np.float32), 4, (2, 4), (4, 1))}, monkeypatch)
    with pytest.raises(TorchImportError, match="reads past its storage"):
        read_torch_bin(path)


def test_a_legacy_or_non_zip_file_is_refused(tmp_path):
    p = tmp_path / "pytorch_model.bin"
    p.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(TorchImportError, match="not a zip-format"):
        read_torch_bin(p)


def test_the_fixtures_hold_only_tensors_the_reader_understands():
    sd = read_torch_bin(fixture_dir("mm_convnext_atto") / "pytorch_model.bin")
    assert len(sd) == 139
    assert sd["convnext_backbone.stem.0.weight"].shape == (40, 3, 4, 4)
    assert sd["metadata_branch.0.num_batches_tracked"].dtype == np.int64
    assert all(v.dtype == np.float32 for k, v in sd.items() if not k.endswith("num_batches_tracked"))


# ------------------------------------------------------------------------------------------- keys and shapes


@pytest.mark.slow
def test_missing_unknown_and_misshaped_keys_are_named(tmp_path):
    sd = read_torch_bin(fixture_dir("mm_convnext_atto") / "pytorch_model.bin")
    missing = {k: v for k, v in sd.items() if k != "combined_head.2.weight"}
    with pytest.raises(TorchImportError, match=r"missing key\(s\).*combined_head\.2\.weight"):
        import_torch(_snapshot(tmp_path, "mm_convnext_atto", missing), tmp_path / "o1")
    extra = {**sd, "combined_head.9.weight": np.zeros((1, 8), np.float32)}
    (tmp_path / "x").mkdir()
    with pytest.raises(TorchImportError, match=r"unknown key\(s\).*combined_head\.9\.weight"):
        import_torch(_snapshot(tmp_path / "x", "mm_convnext_atto", extra), tmp_path / "o2")
    wrong = {**sd, "metadata_branch.1.weight": np.zeros((32, 24), np.float32)}
    (tmp_path / "y").mkdir()
    with pytest.raises(TorchImportError, match=r"metadata_branch\.1\.weight has shape \(32, 24\)"):
        import_torch(_snapshot(tmp_path / "y", "mm_convnext_atto", wrong), tmp_path / "o3")
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))


def test_a_config_that_does_not_match_the_weights_is_refused(tmp_path):
    d = _snapshot(tmp_path, "mm_convnext_atto")
    cfg = train_config("mm_convnext_atto")
    cfg["model_kind"] = "convnext_femto.d1_in1k"
    (d / "train_config.json").write_text(json.dumps(cfg))
    with pytest.raises(TorchImportError, match="has shape"):
        import_torch(d, tmp_path / "out")


# ------------------------------------------------------------------------------- model directories and parity


@pytest.mark.slow
def test_safetensors_and_bin_imports_are_identical(tmp_path):
    a = import_torch(fixture_dir("mm_convnext_atto"), tmp_path / "from_bin")
    b = import_torch(_snapshot(tmp_path, "mm_convnext_atto"), tmp_path / "from_safetensors")
    sa = nnx.to_pure_dict(nnx.state(load_model(a)[0], (nnx.Param, nnx.BatchStat)))
    sb = nnx.to_pure_dict(nnx.state(load_model(b)[0], (nnx.Param, nnx.BatchStat)))
    import jax

    for x, y in zip(jax.tree.leaves(sa), jax.tree.leaves(sb), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    card = json.loads((b / "model_card.json").read_text())
    assert card["provenance"]["weights_file"] == "model.safetensors"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mm_convnext_atto", "convnext_pico_metadata"])
def test_load_scorer_on_an_imported_fixture_gives_upstreams_scores(tmp_path, usage_examples, name):
    from btsbot_jax.inference.scorer import load_scorer

    out = import_torch(fixture_dir(name), tmp_path / name)
    card = json.loads((out / "model_card.json").read_text())
    tc = train_config(name)
    assert card["architecture"] == "v2_" + tc["model_name"]
    assert card["model_config"]["model_name"] == tc["model_name"]
    assert len(card["provenance"]["weights_sha256"]) == 64 and card["provenance"]["weights_file"] == "pytorch_model.bin"
    scorer = load_scorer(out)
    t, m = fixture_inputs(usage_examples, name)
    assert list(scorer.metadata_columns) == (tc.get("metadata_cols") or tc["meta_model_config"]["metadata_cols"])
    scores = scorer(t, m)
    expected = sigmoid64(np.load(fixture_dir(name) / "expected.npz")["logits"][:, 0])
    assert scores.shape == (39,) and np.abs(scores - expected).max() <= SCORE_TOL


@pytest.mark.slow
def test_cli_imports_a_snapshot_and_reports_errors(tmp_path):
    out = tmp_path / "model"
    r = subprocess.run([sys.executable, "-m", "btsbot_jax.cli.import_torch",
                        f"--model_dir={fixture_dir('mm_convnext_atto')}", f"--out={out}", "--model_version=test-v2"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "model_card.json").read_text())["version"] == "test-v2"
    r = subprocess.run([sys.executable, "-m", "btsbot_jax.cli.import_torch", f"--model_dir={tmp_path / 'nope'}",
                        f"--out={tmp_path / 'o'}"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "no train_config.json" in r.stderr


@pytest.mark.slow
def test_a_timm_backbone_checkpoint_initialises_the_image_branch(usage_examples):
    """A timm-named ConvNeXt checkpoint (as `timm/convnext_pico.d1_in1k` or the Galaxy Zoo encoder publish it)
    lands in a fresh ConvNeXt model: here the fixture's trained image branch renamed to timm's names, which must
    then reproduce upstream's image features."""
    import jax

    from btsbot_jax.inference.import_torch import load_backbone_into
    from btsbot_jax.models.v2 import create_v2_model

    sd = read_torch_bin(fixture_dir("convnext_pico_metadata") / "pytorch_model.bin")
    prefix = "image_branch.convnext."
    timm_sd = {k[len(prefix):].replace("head.1.", "head.norm."): v for k, v in sd.items() if k.startswith(prefix)}
    timm_sd["head.fc.weight"] = np.zeros((1000, 512), np.float32)
    timm_sd["head.fc.bias"] = np.zeros((1000,), np.float32)
    tc = train_config("convnext_pico_metadata")["image_model_config"]
    model = create_v2_model(tc)
    assert load_backbone_into(model, timm_sd) == ["head.fc.bias", "head.fc.weight"]
    model.eval()
    t, _ = fixture_inputs(usage_examples, "convnext_pico_metadata")
    feats = np.asarray(jax.jit(model.embed)(t))
    expected = np.load(fixture_dir("convnext_pico_metadata") / "expected.npz")["image_features"]
    assert np.abs(feats - expected).max() <= 1e-4
    del timm_sd["stages.3.blocks.1.gamma"]
    with pytest.raises(TorchImportError, match=r"missing key\(s\).*stages\.3\.blocks\.1\.gamma"):
        load_backbone_into(model, timm_sd)


@pytest.mark.slow
def test_btsbot_score_and_export_accept_an_imported_snapshot(tmp_path):
    """The issue's chain on the production-shaped fixture: btsbot-import-torch, then btsbot-score on real packets
    (upstream's train_config spells drb `new_drb`: the same feature, accepted), then btsbot-export to ONNX and
    btsbot-score on the export, which agrees with the JAX scores."""
    import pandas as pd
    from conftest import ZTF_ALERTS, require

    require(ZTF_ALERTS)
    model = tmp_path / "model"
    env_run = dict(capture_output=True, text=True, timeout=900)
    r = subprocess.run([sys.executable, "-m", "btsbot_jax.cli.import_torch",
                        f"--model_dir={fixture_dir('convnext_pico_metadata')}", f"--out={model}"], **env_run)
    assert r.returncode == 0, r.stderr
    assert "new_drb" in json.loads((model / "model_card.json").read_text())["metadata_columns"]
    r = subprocess.run([sys.executable, "-m", "btsbot_jax.cli.score", f"--checkpoint={model}", f"--input={ZTF_ALERTS}",
                        f"--output={tmp_path / 'jax.csv'}", "--noprogress"], **env_run)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "btsbot_jax.cli.export", f"--checkpoint={model}", "--format=onnx",
                        f"--out={tmp_path / 'export'}"], **env_run)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "btsbot_jax.cli.score", f"--checkpoint={tmp_path / 'export'}",
                        f"--input={ZTF_ALERTS}", f"--output={tmp_path / 'onnx.csv'}", "--noprogress"], **env_run)
    assert r.returncode == 0, r.stderr
    jax_scores = pd.read_csv(tmp_path / "jax.csv").set_index("candid")["score"]
    onnx_scores = pd.read_csv(tmp_path / "onnx.csv").set_index("candid")["score"]
    assert len(jax_scores) == 36 and set(jax_scores.index) == set(onnx_scores.index)
    assert (jax_scores - onnx_scores.loc[jax_scores.index]).abs().max() <= 1e-4
