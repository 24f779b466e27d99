"""The runtime scorers behave like the Flax Scorer: same interface, same validation and errors, same scores,
any batch size; load_scorer picks them for export directories; broken export directories fail clearly."""

import json
import shutil

import numpy as np
import pytest

from btsbot_jax.inference.export import export_model
from btsbot_jax.inference.runtimes import (
    ExportFormatError,
    OnnxScorer,
    SavedModelScorer,
    StableHLOScorer,
    is_export_card,
    load_exported,
    read_export_card,
)
from btsbot_jax.inference.scorer import InputError, Scorer, load_scorer
from btsbot_jax.models import create_model, default_model_config
from btsbot_jax.models.model_dir import load_model, make_model_card, save_model

FORMATS = ("stablehlo", "onnx", "savedmodel")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small mm_cnn (fast to compile) and its `all` export."""
    cfg = default_model_config("mm_cnn")
    cfg.update(conv1_channels=4, conv2_channels=8, meta_fc1_neurons=16, meta_fc2_neurons=8, comb_fc_neurons=4)
    root = tmp_path_factory.mktemp("rt")
    save_model(create_model(cfg, seed=5), root / "model", make_model_card(cfg, version="rt-1"))
    export_model(root / "model", root / "all", "all")
    return root


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(3)
    t = rng.gamma(2.0, 1.0, size=(21, 63, 63, 3)).astype(np.float32)
    t /= np.linalg.norm(t, axis=(1, 2), keepdims=True)
    return t, rng.normal(0, 2, size=(21, 25)).astype(np.float32)


@pytest.mark.slow
def test_load_scorer_picks_the_runtime(exported):
    root = exported
    assert isinstance(load_scorer(root / "model"), Scorer)
    assert isinstance(load_scorer(root / "all"), StableHLOScorer)  # default runtime of an `all` export
    for fmt, cls in zip(FORMATS, (StableHLOScorer, OnnxScorer, SavedModelScorer)):
        s = load_scorer(root / "all" / fmt)
        assert type(s) is cls and s.runtime == fmt
        assert s.version == "rt-1" and s.architecture == "mm_cnn" and s.card["format"] == f"btsbot-jax/{fmt}"
        assert len(s.metadata_columns) == 25 and s.image_size == 63
    assert isinstance(load_exported(root / "all", runtime="onnx"), OnnxScorer)
    assert isinstance(load_scorer(root / "all", architecture="mm_cnn"), StableHLOScorer)
    assert is_export_card(read_export_card(root / "all")) and not is_export_card({"format": "btsbot-jax/orbax"})


def test_all_runtimes_give_the_flax_scores(exported, inputs):
    t, m = inputs
    flax = load_scorer(exported / "model")(t, m)
    for fmt in FORMATS:
        got = load_scorer(exported / "all" / fmt)(t, m)
        assert got.dtype == np.float32 and got.shape == (21,)
        np.testing.assert_allclose(got, flax, atol=1e-5, rtol=0)


def test_any_batch_size_and_input_types(exported, inputs):
    t, m = inputs
    ref = load_scorer(exported / "all" / "onnx")(t, m)
    hlo = StableHLOScorer(exported / "all" / "stablehlo", buckets=(1, 8))
    for n in (1, 3, 8, 9, 21):
        np.testing.assert_allclose(hlo(t[:n], m[:n]), ref[:n], atol=1e-5, rtol=0)
    assert hlo.compiled_sizes() == 2  # sizes 1, 3, 8, 9, 21 -> buckets 1 and 8 only (9 and 21 are chunked)
    for fmt in ("onnx", "savedmodel"):
        small = load_exported(exported / "all" / fmt)
        small.max_batch = 4  # chunked
        np.testing.assert_allclose(small(t, m), ref, atol=1e-6, rtol=0)
        np.testing.assert_allclose(small(t.astype(np.float64), m.tolist()), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "t_shape,m_shape,match",
    [
        ((2, 63, 63), (2, 25), r"triplets must have shape \(N, 63, 63, 3\)"),
        ((2, 63, 63, 3), (2, 24), r"metadata must have shape \(N, 25\)"),
        ((2, 63, 63, 3), (3, 25), "disagree on N"),
    ],
)
def test_bad_shapes_are_refused_like_the_flax_scorer(exported, t_shape, m_shape, match):
    t, m = np.zeros(t_shape, np.float32), np.zeros(m_shape, np.float32)
    with pytest.raises(InputError, match=match) as flax_err:
        load_scorer(exported / "model")(t, m)
    for fmt in FORMATS:
        with pytest.raises(InputError) as err:
            load_scorer(exported / "all" / fmt)(t, m)
        assert str(err.value) == str(flax_err.value)


def test_non_finite_inputs_are_refused(exported):
    t, m = np.zeros((3, 63, 63, 3), np.float32), np.zeros((3, 25), np.float32)
    m[1, 17] = np.nan
    for fmt in FORMATS:
        with pytest.raises(InputError, match="row 1, drb"):
            load_scorer(exported / "all" / fmt)(t, m)
    t[2, 0, 0, 0] = np.inf
    with pytest.raises(InputError, match=r"triplets contain NaN or inf in row\(s\) \[2\]"):
        load_scorer(exported / "all" / "onnx")(t, np.zeros((3, 25), np.float32))


def _copy(src, dst, **card_changes):
    shutil.copytree(src, dst)
    card = json.loads((dst / "model_card.json").read_text())
    card.update(card_changes)
    (dst / "model_card.json").write_text(json.dumps(card))
    return dst


def test_broken_export_directories_fail_clearly(exported, tmp_path):
    onnx_dir = exported / "all" / "onnx"
    with pytest.raises(ExportFormatError, match="no model_card.json"):
        load_exported(tmp_path)
    with pytest.raises(ExportFormatError, match="model card format 'btsbot-jax/tflite' is not an export"):
        load_exported(_copy(onnx_dir, tmp_path / "a", format="btsbot-jax/tflite"))
    gone = _copy(onnx_dir, tmp_path / "b")
    (gone / "model.onnx").unlink()
    with pytest.raises(ExportFormatError, match="onnx artifact model.onnx is missing"):
        load_scorer(gone)
    with pytest.raises(ExportFormatError, match="this is a onnx export, not 'stablehlo'"):
        load_exported(onnx_dir, runtime="stablehlo")
    with pytest.raises(ExportFormatError, match="export holds a 'mm_cnn' model, expected 'um_nn'"):
        load_scorer(onnx_dir, architecture="um_nn")
    with pytest.raises(ExportFormatError, match=r"holds \['onnx', 'savedmodel', 'stablehlo'\], not 'tflite'"):
        load_exported(exported / "all", runtime="tflite")
    bad_json = _copy(onnx_dir, tmp_path / "c")
    (bad_json / "model_card.json").write_text("{not json")
    with pytest.raises(ExportFormatError, match="not valid JSON"):
        load_exported(bad_json)


def test_stablehlo_for_another_platform_is_refused_here(exported, tmp_path):
    """An artifact lowered for CUDA only cannot run on this CPU: say so instead of failing inside XLA."""
    import jax

    from btsbot_jax.inference.export import ExportError, _export_stablehlo, _spec

    if jax.default_backend() != "cpu":
        pytest.skip("checks the CPU refusal of a CUDA-only artifact")
    model, card = load_model(exported / "model")
    d = _copy(exported / "all" / "stablehlo", tmp_path / "cuda_only")
    _export_stablehlo(model, _spec(card, 1e-3), d, ("cuda",))
    with pytest.raises(ExportFormatError, match=r"lowered for \('cuda',\), this jax runs on 'cpu'"):
        load_scorer(d)
    # and the exporter refuses to write an artifact it could not check here
    with pytest.raises(ExportError, match="leave out this machine's 'cpu'"):
        export_model(exported / "model", tmp_path / "x", "stablehlo", platforms=("cuda",))
