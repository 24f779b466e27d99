"""Installs: constraints.txt pins every dependency, the [cuda] and [tpu] extras resolve against those pins and only
add accelerator plugins (the CPU packages stay as they are), and the code picks the accelerator without flags.

The resolver checks are `pip install --dry-run --report` runs: they read the package index (slow; skipped with the
reason when the index cannot be reached) but install nothing."""

import json
import re
import subprocess
import sys

import pytest
from conftest import REPO

CONSTRAINTS = REPO / "constraints.txt"
ACCELERATOR = re.compile(r"^(nvidia-|jax-cuda|libtpu|onnxruntime-gpu|jax-rocm)")
# installer tooling, left to the venv's pip (pip freeze leaves it out; pinning an old setuptools would fight the
# build backend's own requirement)
TOOLING = {"pip", "setuptools", "wheel"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[_norm(name)] = version
    return pins


def _dry_run(tmp_path, target: str, *extra: str) -> dict[str, str]:
    """{package: version} pip would install for `target` (with constraints.txt), or skip without an index."""
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "-q", "--disable-pip-version-check",
           "-c", str(CONSTRAINTS), "--report", str(report), *extra, "-e", f"{REPO}{target}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if r.returncode != 0 and re.search(r"NewConnectionError|Temporary failure in name resolution|Network is "
                                       r"unreachable|ProxyError|Max retries exceeded", r.stderr):
        pytest.skip(f"package index not reachable: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr[-3000:]
    return {_norm(i["metadata"]["name"]): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}


def test_constraints_are_exact_pins_without_the_project():
    pins = _pins()
    assert "btsbot-jax" not in pins and len(pins) > 50
    for name in ("jax", "jaxlib", "flax", "numpy", "onnxruntime", "safetensors", "orbax-checkpoint"):
        assert name in pins, name
    assert not any(ACCELERATOR.match(n) for n in pins)  # the CPU install is what is pinned


@pytest.mark.slow
def test_constraints_pin_every_dependency_of_a_fresh_install(tmp_path):
    """What `make install` would install in an empty venv: every package is pinned, at its pinned version (a new
    dependency added to pyproject.toml without `make constraints` fails here)."""
    got = _dry_run(tmp_path, "[test]", "--ignore-installed")
    pins = _pins()
    got.pop("btsbot-jax")
    unpinned = sorted(set(got) - set(pins) - TOOLING)
    assert not unpinned, f"not in constraints.txt (run `make constraints`): {unpinned}"
    assert {n: v for n, v in got.items() if n not in TOOLING and pins[n] != v} == {}
    assert not any(ACCELERATOR.match(n) for n in got)


@pytest.mark.slow
def test_cuda_extra_resolves_and_leaves_the_cpu_packages(tmp_path):
    import jax

    got = _dry_run(tmp_path, "[cuda]")
    assert got.get("jax-cuda12-plugin") == jax.__version__ and got.get("jax-cuda12-pjrt") == jax.__version__
    assert any(n.startswith("nvidia-cudnn") for n in got)
    # the extra adds plugins only: jax, jaxlib and the (CPU) onnxruntime keep their versions
    assert not {"jax", "jaxlib", "onnxruntime", "flax", "numpy"} & set(got)


@pytest.mark.slow
def test_tpu_extra_resolves(tmp_path):
    got = _dry_run(tmp_path, "[tpu]")
    assert "libtpu" in got and not {"jax", "jaxlib"} & set(got)


def test_the_accelerator_is_picked_without_flags():
    """JAX's default backend decides where the Flax scorer runs; this machine's CPU path is the plain one."""
    import jax
    import numpy as np

    from btsbot_jax.inference.scorer import load_scorer

    s = load_scorer("v1.0.1", buckets=(1,))
    assert s.device == jax.devices()[0] and s.device.platform == jax.default_backend()
    out = s(np.zeros((1, 63, 63, 3), np.float32), np.zeros((1, 25), np.float32))
    assert out.shape == (1,) and 0.0 <= out[0] <= 1.0
