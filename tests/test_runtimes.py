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


# ------------------------------------------------------------------------------------ self-describing artifacts


def _onnx_props(path):
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _set_onnx_props(path, **changes):
    import onnx

    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    props.update(changes)
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))


def test_every_artifact_carries_the_model_card(exported):
    """ONNX metadata_props, the SavedModel's asset and `model_card` signature, the StableHLO card beside it: one
    and the same deployment card, with what a broker needs to call the model and act on its output."""
    import tensorflow as tf

    from btsbot_jax import __version__
    from btsbot_jax.constants import METADATA_COLUMNS

    root = exported / "all"
    props = _onnx_props(root / "onnx" / "model.onnx")
    onnx_card = json.loads(props["model_card"])
    loaded = tf.saved_model.load(str(root / "savedmodel"))
    sig_card = json.loads(loaded.signatures["model_card"]()["model_card"].numpy())
    asset_card = json.loads((root / "savedmodel" / "assets" / "model_card.json").read_text())
    hlo_card = read_export_card(root / "stablehlo")["deployment"]
    assert onnx_card == sig_card == asset_card == hlo_card == read_export_card(root)["deployment"]

    c = onnx_card
    assert c["architecture"] == "mm_cnn" and c["model_version"] == "rt-1" and c["btsbot_jax_version"] == __version__
    assert tuple(c["metadata_columns"]) == METADATA_COLUMNS and c["input_names"] == ["triplet", "metadata"]
    assert c["inputs"]["triplet"]["shape"] == ["N", 63, 63, 3] and c["inputs"]["triplet"]["layout"].startswith("NHWC")
    assert c["inputs"]["triplet"]["channels"] == ["science", "template", "difference"]
    assert c["inputs"]["metadata"]["columns"] == c["metadata_columns"]
    assert c["output_meaning"] == "score" and c["output"]["name"] == "fc_out"
    assert "not a logit" in c["output"]["description"]
    assert c["decision_threshold"] == 0.5
    p = c["policies"]
    assert (p["bts_p1"]["min_alerts"], p["bts_p1"]["score_above"], p["bts_p1"]["magpsf_below"]) == (2, 0.5, 19.0)
    assert p["bts_p2"]["brightest_magpsf_so_far_at_most"] == 18.5
    assert "brightest_magpsf_so_far_at_most" not in p["bts_p1"]
    assert (p["prod_p1"]["min_alerts"], p["prod_p1"]["score_above"], p["prod_p1"]["magpsf_below"]) == (1, 0.85, 19.0)
    assert p["prod_p2"]["brightest_magpsf_so_far_at_most"] == 18.5
    # the flat metadata_props a broker reads without parsing the whole card
    assert props["architecture"] == "mm_cnn" and props["model_version"] == props["version"] == "rt-1"
    assert json.loads(props["metadata_columns"]) == list(METADATA_COLUMNS) and props["output_meaning"] == "score"
    assert float(props["decision_threshold"]) == 0.5 and props["btsbot_jax_version"] == __version__
    assert props["input_layout"].startswith("triplet: float32 (N, 63, 63, 3) NHWC")
    # and onnxruntime, what brokers run, exposes them
    import onnxruntime as ort

    meta = ort.InferenceSession(str(root / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"]).get_modelmeta()
    assert json.loads(meta.custom_metadata_map["model_card"]) == c


def test_scorers_take_the_column_order_from_the_artifact(exported, tmp_path):
    """A model_card.json that does not belong to its artifact is refused; the artifact is the authority."""
    swapped = list(read_export_card(exported / "all" / "onnx")["metadata_columns"])
    swapped[0], swapped[1] = swapped[1], swapped[0]
    for fmt in ("onnx", "savedmodel"):
        d = _copy(exported / "all" / fmt, tmp_path / fmt, metadata_columns=swapped)
        with pytest.raises(ExportFormatError, match="does not belong to this artifact") as err:
            load_scorer(d)
        assert "'distpsnr1', 'sgscore1'" in str(err.value)  # names both orders
    # an ONNX file that states another order, with a card that agrees: loads, and says what it expects
    d = _copy(exported / "all" / "onnx", tmp_path / "reordered", metadata_columns=swapped)
    _set_onnx_props(d / "model.onnx", metadata_columns=json.dumps(swapped))
    s = load_scorer(d)
    assert list(s.metadata_columns) == swapped
    bad = _copy(exported / "all" / "onnx", tmp_path / "garbled")
    _set_onnx_props(bad / "model.onnx", metadata_columns="{not json")
    with pytest.raises(ExportFormatError, match="unreadable model card in metadata_props"):
        load_scorer(bad)


def test_scoring_refuses_a_model_with_another_column_order(exported, tmp_path):
    import subprocess
    import sys

    from btsbot_jax.inference.deployment import ColumnOrderError
    from btsbot_jax.serve.batch import score_paths

    swapped = list(read_export_card(exported / "all" / "onnx")["metadata_columns"])
    swapped[3], swapped[5] = swapped[5], swapped[3]
    d = _copy(exported / "all" / "onnx", tmp_path / "reordered", metadata_columns=swapped)
    _set_onnx_props(d / "model.onnx", metadata_columns=json.dumps(swapped))
    with pytest.raises(ColumnOrderError, match="first difference at position 3: model 'magpsf', ingestion 'distpsnr2'"):
        score_paths(load_scorer(d), [tmp_path], progress=False)
    r = subprocess.run(
        [sys.executable, "-m", "btsbot_jax.cli.score", f"--checkpoint={d}", f"--input={tmp_path}",
         f"--output={tmp_path / 'scores.csv'}", "--noprogress"],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 2 and "refusing checkpoint" in r.stderr and "metadata column order differs" in r.stderr
    assert not (tmp_path / "scores.csv").exists()


def test_onnx_runtime_prefers_cuda_when_installed(exported):
    import onnxruntime as ort

    from btsbot_jax.inference.runtimes import onnx_providers

    assert onnx_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    s = load_scorer(exported / "all" / "onnx")
    want = ["CUDAExecutionProvider", "CPUExecutionProvider"] if "CUDAExecutionProvider" in \
        ort.get_available_providers() else ["CPUExecutionProvider"]
    assert s.session.get_providers() == want


def test_stream_scorer_refuses_another_column_order(tmp_path):
    """btsbot-stream builds its StreamScorer from the loaded model: same refusal, before touching Kafka."""
    from btsbot_jax.constants import METADATA_COLUMNS
    from btsbot_jax.inference.deployment import ColumnOrderError
    from btsbot_jax.serve.batch import check_scorer_columns
    from btsbot_jax.serve.stream import StreamConfig, StreamScorer

    class Fake:
        version = "fake"

        def __init__(self, columns):
            self.metadata_columns = columns

        def __call__(self, t, m):
            return np.zeros(len(t), np.float32)

    cfg = StreamConfig(bootstrap_servers="localhost:1", topics=["t"], group_id="g", output_path=str(tmp_path / "o"))
    reordered = (*METADATA_COLUMNS[:-2], METADATA_COLUMNS[-1], METADATA_COLUMNS[-2])
    with pytest.raises(ColumnOrderError, match="position 23: model 'maxmag_so_far', ingestion 'sky'"):
        StreamScorer(Fake(reordered), cfg)
    with pytest.raises(ColumnOrderError, match="it expects 24 columns, the ingestion builds 25"):
        check_scorer_columns(Fake(METADATA_COLUMNS[:24]))
    check_scorer_columns(Fake(METADATA_COLUMNS))
    check_scorer_columns(lambda t, m: np.zeros(len(t)))  # a plain callable states no order: taken as it is


def test_column_order_check_takes_the_published_spellings():
    """`new_drb` (BTSbot v2's train_config, the published training CSVs) and Kowalski's `nnondet` are the same
    features as `drb` and `nnotdet`; an actual reordering is still refused."""
    from btsbot_jax.constants import METADATA_COLUMNS
    from btsbot_jax.inference.deployment import ColumnOrderError, check_column_order

    spelled = ["new_drb" if c == "drb" else "nnondet" if c == "nnotdet" else c for c in METADATA_COLUMNS]
    assert spelled != list(METADATA_COLUMNS)
    check_column_order(spelled, "v2 import")
    swapped = list(spelled)
    i, j = swapped.index("new_drb"), swapped.index("scorr")
    swapped[i], swapped[j] = swapped[j], swapped[i]
    with pytest.raises(ColumnOrderError, match="model 'scorr', ingestion 'drb'"):
        check_column_order(swapped, "v2 import")
