"""Training: class weights and loss by hand, Keras callback parity, the jitted step, resume after kill -9,
4-device vs 1-device equality, and the workdir contract (metrics, TensorBoard, best/ loadable by load_scorer)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from btsbot_jax.configs import default
from btsbot_jax.data.sources import load_sources
from btsbot_jax.training import checkpoints
from btsbot_jax.training import train as T
from btsbot_jax.training.callbacks import EarlyStopping, Plateau

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
import synthetic_training  # noqa: E402

TINY = ["--config.model.conv1_channels=4", "--config.model.conv2_channels=4", "--config.model.conv_kernel=3",
        "--config.model.meta_fc1_neurons=8", "--config.model.meta_fc2_neurons=8", "--config.model.comb_fc_neurons=4",
        "--config.batch_size=32", "--config.eval_batch_size=96", "--config.learning_rate=0.003",
        "--config.progress_bar=False"]


def tiny_config(data_dir, **kw):
    c = default.get_config()
    c.model.update(conv1_channels=4, conv2_channels=4, conv_kernel=3, meta_fc1_neurons=8, meta_fc2_neurons=8,
                   comb_fc_neurons=4)
    c.update(data_dir=str(data_dir), batch_size=32, eval_batch_size=96, learning_rate=3e-3, progress_bar=False,
             data_version="", data_n_max=0)
    c.update(kw)
    return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return synthetic_training.training_dir(tmp_path_factory.mktemp("synth"))


_CACHE = Path(os.environ.get("TMPDIR", "/tmp")) / f"btsbot-test-jax-cache-{os.getuid()}"


def _env(**extra):
    # the subprocesses compile the same programs: share them through JAX's persistent compilation cache
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               JAX_COMPILATION_CACHE_DIR=str(_CACHE), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env.update(extra)
    return env


def _train_cmd(workdir, data_dir, *extra):
    return [sys.executable, "-m", "btsbot_jax.cli.train", f"--config={REPO / 'experiments/configs/demo.py'}",
            f"--workdir={workdir}", f"--config.data_dir={data_dir}", "--config.data_version=",
            "--config.data_n_max=0", *TINY, *extra]


# ----------------------------------------------------------------------------------------------------------------


def test_class_weights_exact():
    labels = np.array([0] * 300 + [1] * 100)
    w = T.class_weights(labels)
    # (1/300, 1/100) / ||.|| = (1, 3)/sqrt(10), then / max -> (1/3, 1)
    np.testing.assert_allclose(w, [1 / 3, 1.0], rtol=1e-7)
    assert w[1] == 1.0
    np.testing.assert_allclose(T.class_weights(np.array([0, 1, 1, 1, 1])), [1.0, 0.25], rtol=1e-7)
    np.testing.assert_array_equal(T.class_weights(np.array([0, 1])), [1.0, 1.0])
    with pytest.raises(ValueError, match="both classes"):
        T.class_weights(np.zeros(5))


def test_weighted_bce_by_hand():
    logits = np.array([2.0, -1.0, 0.5, -3.0], np.float32)
    labels = np.array([1, 0, 0, 1], np.int32)
    w = np.array([0.25, 1.0], np.float32)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    per = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    want = np.mean(w[labels] * per)  # Keras: sum of weighted losses / batch size
    np.testing.assert_allclose(float(T.weighted_bce(logits, labels, w)), want, rtol=1e-6)
    np.testing.assert_allclose(T.bce_numpy(logits, labels), per, rtol=1e-12)


def test_plateau_and_early_stopping_match_keras():
    tf_keras = pytest.importorskip("tf_keras")
    rng = np.random.default_rng(0)
    # a noisy, slowly improving val_loss with long flat stretches, to trigger both callbacks many times
    losses = np.concatenate([np.linspace(1.0, 0.5, 30), 0.5 + 0.01 * rng.random(60), np.linspace(0.5, 0.3, 20),
                             0.3 + 0.001 * rng.random(120)])
    model = tf_keras.Sequential([tf_keras.layers.Dense(1, input_shape=(1,))])
    model.compile(optimizer=tf_keras.optimizers.Adam(1e-4), loss="mse")
    rlrop = tf_keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.4, patience=20, min_lr=5e-10)
    es = tf_keras.callbacks.EarlyStopping(monitor="val_loss", patience=75)
    for cb in (rlrop, es):
        cb.set_model(model)
        cb.on_train_begin()
    ours_p = Plateau(lr=1e-4, factor=0.4, patience=20, min_lr=5e-10, min_delta=1e-4)
    ours_e = EarlyStopping(patience=75)
    keras_stop = ours_stop = None
    for epoch, loss in enumerate(losses):
        logs = {"val_loss": float(loss)}
        es.on_epoch_end(epoch, logs)  # Keras calls callbacks in list order: EarlyStopping, then the plateau
        rlrop.on_epoch_end(epoch, logs)
        if model.stop_training and keras_stop is None:
            keras_stop = epoch
        if ours_e.update(epoch, float(loss)) and ours_stop is None:
            ours_stop = epoch
        ours_p.update(float(loss))
        keras_lr = float(tf_keras.backend.get_value(model.optimizer.learning_rate))
        assert math.isclose(ours_p.lr, keras_lr, rel_tol=1e-6), (epoch, ours_p.lr, keras_lr)
    assert keras_stop is not None and ours_stop == keras_stop
    assert ours_p.lr < 1e-4 * 0.4 ** 3  # reduced several times


def test_plateau_by_hand():
    p = Plateau(lr=1.0, factor=0.5, patience=2, min_lr=0.2, min_delta=0.1)
    lrs = [p.update(x) for x in [1.0, 0.95, 0.93, 0.5, 0.45, 0.45, 0.4, 0.4, 0.4, 0.4]]
    # 0.95 and 0.93 are within min_delta of 1.0: two waits -> halve; 0.5 improves; then flat again
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.2, 0.2, 0.2]


@pytest.mark.slow
def test_train_step_learns_and_donates(data_dir):
    import jax

    c = tiny_config(data_dir)
    src = load_sources(c)["train"]
    tx = T.make_optimizer(c)
    mdef, state = T.create_train_state(c.model, tx, 0)
    mesh = T.make_mesh()
    state = T.replicate(state, mesh)
    rs = T.replicate(mdef.rng_state, mesh)
    step = T.make_train_step(mdef, tx, T.class_weights(src.labels), mesh)
    t, m, y = src.gather(np.arange(32))
    batch = T.shard_batch({"triplet": t, "metadata": m, "label": y}, mesh)
    evaluate = T.make_eval_step(mdef, mesh)
    before = T.bce_numpy(np.asarray(evaluate(state, batch, rs)), y).mean()
    for i in range(40):
        old = state
        state, metrics = step(state, batch, rs)
        if i == 0:
            leaf = jax.tree.leaves(old.params)[0]
            assert leaf.is_deleted()  # the state was donated
    assert int(state.step) == 40
    after = T.bce_numpy(np.asarray(evaluate(state, batch, rs)), y).mean()
    assert after < 0.5 * before, (before, after)
    # the learning rate lives in the optimizer state and is what the plateau rule sets
    state = T.set_learning_rate(state, 1e-6)
    assert float(state.opt_state.hyperparams["learning_rate"]) == pytest.approx(1e-6)


def _history(workdir):
    rows = json.loads((Path(workdir) / "metrics.json").read_text())
    return [{k: v for k, v in r.items() if k not in ("alerts_per_s", "epoch_time_s")} for r in rows]


def _latest_params(workdir):
    import orbax.checkpoint as ocp

    ck = Path(workdir) / "checkpoints"
    last = max(int(p.name) for p in ck.iterdir() if p.name.isdigit())
    tree = ocp.StandardCheckpointer().restore((ck / str(last) / "state").absolute())
    return last, tree


def _flat(tree):
    import jax

    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted_run(data_dir, tmp_path):
    extra = ["--config.num_epochs=4", "--config.early_stopping_patience=75", "--config.reduce_lr_patience=1",
             "--config.reduce_lr_min_delta=0.05", "--config.seed=11"]
    ref = subprocess.Popen(_train_cmd(tmp_path / "ref", data_dir, *extra), env=_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    victim = subprocess.Popen(_train_cmd(tmp_path / "run", data_dir, *extra), env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = tmp_path / "run" / "checkpoints"
    deadline = time.time() + 400
    while time.time() < deadline and victim.poll() is None:
        if (ck / "1").is_dir():  # epochs 0 and 1 are checkpointed; kill in the middle of the run
            break
        time.sleep(0.02)
    assert victim.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    killed_at = sorted(int(p.name) for p in ck.iterdir() if p.name.isdigit())
    assert killed_at and max(killed_at) < 3
    out = subprocess.run(_train_cmd(tmp_path / "run", data_dir, *extra), env=_env(), capture_output=True,
                         text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    ref_out, _ = ref.communicate(timeout=400)
    assert ref.returncode == 0, ref_out[-3000:]

    # identical history (losses, AUCs, learning-rate schedule), best epoch/val loss, and final weights
    assert _history(tmp_path / "run") == _history(tmp_path / "ref")
    lrs = [r["lr"] for r in _history(tmp_path / "ref")]
    assert len(set(lrs)) > 1, "the plateau rule should have acted in this run"
    s_run = json.loads((tmp_path / "run" / "summary.json").read_text())
    s_ref = json.loads((tmp_path / "ref" / "summary.json").read_text())
    for k in ("best_epoch", "best_val_loss", "best_val_auc", "test_auc", "epochs_run"):
        assert s_run[k] == s_ref[k], k
    step_run, p_run = _latest_params(tmp_path / "run")
    step_ref, p_ref = _latest_params(tmp_path / "ref")
    assert step_run == step_ref == 3
    fr, ff = _flat(p_run), _flat(p_ref)
    assert fr.keys() == ff.keys()
    for k in fr:
        np.testing.assert_array_equal(fr[k], ff[k], err_msg=k)

    # the workdir contract: metrics files, TensorBoard events, a best/ model that load_scorer reads
    from btsbot_jax.data.training_set import load_split
    from btsbot_jax.inference.scorer import load_scorer
    from btsbot_jax.models.model_dir import read_model_card

    wd = tmp_path / "ref"
    header = (wd / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header == list(T.METRIC_FIELDS)
    assert list((wd / "tensorboard").glob("events.out.tfevents.*"))
    card = read_model_card(wd / "best")
    assert card["provenance"]["epoch"] == s_ref["best_epoch"]
    scorer = load_scorer(wd)
    test = load_split(data_dir, "test")
    scores = scorer(np.asarray(test.triplets), test.metadata)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(test.labels, scores) == pytest.approx(s_ref["test_auc"], abs=1e-6)
    # a finished run restarted (from the config it saved) trains nothing more and reports the same result
    import ml_collections

    saved = ml_collections.ConfigDict(json.loads((wd / "config.json").read_text()))
    again = T.train_and_evaluate(saved, wd)
    assert again["epochs_run"] == s_ref["epochs_run"] and again["test_auc"] == s_ref["test_auc"]
    assert _history(wd) == _history(tmp_path / "run")


_MULTI = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, {tests!r})
    import test_train as tt
    from btsbot_jax.data.sources import load_sources
    from btsbot_jax.training import train as T
    assert jax.device_count() == 4, jax.devices()
    c = tt.tiny_config({data!r})
    src = load_sources(c)["train"]
    tx = T.make_optimizer(c)
    w = T.class_weights(src.labels)
    out = {{}}
    for name, devs in (("one", jax.devices()[:1]), ("four", jax.devices())):
        mesh = T.make_mesh(devs)
        mdef, state = T.create_train_state(c.model, tx, 0)
        out["init"] = [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(jax.device_get(state.params))]
        state, rs = T.replicate(state, mesh), T.replicate(mdef.rng_state, mesh)
        step = T.make_train_step(mdef, tx, w, mesh)
        losses = []
        for i in range(5):
            t, m, y = src.gather(np.arange(32 * i, 32 * (i + 1)))
            batch = T.shard_batch({{"triplet": t, "metadata": m, "label": y}}, mesh)
            if name == "four":
                assert len(batch["triplet"].sharding.device_set) == 4
                assert batch["triplet"].addressable_shards[0].data.shape[0] == 8
            state, metrics = step(state, batch, rs)
            losses.append(float(metrics["loss"]))
        out[name] = {{"losses": losses,
                      "params": [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(jax.device_get(state.params))],
                      "stats": [np.asarray(x).ravel().tolist()
                                for x in jax.tree.leaves(jax.device_get(state.batch_stats))]}}
    # the whole loop on 4 devices, one short epoch
    summary = T.train_and_evaluate(tt.tiny_config({data!r}, num_epochs=1), {workdir!r})
    out["summary_devices"] = summary["devices"]
    print("RESULT" + json.dumps(out))
""")


@pytest.mark.slow
def test_four_devices_match_one_device(data_dir, tmp_path):
    code = _MULTI.format(tests=str(Path(__file__).parent), data=str(data_dir), workdir=str(tmp_path / "wd4"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads(r.stdout.split("RESULT", 1)[1])
    assert res["summary_devices"] == 4
    np.testing.assert_allclose(res["four"]["losses"], res["one"]["losses"], rtol=1e-5, atol=1e-6)
    for a, b in zip(res["one"]["stats"], res["four"]["stats"]):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-4, atol=1e-6)
    # Parameters: each tensor moved the same way to within 1% of how far training moved it. (Adam divides by the
    # gradient's RMS, so a parameter whose true gradient is ~0 takes lr-sized steps driven by rounding noise,
    # which differs with the reduction order of 1 vs 4 devices; an absolute tolerance would flag those.)
    for p0, a, b in zip(res["init"], res["one"]["params"], res["four"]["params"]):
        p0, a, b = np.array(p0), np.array(a), np.array(b)
        assert np.linalg.norm(b - a) <= 1e-2 * np.linalg.norm(a - p0) + 1e-7
    # something was trained (not a comparison of two untouched initialisations)
    assert res["one"]["losses"][0] != res["one"]["losses"][-1]


def _load_config(name):
    from btsbot_jax import configs

    return configs.get(name)


def test_configs_follow_the_paper():
    from btsbot_jax.models import count_parameters, create_model

    prod = _load_config("prod")
    assert (prod.learning_rate, prod.beta1, prod.beta2, prod.epsilon, prod.batch_size) == (1e-4, 0.99, 0.99, 1e-7, 64)
    assert (prod.reduce_lr_factor, prod.reduce_lr_patience, prod.reduce_lr_min_lr) == (0.4, 20, 5e-10)
    assert (prod.early_stopping_patience, prod.num_epochs, prod.seed, prod.augment) == (75, 1000, 2, True)
    assert count_parameters(create_model(prod.model))[0] == 227_811
    for name, arch in (("um_cnn", "um_cnn"), ("um_nn", "um_nn"), ("demo", "mm_cnn")):
        c = _load_config(name)
        assert c.model.architecture == arch
        assert (c.beta1, c.beta2, c.class_weighting) == (prod.beta1, prod.beta2, "alerts")
    assert _load_config("demo").data_dir == "demo_out/sim"
    # metadata are not augmented in the paper's recipe; the demo hides the second PS1 source of 5% of its samples
    assert prod.no_second_ps1 == 0.0 and _load_config("demo").no_second_ps1 == 0.05
    # the experiments/configs/*.py paths of the README load the same configs
    from ml_collections import config_flags

    for name in ("prod", "demo", "um_cnn", "um_nn"):
        path = str(REPO / "experiments/configs" / f"{name}.py")
        by_path = config_flags.config_flags._LoadConfigModule(f"cfg_{name}", path)
        assert by_path.get_config().to_dict() == _load_config(name).to_dict()


@pytest.mark.slow
def test_hparam_search_space_is_the_papers():
    code = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(REPO / 'experiments')!r})
        import hparam_search as h
        import ml_collections
        trials = [h.sample_trial(0, i) for i in range(300)]
        assert h.sample_trial(0, 7) == trials[7] and h.sample_trial(1, 7) != trials[7]
        base = ml_collections.ConfigDict({{"learning_rate": 1.0, "beta1": 0.0, "beta2": 0.0, "batch_size": 1,
                                          "model": {{k.split(".")[1]: 0.0 if "dropout" in k else 0
                                                     for k in h.SEARCH_SPACE if k.startswith("model.")}}}})
        cfg = h.apply(base, trials[0])
        print("RESULT" + json.dumps({{"trials": trials, "lr": cfg.learning_rate, "k": cfg.model.conv_kernel}}))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.split("RESULT", 1)[1])
    trials = res["trials"]
    col = lambda k: np.array([t[k] for t in trials])
    assert set(col("model.conv_kernel")) == {3, 5, 7}
    assert set(col("batch_size")) == {8, 16, 32, 64}
    assert col("model.conv1_channels").min() == 8 and col("model.conv1_channels").max() == 128
    assert 5e-6 <= col("learning_rate").min() and col("learning_rate").max() <= 1e-2
    assert np.median(np.log10(col("learning_rate"))) == pytest.approx(np.log10(np.sqrt(5e-6 * 1e-2)), abs=0.3)
    assert 0.81 <= col("beta1").min() and col("beta1").max() <= 0.999
    assert 0.9 <= col("beta2").min() and col("beta2").max() <= 0.9999
    for k in ("model.conv_dropout1", "model.conv_dropout2", "model.meta_dropout", "model.comb_dropout"):
        assert 0.1 <= col(k).min() and col(k).max() <= 0.8
    assert res["lr"] == trials[0]["learning_rate"] and res["k"] == trials[0]["model.conv_kernel"]


def test_checkpoint_retention_and_restore(tmp_path):
    """Retention follows the history (latest + earliest best val_loss) and survives reopening the manager."""
    import jax.numpy as jnp

    history = [{"epoch": e, "val_loss": v} for e, v in enumerate([0.9, 0.5, 0.7, 0.5, 0.8])]
    assert checkpoints.best_epoch(history) == 1  # the earliest of the tied best
    mngr = checkpoints.checkpoint_manager(tmp_path / "ck")
    for e in range(5):
        checkpoints.save(mngr, e, {"w": jnp.full((3,), float(e))}, {"epoch": e, "history": history[: e + 1]})
        checkpoints.prune(mngr, history[: e + 1])
    assert sorted(mngr.all_steps()) == [1, 4]
    mngr.close()
    mngr = checkpoints.checkpoint_manager(tmp_path / "ck")
    state, meta = checkpoints.restore(mngr, mngr.latest_step(), {"w": jnp.zeros((3,))})
    np.testing.assert_array_equal(np.asarray(state["w"]), [4.0, 4.0, 4.0])
    assert meta["epoch"] == 4 and meta["history"] == history
    mngr.close()
