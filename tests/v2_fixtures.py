"""Helpers for the BTSbot v2 tests: the parity fixtures (../shared/data/btsbot_v2_fixture) and a torch.save
zip writer that needs no torch (to craft weights files: strided tensors, hostile pickles, records out of bounds)."""

from __future__ import annotations

import io
import json
import pickle
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
from conftest import DATA, require

V2_FIXTURES = DATA / "btsbot_v2_fixture"
FIXTURE_NAMES = ("mm_convnext_atto", "convnext_pico_metadata", "maxvit_nano_image")
LOGIT_TOL, SCORE_TOL, FEATURE_TOL = 2e-4, 5e-5, 1e-4  # issue 13 / the fixtures' SOURCE.md


def fixture_dir(name: str) -> Path:
    return require(V2_FIXTURES / name)


def train_config(name: str) -> dict:
    return json.loads((fixture_dir(name) / "train_config.json").read_text())


def fixture_inputs(usage_examples, name: str):
    """(triplets float32 NHWC, metadata float32 in the config's metadata_cols order)."""
    table, triplets, _ = usage_examples
    tc = train_config(name)
    cols = tc.get("metadata_cols") or tc.get("meta_model_config", {}).get("metadata_cols")
    if cols is None:  # image-only model: metadata is accepted and ignored
        return triplets, np.zeros((len(triplets), 25), np.float32)
    return triplets, table[cols].to_numpy(np.float32)


def sigmoid64(x) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


class _FakeTorch:
    """Just enough of a `torch` module tree for pickle to write references to torch globals by name."""

    def __init__(self):
        self.torch = types.ModuleType("torch")
        self.utils = types.ModuleType("torch._utils")

        def _rebuild_tensor_v2(*args):  # never called: only pickled by reference
            raise AssertionError

        _rebuild_tensor_v2.__module__ = "torch._utils"
        _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
        self.utils._rebuild_tensor_v2 = _rebuild_tensor_v2
        self.torch._utils = self.utils
        for name in ("FloatStorage", "LongStorage", "DoubleStorage"):
            cls = type(name, (), {"__module__": "torch"})
            setattr(self.torch, name, cls)


class _Tensor:
    def __init__(self, fake, key, storage_cls, numel, offset, size, stride):
        self.fake, self.key, self.storage_cls, self.numel = fake, key, storage_cls, numel
        self.args = (offset, tuple(size), tuple(stride), False, {})

    def __reduce__(self):
        return (self.fake.utils._rebuild_tensor_v2, (_StorageRef(self), *self.args))


class _StorageRef:
    def __init__(self, t):
        self.t = t


def write_torch_zip(path: Path, tensors: dict, monkeypatch, extra_pickle: bytes | None = None) -> Path:
    """Write a zip-format torch.save file. `tensors`: key -> ndarray (contiguous) or
    (storage ndarray, offset, size, stride) for a strided view. `extra_pickle` replaces data.pkl entirely."""
    fake = _FakeTorch()
    monkeypatch.setitem(sys.modules, "torch", fake.torch)
    monkeypatch.setitem(sys.modules, "torch._utils", fake.utils)
    storages, state = {}, {}
    dtypes = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage",
              np.dtype(np.float64): "DoubleStorage"}
    for i, (key, spec) in enumerate(tensors.items()):
        if isinstance(spec, tuple):
            storage, offset, size, stride = spec
        else:
            storage = np.ascontiguousarray(spec)
            size = storage.shape
            stride = tuple(s // storage.itemsize for s in storage.strides)
            offset = 0
        storages[str(i)] = np.ascontiguousarray(storage).ravel()
        cls = getattr(fake.torch, dtypes[storages[str(i)].dtype])
        state[key] = _Tensor(fake, str(i), cls, storages[str(i)].size, offset, size, stride)

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _StorageRef):
                return ("storage", obj.t.storage_cls, obj.t.key, "cpu", obj.t.numel)
            return None

    buf = io.BytesIO()
    P(buf, protocol=2).dump(__import__("collections").OrderedDict(state))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", extra_pickle if extra_pickle is not None else buf.getvalue())
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        for key, arr in storages.items():
            z.writestr(f"archive/data/{key}", arr.astype(arr.dtype.newbyteorder("<")).tobytes())
    return path
