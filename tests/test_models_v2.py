"""BTSbot v2 models: parity with upstream PyTorch on the fixtures, and the structure the importer relies on."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from v2_fixtures import (
    FEATURE_TOL,
    LOGIT_TOL,
    SCORE_TOL,
    fixture_dir,
    fixture_inputs,
    sigmoid64,
    train_config,
)

from btsbot_jax.inference.import_torch import load_state_into, read_torch_bin
from btsbot_jax.models import V2_ARCHITECTURES, create_model, default_model_config
from btsbot_jax.models.maxvit import relative_position_index
from btsbot_jax.models.v2 import create_v2_model, v2_model_config
from btsbot_jax.models.v2_layers import bilinear_matrix, resize_bilinear


def _fixture_model(name):
    model = create_v2_model(train_config(name))
    load_state_into(model, read_torch_bin(fixture_dir(name) / "pytorch_model.bin"))
    model.eval()
    return model


def _check_parity(model, name, usage_examples, features):
    t, m = fixture_inputs(usage_examples, name)
    expected = np.load(fixture_dir(name) / "expected.npz")

    @jax.jit
    def run(t, m):
        return model.logits(t, m), {k: f(t, m) for k, f in features.items()}

    logits, feats = run(t, m)
    logits = np.asarray(logits)
    assert logits.shape == expected["logits"].shape == (39, 1)
    assert np.abs(logits - expected["logits"]).max() <= LOGIT_TOL
    assert np.abs(np.asarray(nnx.sigmoid(logits), np.float64) - sigmoid64(expected["logits"])).max() <= SCORE_TOL
    for k, v in feats.items():
        assert np.asarray(v).shape == expected[k].shape, k
        assert np.abs(np.asarray(v) - expected[k]).max() <= FEATURE_TOL, k
    return logits


def _nchw(x):
    return x.transpose(0, 3, 1, 2)


@pytest.mark.slow
def test_mm_convnext_atto_matches_upstream(usage_examples):
    model = _fixture_model("mm_convnext_atto")
    _check_parity(model, "mm_convnext_atto", usage_examples,
                  {"backbone_feature_map": lambda t, m: _nchw(model.feature_map(t))})


@pytest.mark.slow
def test_frozen_fusion_convnext_pico_matches_upstream(usage_examples):
    model = _fixture_model("convnext_pico_metadata")
    logits = _check_parity(model, "convnext_pico_metadata", usage_examples,
                           {"image_features": lambda t, m: model.image_features(t),
                            "meta_features": lambda t, m: model.meta_features(m)})
    assert np.ptp(logits) > 1  # the outputs depend on the inputs (not a constant that matches by accident)


@pytest.mark.slow
def test_maxvit_nano_matches_upstream(usage_examples):
    model = _fixture_model("maxvit_nano_image")
    _check_parity(model, "maxvit_nano_image", usage_examples,
                  {"backbone_feature_map": lambda t, m: _nchw(model.feature_map(t))})


def test_bilinear_resize_equals_jax_image_resize():
    # upsampling (what MaxViT does to the 63 px triplet): no antialiasing, half-pixel centres, clamped edges
    x = jax.random.normal(jax.random.key(0), (1, 63, 63, 2))
    for size in (224, 256):
        ours = resize_bilinear(x, size)
        ref = jax.image.resize(x, (1, size, size, 2), method="bilinear")
        np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=2e-6)
    m = bilinear_matrix(256, 63)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-6)
    assert m[0, 0] == 1.0 and m[-1, -1] == 1.0  # edges clamp


def test_relative_position_index_is_timms_swin_layout():
    w = 3
    idx = relative_position_index(w)
    assert idx.shape == (9, 9) and idx.min() == 0 and idx.max() == (2 * w - 1) ** 2 - 1
    assert idx[0, 0] == idx[4, 4] == (w - 1) * (2 * w - 1) + (w - 1)  # zero offset: centre of the table
    assert idx[8, 0] == (2 + w - 1) * (2 * w - 1) + (2 + w - 1)  # query (2,2), key (0,0): dh = dw = +2


def _small(arch):
    cfg = default_model_config(arch)
    if "model_kind" in cfg:
        cfg.model_kind = "maxvit_pico_rw_256.untrained" if "MaxViT" in arch else "convnext_atto.d2_in1k"
    if arch == "v2_frozen_fusion":
        cfg.image_model_config.model_kind = "convnext_atto.d2_in1k"
    return cfg


@pytest.mark.parametrize("arch", [a for a in V2_ARCHITECTURES if "MaxViT" not in a])
def test_every_weight_has_exactly_one_upstream_key(arch):
    model = create_model(_small(arch))
    tmap = model.torch_map()
    ours = {tuple(p) for p, _ in jax.tree_util.tree_flatten_with_path(
        nnx.to_pure_dict(nnx.state(model, (nnx.Param, nnx.BatchStat))))[0]}
    ours = {tuple(getattr(k, "key", k) for k in p) for p in ours}
    mapped = [path for path, _ in tmap.values()]
    assert len(mapped) == len(set(mapped)) and set(mapped) == ours


@pytest.mark.slow
def test_maxvit_weights_each_have_one_upstream_key_and_the_fixture_has_them_all():
    name = "maxvit_nano_image"
    model = create_v2_model(train_config(name))
    keys = set(read_torch_bin(fixture_dir(name) / "pytorch_model.bin"))
    tmap = model.torch_map()
    assert set(tmap) == {k for k in keys if not k.endswith("num_batches_tracked")}
    n_ours = sum(x.size for x in jax.tree.leaves(nnx.state(model, (nnx.Param, nnx.BatchStat))))
    assert len({p for p, _ in tmap.values()}) == len(tmap) and n_ours > 15_000_000


def _jitted(model):
    """(score, logit) of an eval-mode model under one jit (eagerly every op would compile on its own)."""
    model.eval()
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, t, m):
        mod = nnx.merge(graphdef, state)
        return mod(t, m), mod.logits(t, m)

    return lambda t, m: run(state, t, m)


@pytest.mark.slow
def test_the_models_take_v1s_inputs_and_return_sigmoid_of_the_logit():
    t = jax.random.normal(jax.random.key(0), (3, 63, 63, 3))
    m = jax.random.normal(jax.random.key(1), (3, 25))
    for arch in ("v2_mm_ConvNeXt", "v2_frozen_fusion", "v2_um_nn", "v2_ConvNeXt"):
        run = _jitted(create_model(_small(arch), seed=1))
        out, logit = run(t, m)
        assert out.shape == logit.shape == (3, 1)
        np.testing.assert_allclose(np.asarray(out), np.asarray(jax.nn.sigmoid(logit)), rtol=1e-6)
        if arch == "v2_ConvNeXt":  # image only: the metadata is ignored
            np.testing.assert_array_equal(run(t, m)[0], run(t, m + 5)[0])
        if arch == "v2_um_nn":  # metadata only: the image is ignored
            np.testing.assert_array_equal(run(t, m)[0], run(t + 5, m)[0])


def test_dropout_only_in_train_mode():
    model = create_model(_small("v2_um_nn"))
    t, m = jnp.ones((64, 63, 63, 3)), jax.random.normal(jax.random.key(2), (64, 25))
    step = nnx.jit(lambda mod, t, m: mod.logits(t, m))
    model.train()
    assert not np.array_equal(step(model, t, m), step(model, t, m))
    model.eval()
    np.testing.assert_array_equal(step(model, t, m), step(model, t, m))


def test_unsupported_configs_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="unsupported ConvNeXt model_kind 'convnext_small"):
        create_v2_model({"model_name": "ConvNeXt", "model_kind": "convnext_small.fb_in1k", "fc1_neurons": 8,
                         "fc2_neurons": 4, "dropout": 0.1})
    with pytest.raises(ValueError, match="unsupported BTSbot v2 model_name 'mm_cnn'"):
        v2_model_config({"model_name": "mm_cnn"})
    cfg = default_model_config("v2_frozen_fusion").to_dict()
    cfg["image_model_config"] = {"model_name": "um_cnn"}
    with pytest.raises(ValueError, match="um_cnn"):
        create_v2_model(cfg)
    mm = default_model_config("v2_mm_ConvNeXt")
    mm.image_size = 127  # final map 3x3: upstream's head (sized for a 1x1 map) would not fit
    with pytest.raises(ValueError, match="1x1"):
        create_model(mm)


@pytest.mark.parametrize("n_in,n_out,kernel,stride,padding,groups,side", [
    (64, 64, 7, 1, None, 64, 15),    # ConvNeXt depthwise, every tap inside the map
    (256, 256, 7, 1, None, 256, 3),  # ConvNeXt stage 3: taps beyond the 3x3 map skipped
    (512, 512, 7, 1, None, 512, 1),  # stage 4: only the centre tap
    (32, 32, 3, 2, None, 32, 8),     # MaxViT MBConv depthwise, stride 2, even side
    (32, 32, 3, 2, None, 32, 7),     # odd side
    (16, 16, 3, 2, None, 16, 1),
    (8, 8, 5, 2, None, 8, 9),
    (3, 64, 4, 4, 0, 1, 63),         # ConvNeXt patch stem: 63 -> 15, the last 3 rows/columns unused
    (64, 128, 2, 2, 0, 1, 15),       # ConvNeXt downsampling
    (32, 48, 1, 1, 0, 1, 5),         # 1x1 convolution
    (16, 24, 3, 2, None, 1, 9),      # an ordinary strided conv: nnx.Conv's own path
])
def test_conv2d_rewrites_equal_nnx_conv(n_in, n_out, kernel, stride, padding, groups, side):
    """v2_layers.Conv2d computes depthwise and patchify convolutions as shifted sums / a matmul: the same values
    as nnx.Conv with the same parameters (float32 rounding only)."""
    from btsbot_jax.models.v2_layers import conv

    c = conv(n_in, n_out, kernel, stride=stride, padding=padding, groups=groups, rngs=nnx.Rngs(0))
    c.kernel.value = jax.random.normal(jax.random.key(1), c.kernel.shape)
    c.bias.value = jax.random.normal(jax.random.key(2), c.bias.shape)
    x = jax.random.normal(jax.random.key(3), (3, side, side, n_in))
    ref = nnx.Conv.__call__(c, x)
    got = c(x)
    assert got.shape == ref.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5, rtol=1e-5)
