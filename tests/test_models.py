import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from btsbot_jax.constants import METADATA_COLUMNS
from btsbot_jax.models import ARCHITECTURES, count_parameters, create_model, default_model_config


def test_mm_cnn_parameter_count_matches_paper():
    assert count_parameters(create_model()) == (227_811, 50)


@pytest.mark.parametrize("arch,expected", [("um_cnn", (206_897, 0)), ("um_nn", (20_931, 50))])
def test_ablation_parameter_counts(arch, expected):
    # um_cnn: convs 181,792 + Dense(3136->8) 25,096 + Dense(8->1) 9; um_nn: BN 50 + 3,328 + 16,512 + 1,032 + 9
    assert count_parameters(create_model(default_model_config(arch))) == expected


def test_config_uses_the_papers_names_and_defaults():
    cfg = default_model_config()
    assert (cfg.conv1_channels, cfg.conv2_channels, cfg.conv_kernel) == (32, 64, 5)
    assert (cfg.conv_dropout1, cfg.conv_dropout2, cfg.meta_dropout, cfg.comb_dropout) == (0.5, 0.55, 0.25, 0.2)
    assert (cfg.meta_fc1_neurons, cfg.meta_fc2_neurons, cfg.comb_fc_neurons) == (128, 128, 8)
    assert tuple(cfg.metadata_cols) == METADATA_COLUMNS and cfg.image_size == 63


def test_config_changes_the_shapes():
    cfg = default_model_config()
    cfg.conv1_channels, cfg.conv2_channels, cfg.conv_kernel, cfg.comb_fc_neurons = 8, 16, 3, 32
    m = create_model(cfg)
    assert m.image.conv1.kernel.value.shape == (3, 3, 3, 8)
    assert m.head.fc.kernel.value.shape == (7 * 7 * 16 + 128, 32)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_forward_shapes_and_range(arch):
    m = create_model(default_model_config(arch))
    m.eval()
    t = jax.random.normal(jax.random.key(0), (4, 63, 63, 3))
    md = jax.random.normal(jax.random.key(1), (4, 25))
    out = m(t, md)
    assert out.shape == (4, 1)
    assert bool(jnp.all((out >= 0) & (out <= 1)))


def test_um_nn_ignores_images_and_um_cnn_ignores_metadata():
    t1, t2 = jnp.zeros((2, 63, 63, 3)), jnp.ones((2, 63, 63, 3))
    m1, m2 = jnp.zeros((2, 25)), jnp.ones((2, 25))
    nn = create_model(default_model_config("um_nn"))
    nn.eval()
    np.testing.assert_array_equal(nn(t1, m1), nn(t2, m1))
    cnn = create_model(default_model_config("um_cnn"))
    cnn.eval()
    np.testing.assert_array_equal(cnn(t1, m1), cnn(t1, m2))


@pytest.mark.slow
def test_dropout_active_in_train_mode_only():
    m = create_model()
    t = jax.random.normal(jax.random.key(0), (8, 63, 63, 3))
    md = jax.random.normal(jax.random.key(1), (8, 25))
    m.eval()
    np.testing.assert_array_equal(m(t, md), m(t, md))
    m.train()
    a, b = m(t, md), m(t, md)
    assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_keras_style_initialisation():
    m = create_model()
    k = np.asarray(m.head.fc.kernel.value)
    limit = np.sqrt(6.0 / (3264 + 8))  # glorot_uniform
    assert np.abs(k).max() <= limit and np.abs(k).max() > 0.9 * limit
    assert np.all(np.asarray(m.head.fc.bias.value) == 0)
    assert isinstance(m.metadata.bn.mean, nnx.BatchStat)


def test_unknown_architecture_is_rejected():
    with pytest.raises(ValueError, match="unknown architecture"):
        default_model_config("resnet")
