"""BTSbot v2 training (Rehemtulla et al. 2025) in the v1 loop: the schedule, the pos_weight loss, AdamW and the 0.5%
keep-best rule by hand (each against a transcription of upstream's torch recipe); the configs; init_from (model
directories, frozen_fusion branches, a timm backbone file); and, on simulated data, a tiny ConvNeXt whose loss
decreases and whose interrupted run resumes to the same result, and a frozen_fusion whose branches do not move."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from btsbot_jax import configs
from btsbot_jax.configs import default
from btsbot_jax.training import checkpoints, init_from
from btsbot_jax.training import train as T
from btsbot_jax.training.callbacks import RelativeImprovement, WarmupCosine

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
import synthetic_training  # noqa: E402

V2_CONFIGS = {"convnext_pico": "v2_ConvNeXt", "mm_convnext_pico": "v2_mm_ConvNeXt", "frozen_fusion": "v2_frozen_fusion",
              "maxvit_tiny": "v2_MaxViT", "um_nn_v2": "v2_um_nn"}
# a ConvNeXt far smaller than atto (same blocks, stem and downsampling), registered for these tests only
TINY_KIND = "convnext_testtiny"
TINY_VARIANT = dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), conv_mlp=True)


@pytest.fixture
def tiny_convnext(monkeypatch):
    from btsbot_jax.models import convnext

    monkeypatch.setitem(convnext.CONVNEXT_VARIANTS, TINY_KIND, TINY_VARIANT)
    return TINY_KIND


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return synthetic_training.training_dir(tmp_path_factory.mktemp("synth_v2"))


def _v2_config(name, data_dir, **kw):
    c = configs.get(name)
    c.update(data_dir=str(data_dir), progress_bar=False, eval_batch_size=96)
    c.update(kw)
    return c


# ---------------------------------------------------------------------------------------------------- by hand


def _torch_sequential_lr(lr, epochs, warmup):
    """torch SequentialLR([LinearLR(0.01, warmup), CosineAnnealingLR(epochs - warmup, 0.01 lr)], [warmup]) as
    upstream steps it once per epoch, transcribed with torch's recursive (chainable) update formulas."""
    out, cur = [], lr * 0.01  # LinearLR's initial step
    eta, t_max = 0.01 * lr, max(1, epochs - warmup)
    out.append(cur)
    cos_epoch = None
    for e in range(1, epochs):
        if e < warmup:  # LinearLR.get_lr for 0 < last_epoch <= total_iters
            cur = cur * (1 + 0.99 / (warmup * 0.01 + (e - 1) * 0.99))
        elif e == warmup:  # SequentialLR calls cosine.step(0): closed form at 0 = base lr
            cos_epoch, cur = 0, lr
        else:  # CosineAnnealingLR.get_lr, recursive form
            cos_epoch += 1
            t = cos_epoch
            cur = (1 + math.cos(math.pi * t / t_max)) / (1 + math.cos(math.pi * (t - 1) / t_max)) * (cur - eta) + eta
        out.append(cur)
    return out


def test_warmup_cosine_matches_upstream_schedule():
    s = WarmupCosine(lr=5e-6, num_epochs=25, warmup_epochs=2)
    got = [s.lr_at(e) for e in range(25)]
    np.testing.assert_allclose(got, _torch_sequential_lr(5e-6, 25, 2), rtol=1e-9)
    # hand values: 0.01x, then half-way, then the full rate, then a cosine that reaches 0.01x at epoch 25
    assert got[0] == pytest.approx(5e-8) and got[1] == pytest.approx(0.505 * 5e-6) and got[2] == pytest.approx(5e-6)
    assert got[3] == pytest.approx(5e-8 + (5e-6 - 5e-8) * (1 + math.cos(math.pi / 23)) / 2)
    assert s.lr_at(25) == pytest.approx(5e-8)
    assert all(a > b for a, b in zip(got[2:], got[3:]))
    np.testing.assert_allclose([WarmupCosine(1.0, 10, 4).lr_at(e) for e in range(10)],
                               _torch_sequential_lr(1.0, 10, 4), rtol=1e-9)
    # no warm-up: a plain cosine from the full rate
    assert WarmupCosine(1.0, 10, 0).lr_at(0) == 1.0 and WarmupCosine(1.0, 10, 0).lr_at(5) == pytest.approx(0.505)


def test_pos_weight_bce_by_hand():
    logits = np.array([2.0, -1.0, 0.5, -3.0, 0.0, 4.0], np.float32)
    labels = np.array([1, 0, 0, 1, 0, 0], np.int32)
    w = T.pos_weight_weights(labels)
    np.testing.assert_array_equal(w, [1.0, 2.0])  # N_neg / N_pos = 4 / 2
    x, y, pw = logits.astype(np.float64), labels.astype(np.float64), 2.0
    s = 1 / (1 + np.exp(-x))
    want = np.mean(-(pw * y * np.log(s) + (1 - y) * np.log(1 - s)))  # torch BCEWithLogitsLoss(pos_weight), mean
    # torch's own stable form: (1 - y) x + (1 + (pw - 1) y) (log(1 + exp(-|x|)) + max(-x, 0))
    stable = np.mean((1 - y) * x + (1 + (pw - 1) * y) * (np.log1p(np.exp(-np.abs(x))) + np.maximum(-x, 0)))
    assert want == pytest.approx(stable, rel=1e-12)
    np.testing.assert_allclose(float(T.weighted_bce(logits, labels, w)), want, rtol=1e-6)
    # the validation loss (upstream's val.py uses the same weighted loss)
    assert T.eval_metrics(logits, labels, w)["loss"] == pytest.approx(want, rel=1e-12)
    assert T.eval_metrics(logits, labels)["loss"] == pytest.approx(np.mean(T.bce_numpy(logits, labels)), rel=1e-12)
    c = default.get_config()
    c.class_weighting = "pos_weight"
    np.testing.assert_array_equal(T.loss_weights(c, np.array([0, 0, 0, 1])), [1.0, 3.0])
    with pytest.raises(ValueError, match="no positive"):
        T.pos_weight_weights(np.zeros(4))


def test_relative_improvement_matches_upstream_loop():
    losses = [1.0, 0.999, 0.97, 0.966, 0.98, 0.9, 0.899, 0.8975, 0.8970, 0.8968, 0.95, 0.5]
    # upstream train.py, transcribed: best = min of all earlier val losses; improve by > 0.5%; stop after patience
    patience, ref_kept, ref_stop, since = 4, [], None, 0
    for e, v in enumerate(losses):
        if 1.005 * v < min([math.inf] + losses[:e]):
            ref_kept.append(e)
            since = 0
        else:
            since += 1
            if since >= patience:
                ref_stop = e
                break
    assert ref_kept == [0, 2, 5] and ref_stop == 9  # 0.999, 0.966 and 0.899.. are not 0.5% better
    r, kept, stop = RelativeImprovement(patience=patience), [], None
    for e, v in enumerate(losses):
        if r.improves(v):
            kept.append(e)
        if r.update(e, v):
            stop = e
            break
    assert kept == ref_kept and stop == ref_stop and r.best_epoch == 5
    history = [{"epoch": e, "val_loss": v} for e, v in enumerate(losses[: stop + 1])]
    assert checkpoints.best_epoch(history, 0.005) == 5  # the last kept epoch, not the lowest loss (epoch 9)
    assert checkpoints.best_epoch(history) == 9  # v1: the lowest


def test_adamw_step_by_hand():
    """One config-built AdamW step against torch.optim.AdamW's update, written out."""
    import jax.numpy as jnp

    c = configs.get("convnext_pico")
    c.learning_rate = 1e-2
    tx = T.make_optimizer(c)
    p = {"w": jnp.array([1.0, -2.0, 0.5])}
    g = {"w": jnp.array([0.1, 0.2, -0.3])}
    st = tx.init(p)
    u, st = tx.update(g, st, p)
    lr, b1, b2, eps, wd = 1e-2, 0.9, 0.999, 1e-8, 0.01
    w, gw = np.array([1.0, -2.0, 0.5]), np.array([0.1, 0.2, -0.3])
    w1 = w * (1 - lr * wd)
    m, v = (1 - b1) * gw, (1 - b2) * gw**2
    w1 = w1 - lr / (1 - b1) * m / (np.sqrt(v) / np.sqrt(1 - b2) + eps)
    np.testing.assert_allclose(np.asarray(p["w"] + u["w"]), w1, rtol=1e-6)


def test_v2_configs_carry_the_recipe():
    from ml_collections import config_flags

    v1 = default.get_config()
    assert (v1.optimizer, v1.lr_schedule, v1.keep_best, v1.class_weighting, v1.freeze) == (
        "adam", "plateau", "lowest", "alerts", "")
    for name, arch in V2_CONFIGS.items():
        c = configs.get(name)
        assert c.model.architecture == arch
        assert (c.optimizer, c.weight_decay, c.learning_rate, c.beta1, c.beta2) == ("adamw", 0.01, 5e-6, 0.9, 0.999)
        assert (c.lr_schedule, c.warmup_epochs, c.num_epochs, c.batch_size) == ("warmup_cosine", 2, 25, 64)
        assert (c.class_weighting, c.weighted_val_loss, c.keep_best, c.keep_best_min_rel_delta) == (
            "pos_weight", True, "relative", 0.005)
        assert c.early_stopping_patience == 5 and c.augment
        if arch in ("v2_ConvNeXt", "v2_MaxViT"):
            assert (c.model.fc1_neurons, c.model.fc2_neurons) == (256, 8)
        assert c.freeze == ("image_branch,meta_branch" if name == "frozen_fusion" else "")
        path = str(REPO / "experiments/configs" / f"{name}.py")
        by_path = config_flags.config_flags._LoadConfigModule(f"cfg_{name}", path)
        assert by_path.get_config().to_dict() == c.to_dict()
    assert configs.get("convnext_pico").model.model_kind.startswith("convnext_pico")
    assert configs.get("maxvit_tiny").model.model_kind.startswith("maxvit_tiny_rw_224")


# ------------------------------------------------------------------------------------------------- init_from


def _tiny_image_config(kind):
    from btsbot_jax.models import default_model_config

    m = default_model_config("v2_ConvNeXt")
    m.model_kind = kind
    m.fc1_neurons, m.fc2_neurons = 16, 8
    return m


def _tiny_fusion_config(kind):
    from btsbot_jax.models import default_model_config

    m = default_model_config("v2_frozen_fusion")
    m.image_model_config.model_kind = kind
    m.image_model_config.fc1_neurons, m.image_model_config.fc2_neurons = 16, 8
    m.meta_model_config.meta_fc1_neurons, m.meta_model_config.meta_fc2_neurons = 16, 8
    m.meta_model_config.meta_dropout = 0.3
    m.comb_fc1_neurons, m.comb_fc2_neurons = 8, 4
    return m


def _saved(model_config, seed, out, stats_shift=0.0):
    """A model directory of a fresh model (BatchNorm statistics shifted so that they differ from a fresh model's)."""
    import jax
    from flax import nnx

    from btsbot_jax.models import create_model
    from btsbot_jax.models.model_dir import make_model_card, save_model

    model = create_model(model_config, seed)
    if stats_shift:
        stats = nnx.state(model, nnx.BatchStat)
        nnx.update(model, jax.tree.map(lambda x: x + stats_shift, stats))
    save_model(model, out, make_model_card(model_config, version="test"))
    return model


def _key(path) -> str:
    """A leaf path as 'a/b/0/c', the same for an nnx state and its orbax-restored dict."""
    parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
    return "/".join(p for p in parts if p != "value")


def _flat_tree(tree):
    import jax

    return {_key(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _flat(model, filt=None):
    from flax import nnx

    return _flat_tree(nnx.state(model, filt or (nnx.Param, nnx.BatchStat)))


@pytest.mark.slow
def test_init_from_dirs_branches_and_errors(tiny_convnext, tmp_path):
    import ml_collections

    from btsbot_jax.models import create_model, default_model_config

    img = _saved(_tiny_image_config(tiny_convnext), 5, tmp_path / "img")
    meta_cfg = default_model_config("v2_um_nn")
    meta_cfg.update(meta_fc1_neurons=16, meta_fc2_neurons=8, meta_dropout=0.3)
    meta = _saved(meta_cfg, 6, tmp_path / "meta", stats_shift=0.25)

    # whole model
    c = ml_collections.ConfigDict({"model": _tiny_image_config(tiny_convnext), "init_from": str(tmp_path / "img")})
    fresh = create_model(c.model, 0)
    assert init_from.apply(fresh, c) == {"init_from": str(tmp_path / "img")}
    a, b = _flat(fresh), _flat(img)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    # frozen_fusion branches: everything up to the cut, the source heads left out, the new head untouched
    ff_cfg = _tiny_fusion_config(tiny_convnext)
    c = ml_collections.ConfigDict({"model": ff_cfg, "init_from_image": str(tmp_path / "img"),
                                   "init_from_metadata": str(tmp_path / "meta")})
    ff = create_model(ff_cfg, 0)
    head_before = _flat(ff.combined_head)
    init_from.apply(ff, c)
    fi, fm, si, sm = _flat(ff.image_branch), _flat(ff.meta_branch), _flat(img), _flat(meta)
    assert fi and all(np.array_equal(v, si[k]) for k, v in fi.items())
    assert fm and all(np.array_equal(v, sm[k]) for k, v in fm.items())
    assert any("mean" in k for k in fm)  # BatchNorm statistics came along
    assert all(np.array_equal(v, head_before[k]) for k, v in _flat(ff.combined_head).items())

    # errors name what is wrong
    c = ml_collections.ConfigDict({"model": ff_cfg, "init_from_image": str(tmp_path / "meta")})
    with pytest.raises(init_from.InitFromError, match="v2_um_nn"):
        init_from.apply(create_model(ff_cfg, 0), c)
    c = ml_collections.ConfigDict({"model": ff_cfg, "init_from": str(tmp_path / "img")})
    with pytest.raises(init_from.InitFromError, match="v2_ConvNeXt"):
        init_from.apply(create_model(ff_cfg, 0), c)
    wide = _tiny_image_config(tiny_convnext)
    wide.fc1_neurons = 32
    c = ml_collections.ConfigDict({"model": wide, "init_from": str(tmp_path / "img")})
    with pytest.raises(init_from.InitFromError, match=r"head/fc1/bias has shape \(16,\), [a-z ]+ expects \(32,"):
        init_from.apply(create_model(wide, 0), c)


@pytest.mark.slow
def test_init_from_timm_backbone(tiny_convnext, tmp_path):
    """A timm-layout checkpoint of the backbone alone (torch layouts, timm key names, timm's own classifier)."""
    import ml_collections
    from safetensors.numpy import save_file

    from btsbot_jax.models import create_model

    cfg = _tiny_image_config(tiny_convnext)
    src = create_model(cfg, 9)
    ours = {k: v for k, v in _flat(src).items()}
    sd = {}
    for key, (path, kind) in src.torch_map().items():
        if not key.startswith("convnext.") or key.startswith("convnext.head.") and not key.startswith(
                "convnext.head.1."):
            continue
        v = ours["/".join(str(p) for p in path)]
        v = {"conv": lambda w: np.transpose(w, (3, 2, 0, 1)), "dense": lambda w: w.T, "same": lambda w: w}[kind](v)
        timm_key = key[len("convnext."):].replace("head.1.", "head.norm.")
        sd[timm_key] = np.ascontiguousarray(v, np.float32)
    sd["head.fc.weight"] = np.zeros((1000, 32), np.float32)  # timm's ImageNet classifier: not used
    sd["head.fc.bias"] = np.zeros((1000,), np.float32)
    save_file(sd, str(tmp_path / "model.safetensors"))

    model = create_model(cfg, 0)
    head_before = _flat(model.head)
    c = ml_collections.ConfigDict({"model": cfg, "init_from_timm": str(tmp_path)})
    init_from.apply(model, c)
    got = _flat(model)
    for k, v in _flat(src.convnext).items():
        np.testing.assert_array_equal(got["convnext/" + k], v, err_msg=k)
    np.testing.assert_array_equal(got["head_norm/scale"], ours["head_norm/scale"])
    assert all(np.array_equal(v, head_before[k]) for k, v in _flat(model.head).items())

    del sd["stages.0.blocks.0.gamma"]
    sd["stages.9.weird"] = np.zeros(3, np.float32)
    save_file(sd, str(tmp_path / "bad.safetensors"))
    c.init_from_timm = str(tmp_path / "bad.safetensors")
    with pytest.raises(init_from.InitFromError, match="stages.9.weird"):
        init_from.apply(create_model(cfg, 0), c)
    del sd["stages.9.weird"]
    save_file(sd, str(tmp_path / "bad.safetensors"))
    with pytest.raises(init_from.InitFromError, match=r"missing: stages\.0\.blocks\.0\.gamma"):
        init_from.apply(create_model(cfg, 0), c)


# -------------------------------------------------------------------------------------------- training loops


def _history(workdir):
    rows = json.loads((Path(workdir) / "metrics.json").read_text())
    return [{k: v for k, v in r.items() if k not in ("alerts_per_s", "epoch_time_s")} for r in rows]


def _latest_state(workdir):
    import orbax.checkpoint as ocp

    ck = Path(workdir) / "checkpoints"
    last = max(int(p.name) for p in ck.iterdir() if p.name.isdigit())
    tree = ocp.StandardCheckpointer().restore((ck / str(last) / "state").absolute())
    return last, tree


_CACHE = Path(os.environ.get("TMPDIR", "/tmp")) / f"btsbot-test-jax-cache-{os.getuid()}"

# One training run in a fresh process (as btsbot-train runs it), with the tiny ConvNeXt registered; with DIE_AFTER
# set, the process hard-exits (no cleanup, like a kill) right after the checkpoint of that epoch is written.
_RUN = textwrap.dedent("""
    import json, os, sys
    import ml_collections
    from btsbot_jax.models import convnext
    from btsbot_jax.training import checkpoints
    from btsbot_jax.training import train as T
    convnext.CONVNEXT_VARIANTS[{kind!r}] = {variant!r}
    die_after = {die_after!r}
    if die_after is not None:
        real_prune = checkpoints.prune
        def prune_then_die(mngr, history, *a):
            real_prune(mngr, history, *a)
            if history[-1]["epoch"] == die_after:
                os._exit(9)
        checkpoints.prune = prune_then_die
    config = ml_collections.ConfigDict(json.loads({config!r}))
    print("RESULT" + json.dumps(T.train_and_evaluate(config, {workdir!r})))
""")


def _run(config, workdir, die_after=None):
    code = _RUN.format(kind=TINY_KIND, variant=TINY_VARIANT, die_after=die_after, config=config.to_json(),
                       workdir=str(workdir))
    # the three runs compile the same programs: share them through JAX's persistent compilation cache
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
               JAX_COMPILATION_CACHE_DIR=str(_CACHE), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, env=env)
    if die_after is not None:
        assert r.returncode == 9, r.stderr[-3000:]
        return None
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.split("RESULT", 1)[1])


@pytest.mark.slow
def test_tiny_convnext_learns_and_resumes_exactly(data_dir, tmp_path):
    kw = dict(learning_rate=3e-3, warmup_epochs=1, num_epochs=4, batch_size=32, max_steps_per_epoch=6,
              early_stopping_patience=10, seed=3)
    c = _v2_config("convnext_pico", data_dir, **kw)
    c.model.model_kind = TINY_KIND
    c.model.fc1_neurons, c.model.fc2_neurons = 16, 8
    ref = _run(c, tmp_path / "ref")
    h = _history(tmp_path / "ref")
    assert len(h) == 4 and ref["stop_reason"] == "num_epochs"
    # the schedule, per epoch
    s = WarmupCosine(3e-3, 4, 1)
    assert [r["lr"] for r in h] == [s.lr_at(e) for e in range(4)]
    # it learns: the training loss falls and the validation loss ends below where it started
    assert h[-1]["loss"] < h[0]["loss"] and h[-1]["val_loss"] < h[0]["val_loss"], h
    assert ref["best_val_auc"] > 0.8, ref
    # the class weights are (1, N_neg / N_pos) of the training split
    from btsbot_jax.data.sources import load_sources
    from btsbot_jax.data.training_set import load_split

    labels = load_sources(c)["train"].labels
    assert ref["class_weights"] == pytest.approx([1.0, np.sum(labels == 0) / np.sum(labels == 1)])
    # best/ is the last epoch that improved by > 0.5%, and load_scorer reads it
    assert ref["best_epoch"] == checkpoints.best_epoch(h, 0.005)
    from btsbot_jax.inference.scorer import load_scorer
    from btsbot_jax.models.model_dir import read_model_card

    assert read_model_card(tmp_path / "ref" / "best")["architecture"] == "v2_ConvNeXt"
    test = load_split(data_dir, "test")
    from btsbot_jax.models import convnext

    convnext.CONVNEXT_VARIANTS[TINY_KIND] = TINY_VARIANT
    try:
        scores = load_scorer(tmp_path / "ref")(np.asarray(test.triplets), test.metadata)
    finally:
        del convnext.CONVNEXT_VARIANTS[TINY_KIND]
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(test.labels, scores) == pytest.approx(ref["test_auc"], abs=1e-6)

    # killed right after epoch 1 is checkpointed, then restarted: the same history and the same final state
    _run(c, tmp_path / "run", die_after=1)
    assert not (tmp_path / "run" / "summary.json").exists()
    again = _run(c, tmp_path / "run")
    assert _history(tmp_path / "run") == h
    assert again["best_epoch"] == ref["best_epoch"] and again["test_auc"] == ref["test_auc"]
    (e1, t1), (e2, t2) = _latest_state(tmp_path / "run"), _latest_state(tmp_path / "ref")
    assert e1 == e2 == 3
    f1, f2 = _flat_tree(t1), _flat_tree(t2)
    assert f1.keys() == f2.keys()
    for k in f1:
        np.testing.assert_array_equal(f1[k], f2[k], err_msg=k)


@pytest.mark.slow
def test_frozen_fusion_trains_only_its_head(tiny_convnext, data_dir, tmp_path):
    from btsbot_jax.models import default_model_config
    from btsbot_jax.models.model_dir import load_model

    ff_cfg = _tiny_fusion_config(tiny_convnext)
    img = _saved(_img_cfg(ff_cfg), 5, tmp_path / "img")
    meta_cfg = default_model_config("v2_um_nn")
    meta_cfg.update(meta_fc1_neurons=16, meta_fc2_neurons=8, meta_dropout=0.3)
    meta = _saved(meta_cfg, 6, tmp_path / "meta", stats_shift=0.25)
    c = _v2_config("frozen_fusion", data_dir, learning_rate=1e-2, warmup_epochs=0, num_epochs=2, batch_size=32,
                   max_steps_per_epoch=4, init_from_image=str(tmp_path / "img"),
                   init_from_metadata=str(tmp_path / "meta"))
    c.model = ff_cfg
    summary = T.train_and_evaluate(c, tmp_path / "ff")
    assert summary["epochs_run"] == 2
    _, state = _latest_state(tmp_path / "ff")
    weights = {**_flat_tree(state["params"]), **_flat_tree(state["batch_stats"])}
    # the branches: bit-identical to the directories they came from, BatchNorm statistics included
    n = 0
    for branch, src in (("image_branch/", _flat(img)), ("meta_branch/", _flat(meta))):
        for k, v in weights.items():
            if k.startswith(branch):
                np.testing.assert_array_equal(v, src[k[len(branch):]], err_msg=k)
                n += 1
    assert n == sum(1 for k in weights if not k.startswith("combined_head/")) > 20
    assert any(k.startswith("meta_branch/bn/mean") for k in weights)
    # the head moved
    best, _ = load_model(tmp_path / "ff")
    from btsbot_jax.models import create_model

    fresh_head = _flat(create_model(ff_cfg, int(c.seed)).combined_head)
    moved = _flat(best.combined_head)
    assert any(not np.array_equal(moved[k], fresh_head[k]) for k in fresh_head)


def _img_cfg(ff_cfg):
    from btsbot_jax.models.v2 import v2_model_config

    return v2_model_config(ff_cfg.image_model_config.to_dict())
