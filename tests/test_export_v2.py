"""btsbot-export for BTSbot v2 models: StableHLO and the ONNX BOOM loads (upstream's signature), each checked."""

import json

import numpy as np
import pytest
from v2_fixtures import LOGIT_TOL, SCORE_TOL, fixture_dir, fixture_inputs, sigmoid64

from btsbot_jax.inference.export import ExportError, export_model
from btsbot_jax.inference.runtimes import load_exported


@pytest.fixture(scope="module")
def atto_export(tmp_path_factory):
    from btsbot_jax.inference.import_torch import import_torch

    d = tmp_path_factory.mktemp("v2export")
    model_dir = import_torch(fixture_dir("mm_convnext_atto"), d / "model")
    card = export_model(model_dir, d / "export", "all", platforms=("cpu",), n_probe=16)
    return model_dir, d / "export", card


@pytest.mark.slow
def test_all_writes_stablehlo_and_an_onnx_with_upstreams_signature(atto_export):
    import onnx

    _, out, card = atto_export
    assert sorted(card["exports"]) == ["onnx", "stablehlo"]  # no SavedModel for v2
    for fmt, v in card["verification"].items():
        assert v["max_abs_diff"] <= 1e-4, fmt
    assert card["verification"]["onnx"]["max_abs_logit_diff"] <= 1e-4
    proto = onnx.load(str(out / "onnx" / "model.onnx"))
    dims = lambda vi: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    assert {i.name: dims(i) for i in proto.graph.input} == {"image": ["N", 3, 63, 63], "metadata": ["N", 25]}
    assert {o.name: dims(o) for o in proto.graph.output} == {"logits": ["N", 1]}
    onnx_card = json.loads((out / "onnx" / "model_card.json").read_text())
    assert onnx_card["signature"]["outputs"] == {"logits": [None, 1]}


@pytest.mark.slow
def test_the_onnx_reproduces_upstreams_logits_on_the_fixture(atto_export, usage_examples):
    import onnxruntime as ort

    _, out, _ = atto_export
    t, m = fixture_inputs(usage_examples, "mm_convnext_atto")
    sess = ort.InferenceSession(str(out / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = sess.run(["logits"], {"image": np.ascontiguousarray(t.transpose(0, 3, 1, 2)), "metadata": m})
    expected = np.load(fixture_dir("mm_convnext_atto") / "expected.npz")["logits"]
    assert logits.shape == (39, 1) and np.abs(logits - expected).max() <= LOGIT_TOL
    (one,) = sess.run(["logits"], {"image": np.ascontiguousarray(t[:1].transpose(0, 3, 1, 2)), "metadata": m[:1]})
    np.testing.assert_allclose(one, logits[:1], atol=1e-5)  # dynamic batch
    for runtime in ("onnx", "stablehlo"):  # what btsbot-score runs on an export directory
        scores = load_exported(out, runtime=runtime)(t, m)
        assert np.abs(scores - sigmoid64(expected[:, 0])).max() <= SCORE_TOL, runtime


@pytest.mark.slow
def test_an_image_only_model_exports_with_image_alone(tmp_path):
    import onnx

    from btsbot_jax.models import create_model, default_model_config
    from btsbot_jax.models.model_dir import make_model_card, save_model

    cfg = default_model_config("v2_ConvNeXt")
    cfg.model_kind = "convnext_atto.d2_in1k"
    src = save_model(create_model(cfg, seed=3), tmp_path / "m", make_model_card(cfg, version="test"))
    card = export_model(src, tmp_path / "onnx", "onnx", n_probe=8)
    assert card["verification"]["max_abs_logit_diff"] <= 1e-4
    proto = onnx.load(str(tmp_path / "onnx" / "model.onnx"))
    assert [i.name for i in proto.graph.input] == ["image"]
    with pytest.raises(ExportError, match="no SavedModel export for BTSbot v2"):
        export_model(src, tmp_path / "sm", "savedmodel")
