"""Import a published BTSbot v2 model (Rehemtulla et al. 2025; PyTorch, HuggingFace Hub) without PyTorch.

A Hub snapshot folder holds `train_config.json` and the weights as `pytorch_model.bin` (`torch.save(state_dict)`,
zip format) and/or `model.safetensors`. The weights are read without torch and without executing anything from
the file:

- safetensors: the `safetensors` library's numpy API (a header of names/dtypes/shapes plus raw bytes).
- pytorch_model.bin: a zip whose `data.pkl` is unpickled by `RestrictedUnpickler`, which resolves exactly the
  globals a tensor state_dict names (collections.OrderedDict, torch._utils._rebuild_tensor_v2 /
  _rebuild_parameter, torch.<dtype>Storage) to inert local functions, and refuses every other global with
  `UnsafeWeightsError` naming it (so a pickle naming os.system is refused before anything runs). Storages are
  read from the zip's `data/<key>` entries with numpy (dtype, offset, strides checked against the storage size).

The state_dict is then matched key by key against the Flax model built from train_config.json
(`btsbot_jax.models.v2`): an unknown or missing key or a shape mismatch is a `TorchImportError` naming the key.
The result is an ordinary btsbot-jax model directory (orbax weights + model card) that `load_scorer` and the CLIs
accept; the card records the architecture, the metadata column order and the provenance (sha256 of the files).
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

BIN_NAME = "pytorch_model.bin"
IGNORED = ("num_batches_tracked",)  # BatchNorm bookkeeping: accepted in a state_dict, carries no weight
TorchMapT = dict[str, tuple[tuple, str]]
SAFETENSORS_NAME = "model.safetensors"
CONFIG_NAME = "train_config.json"

# torch storage class name -> numpy dtype (little-endian; the byteorder record is checked)
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class TorchImportError(ValueError):
    """A snapshot that cannot be imported: missing files, a config we do not build, keys or shapes that differ."""


class UnsafeWeightsError(TorchImportError):
    """A weights pickle that names something other than what a tensor state_dict needs."""


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name]).newbyteorder("<")


class _Storage:
    def __init__(self, array: np.ndarray):
        self.array = array


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    """torch._utils._rebuild_tensor_v2 as numpy: a strided view of the storage, bounds-checked, then copied."""
    del requires_grad, backward_hooks, metadata
    if not isinstance(storage, _Storage):
        raise UnsafeWeightsError("a tensor in the weights pickle does not refer to a storage record")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    offset = int(storage_offset)
    arr = storage.array
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise TorchImportError(f"malformed tensor record: size {size}, stride {stride}, offset {offset}")
    if 0 not in size:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= arr.size:
            raise TorchImportError(f"tensor of size {size} (stride {stride}, offset {offset}) reads past its "
                                   f"storage of {arr.size} elements")
    it = arr.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(arr[offset:] if 0 not in size else arr[:0], shape=size,
                                           strides=tuple(s * it for s in stride), writeable=False)
    return np.array(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    del requires_grad, backward_hooks
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a torch zip-format `data.pkl` state_dict and nothing else (see the module docstring)."""

    def __init__(self, file, read_record, *, source: str = "weights"):
        super().__init__(file)
        self._read_record = read_record
        self._source = source
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafeWeightsError(
            f"{self._source}: the pickle names {module}.{name}, which a tensor state_dict does not need; refused "
            "(nothing from the file was executed)"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise UnsafeWeightsError(f"{self._source}: unexpected persistent record {str(pid)[:80]!r}; refused")
        _, stype, key, _location, numel = pid
        key = str(key)
        if not re.fullmatch(r"[0-9A-Za-z_.-]+", key):
            raise UnsafeWeightsError(f"{self._source}: storage key {key!r} is not a plain name; refused")
        if key not in self._storages:
            raw = self._read_record(key)
            if len(raw) < int(numel) * stype.dtype.itemsize:
                raise TorchImportError(f"{self._source}: storage {key} holds {len(raw)} bytes, fewer than "
                                       f"{numel} x {stype.dtype}")
            arr = np.frombuffer(raw, dtype=stype.dtype, count=int(numel))
            self._storages[key] = _Storage(arr)
        return self._storages[key]


def read_torch_bin(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A zip-format `torch.save(state_dict)` file as {key: numpy array}, without torch (see the module doc)."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise TorchImportError(f"{path}: not a zip-format torch.save file (legacy torch pickles are not read; "
                               "use model.safetensors or re-save with torch >= 1.6)")
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise TorchImportError(f"{path}: expected one data.pkl in the archive, found {len(pkl)}")
        root = pkl[0][: -len("data.pkl")]
        if root + "byteorder" in names and z.read(root + "byteorder").strip() not in (b"little", b""):
            raise TorchImportError(f"{path}: big-endian torch file; not supported")
        nameset = set(names)

        def read_record(key: str) -> bytes:
            entry = f"{root}data/{key}"
            if entry not in nameset:
                raise TorchImportError(f"{path}: storage record {entry} is missing from the archive")
            return z.read(entry)

        try:
            obj = RestrictedUnpickler(io.BytesIO(z.read(pkl[0])), read_record, source=str(path)).load()
        except (TorchImportError, UnsafeWeightsError):
            raise
        except Exception as e:  # a truncated or malformed pickle
            raise TorchImportError(f"{path}: cannot read the weights pickle: {type(e).__name__}: {e}") from e
    if not isinstance(obj, dict):
        raise TorchImportError(f"{path}: holds a {type(obj).__name__}, not a state_dict")
    out = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, np.ndarray):
            raise TorchImportError(f"{path}: entry {k!r} is not a named tensor")
        out[k] = v
    return out


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return dict(load_file(str(path)))
    except Exception as e:
        raise TorchImportError(f"{path}: cannot read safetensors file: {e}") from e


def read_state_dict(model_dir: str | os.PathLike) -> tuple[dict[str, np.ndarray], Path]:
    """The snapshot's weights (model.safetensors preferred, else pytorch_model.bin) and the file they came from."""
    d = Path(model_dir)
    st, pt = d / SAFETENSORS_NAME, d / BIN_NAME
    if st.is_file():
        return read_safetensors(st), st
    if pt.is_file():
        return read_torch_bin(pt), pt
    raise TorchImportError(f"{d}: neither {SAFETENSORS_NAME} nor {BIN_NAME} is here")


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fmt_keys(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")


def load_state_into(model, state_dict: dict[str, np.ndarray], source: str = "weights") -> None:
    """Copy an upstream state_dict into a v2 Flax model, key by key (errors name the key)."""
    tmap = model.torch_map()
    given = {k for k in state_dict if not k.endswith(IGNORED)}
    unknown, missing = given - tmap.keys(), tmap.keys() - given
    if unknown:
        raise TorchImportError(f"{source}: unknown key(s) for a {model.model_name} model: {_fmt_keys(unknown)}")
    if missing:
        raise TorchImportError(f"{source}: missing key(s) for a {model.model_name} model: {_fmt_keys(missing)}")
    _assign(model, state_dict, tmap, source)


def _assign(model, state_dict, tmap, source: str) -> None:
    from flax import nnx

    from btsbot_jax.models.v2_layers import KINDS

    state = nnx.state(model, (nnx.Param, nnx.BatchStat))
    pure = nnx.to_pure_dict(state)
    for key, (path, kind) in tmap.items():
        value = np.asarray(state_dict[key])
        if not np.issubdtype(value.dtype, np.floating):
            raise TorchImportError(f"{source}: {key} has dtype {value.dtype}, expected floating point")
        node = pure
        for p in path[:-1]:
            node = node[p]
        target = np.shape(node[path[-1]])
        try:
            converted = KINDS[kind](value)
        except ValueError as e:
            raise TorchImportError(f"{source}: {key} has shape {value.shape}, which does not fit the "
                                   f"{model.model_name} layer (expects {target} in our layout)") from e
        if converted.shape != target:
            raise TorchImportError(f"{source}: {key} has shape {value.shape}, the {model.model_name} model built "
                                   f"from train_config.json expects {target} (in our layout)")
        if not np.all(np.isfinite(converted)):
            raise TorchImportError(f"{source}: {key} contains NaN or inf")
        node[path[-1]] = np.ascontiguousarray(converted, np.float32)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)


def backbone_torch_map(model) -> tuple[TorchMapT, str]:
    """The torch map of a v2 model's timm backbone as timm names it (no prefix; ConvNeXt's `head.norm`, which the
    upstream heads reuse, included), and a description of where it lands."""
    from btsbot_jax.models import v2
    from btsbot_jax.models.v2_layers import module_map

    owner, path = model, ()
    if isinstance(model, v2.frozen_fusion):
        owner, path = model.image_branch, ("image_branch",)
    if isinstance(owner, v2.ConvNeXt):
        m = owner.convnext.torch_map((*path, "convnext"))
        m.update(module_map(owner.head_norm, (*path, "head_norm"), "head.norm"))
        return m, "/".join((*path, "convnext"))
    if isinstance(owner, v2.MaxViT):
        return owner.maxvit.torch_map((*path, "maxvit")), "/".join((*path, "maxvit"))
    if isinstance(model, v2.mm_ConvNeXt):
        m = model.convnext_backbone.torch_map(("convnext_backbone",))
        if model.head_norm is not None:
            m.update(module_map(model.head_norm, ("head_norm",), "head.norm"))
        return m, "convnext_backbone"
    if isinstance(model, v2.mm_MaxViT):
        return model.maxvit_backbone.torch_map(("maxvit_backbone",)), "maxvit_backbone"
    raise TorchImportError(f"a {type(model).__name__} model has no image backbone")


def load_backbone_into(model, state_dict: dict[str, np.ndarray], source: str = "backbone weights") -> list[str]:
    """Copy a timm checkpoint of the backbone (e.g. `timm/convnext_pico.d1_in1k` or the Galaxy Zoo encoder
    `mwalmsley/zoobot-encoder-convnext_pico`) into a v2 model, as upstream's `timm.create_model(pretrained=True)`
    does; the classifier (`head.fc.*`) is dropped. Every backbone weight must be present and fit; returns the
    checkpoint keys that were not used."""
    tmap, where = backbone_torch_map(model)
    sd = {k: v for k, v in state_dict.items() if not k.endswith(IGNORED)}
    missing = tmap.keys() - sd.keys()
    if missing:
        raise TorchImportError(f"{source}: missing key(s) for the {where} backbone: {_fmt_keys(missing)}")
    unused = sorted(sd.keys() - tmap.keys())
    stray = [k for k in unused if not k.startswith("head.")]
    if stray:
        raise TorchImportError(f"{source}: key(s) that are not part of the {where} backbone: {_fmt_keys(stray)}")
    _assign(model, {k: sd[k] for k in tmap}, tmap, source)
    return unused


def _default_version(model_dir: Path) -> str:
    m = re.search(r"models--([^/]+)--([^/]+)", str(model_dir.resolve()))
    return f"{m.group(1)}/{m.group(2)}" if m else model_dir.resolve().name


def import_torch(model_dir: str | os.PathLike, out_dir: str | os.PathLike, version: str | None = None) -> Path:
    """Import a BTSbot v2 Hub snapshot (train_config.json + weights) into a btsbot-jax model directory."""
    from btsbot_jax.models.model_dir import make_model_card, save_model
    from btsbot_jax.models.v2 import build_v2_model, v2_model_config

    src = Path(model_dir)
    cfg_path = src / CONFIG_NAME
    if not cfg_path.is_file():
        raise TorchImportError(f"{src}: no {CONFIG_NAME}; expected a BTSbot v2 snapshot folder")
    try:
        train_config: dict[str, Any] = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise TorchImportError(f"{cfg_path}: not valid JSON ({e})") from e
    try:
        cfg = v2_model_config(train_config)
        model = build_v2_model(cfg)
    except (ValueError, KeyError) as e:
        raise TorchImportError(f"{cfg_path}: cannot build the model: {e}") from e
    state_dict, weights_file = read_state_dict(src)
    load_state_into(model, state_dict, source=str(weights_file))
    card = make_model_card(
        cfg,
        version=version or _default_version(src),
        provenance={
            "source": "pytorch-state-dict",
            "snapshot_dir": str(src.resolve()),
            "weights_file": weights_file.name,
            "weights_sha256": _sha256(weights_file),
            "train_config_sha256": _sha256(cfg_path),
            "upstream_model_name": train_config.get("model_name"),
            "reference": "Rehemtulla et al. 2025, arXiv:2512.11957; github.com/nabeelre/BTSbot",
        },
        output="score = sigmoid(logit); the model's logits() gives upstream's logit",
    )
    return save_model(model, out_dir, card)


__all__ = ["RestrictedUnpickler", "TorchImportError", "UnsafeWeightsError", "import_torch", "load_backbone_into",
           "load_state_into",
           "read_safetensors", "read_state_dict", "read_torch_bin"]
