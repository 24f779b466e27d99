"""Start a training run from existing weights instead of a fresh initialisation (BTSbot v2 fine-tunes pre-trained
backbones and trains `frozen_fusion` heads on trained branches; Rehemtulla et al. 2025).

Three sources, all set in the training config and all checked key by key (a missing, unknown or mis-shaped weight is
an `InitFromError` naming it):

- `init_from=DIR`: a btsbot-jax model directory (`btsbot-import-torch` output, a training workdir's `best/`, or the
  workdir itself) of the same architecture: every weight and BatchNorm statistic is copied.
- `init_from_image=DIR` / `init_from_metadata=DIR` (`v2_frozen_fusion` only): a trained image model (`v2_ConvNeXt` /
  `v2_MaxViT`) and a trained `v2_um_nn`; their weights up to the cut (what frozen_fusion keeps) become the two
  branches, their heads are left out, as upstream's `frozen_fusion.load_BTSbot_model` does.
- `init_from_timm=PATH`: a timm checkpoint of the backbone alone (`model.safetensors` or `pytorch_model.bin`, or a
  Hub snapshot folder holding one), e.g. the Galaxy Zoo encoder `mwalmsley/zoobot-encoder-convnext_pico` or
  `timm/convnext_pico.d1_in1k`: upstream builds its backbones with `timm.create_model(model_kind, pretrained=True)`,
  so the timm keys are the model's own keys below the backbone (`convnext.`, `convnext_backbone.`, `maxvit.`, ...).
  timm's classifier (`head.fc`) is left out; ConvNeXt's `head.norm` is the norm BTSbot keeps in its head. The rest
  of the model keeps its fresh initialisation. Read without torch (`inference.import_torch`'s restricted readers).

Applied once, to the fresh model, before the optimizer state is created; a resumed run restores its checkpoint and
does not read these sources again.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

log = logging.getLogger("btsbot_jax.training.init_from")

# where a timm backbone sits in each v2 model's upstream state_dict
BACKBONE_PREFIXES = ("convnext.", "convnext_backbone.", "maxvit.", "maxvit_backbone.", "image_branch.convnext.",
                     "image_branch.maxvit.")


class InitFromError(ValueError):
    """Initial weights that do not fit the model being trained."""


def _weights_pure(model) -> tuple[nnx.State, dict]:
    state = nnx.state(model, (nnx.Param, nnx.BatchStat))
    return state, nnx.to_pure_dict(state)


def _flatten(tree: dict, prefix: tuple = ()) -> dict[tuple, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = v
    return out


def _set(tree: dict, path: tuple, value) -> None:
    for p in path[:-1]:
        tree = tree[p]
    tree[path[-1]] = value


def _name(path: tuple) -> str:
    return "/".join(str(p) for p in path)


def copy_weights(target, source, *, subtree: tuple = (), what: str, allow_extra: bool = False) -> int:
    """Copy the weights of `source` (a model) into `target`'s weights under `subtree` (() = the whole model).

    Every target weight there must exist in `source` with the same shape; source weights the target does not have
    are an error unless `allow_extra` (a branch taken from a model whose head is cut). Returns the number copied."""
    state, pure = _weights_pure(target)
    _, src = _weights_pure(source)
    src_flat = _flatten(src)
    node = pure
    for p in subtree:
        node = node[p]
    tgt_flat = _flatten(node)
    missing = sorted(set(tgt_flat) - set(src_flat), key=_name)
    if missing:
        raise InitFromError(f"{what}: weight(s) missing for the model being trained: "
                            + ", ".join(_name(k) for k in missing[:8]) + (" ..." if len(missing) > 8 else ""))
    extra = sorted(set(src_flat) - set(tgt_flat), key=_name)
    if extra and not allow_extra:
        raise InitFromError(f"{what}: weight(s) the model being trained does not have: "
                            + ", ".join(_name(k) for k in extra[:8]) + (" ..." if len(extra) > 8 else ""))
    for k, v in tgt_flat.items():
        if np.shape(src_flat[k]) != np.shape(v):
            raise InitFromError(f"{what}: weight {_name(k)} has shape {np.shape(src_flat[k])}, the model being "
                                f"trained expects {np.shape(v)}")
        _set(node, k, np.asarray(src_flat[k], np.asarray(v).dtype))
    if extra:
        log.info("%s: left out %d weight(s) of the source (%s ...)", what, len(extra), _name(extra[0]))
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(target, state)
    return len(tgt_flat)


def _load(path: str, what: str):
    from btsbot_jax.models.model_dir import CheckpointError, load_model

    try:
        return load_model(path)
    except CheckpointError as e:
        raise InitFromError(f"{what}: {e}") from e


def init_whole(model, model_config, path: str) -> int:
    what = f"init_from={path}"
    source, card = _load(path, what)
    if card["architecture"] != model_config["architecture"]:
        raise InitFromError(f"{what}: holds a {card['architecture']!r} model, the config trains "
                            f"{model_config['architecture']!r}")
    return copy_weights(model, source, what=what)


def init_branch(model, model_config, path: str, role: str) -> int:
    """One frozen_fusion branch ('image' or 'metadata') from a trained model directory with its head."""
    what = f"init_from_{role}={path}"
    if model_config["architecture"] != "v2_frozen_fusion":
        raise InitFromError(f"{what}: branches are set only for v2_frozen_fusion, the config trains "
                            f"{model_config['architecture']!r}")
    key, attr = ("image_model_config", "image_branch") if role == "image" else ("meta_model_config", "meta_branch")
    want = "v2_" + model_config[key]["model_name"]
    source, card = _load(path, what)
    if card["architecture"] != want:
        raise InitFromError(f"{what}: holds a {card['architecture']!r} model; the config's {key} is a {want!r}")
    return copy_weights(model, source, subtree=(attr,), what=what, allow_extra=True)


def _read_timm(path: str) -> tuple[dict[str, np.ndarray], Path]:
    from btsbot_jax.inference.import_torch import BIN_NAME, SAFETENSORS_NAME, read_safetensors, read_torch_bin

    p = Path(path)
    if p.is_dir():
        for name in (SAFETENSORS_NAME, BIN_NAME):
            if (p / name).is_file():
                p = p / name
                break
        else:
            raise InitFromError(f"init_from_timm={path}: neither {SAFETENSORS_NAME} nor {BIN_NAME} is here")
    if not p.is_file():
        raise InitFromError(f"init_from_timm={path}: no such file")
    sd = read_safetensors(p) if p.suffix == ".safetensors" else read_torch_bin(p)
    return sd, p


def init_backbone_from_timm(model, path: str) -> int:
    """The model's timm backbone from a timm checkpoint (see the module docstring); returns the weights copied."""
    from btsbot_jax.inference.import_torch import IGNORED as IGNORED_SUFFIXES
    from btsbot_jax.models.v2_layers import KINDS

    what = f"init_from_timm={path}"
    if not hasattr(model, "torch_map"):
        raise InitFromError(f"{what}: only the v2 models have a timm backbone")
    sd, file = _read_timm(path)
    tmap = model.torch_map()
    prefix = next((p for p in BACKBONE_PREFIXES if any(k.startswith(p) for k in tmap)), None)
    if prefix is None:
        raise InitFromError(f"{what}: the {model.model_name} model has no timm backbone")
    wanted = {k for k in tmap if k.startswith(prefix) and not k.startswith(prefix + "head.")}
    mapping, unknown = {}, []
    for k in sd:
        if k.endswith(IGNORED_SUFFIXES):
            continue
        if k.startswith("head."):  # timm's head: its norm is BTSbot ConvNeXt's head.1, the classifier is replaced
            norm = prefix + "head.1." + k[len("head.norm."):] if k.startswith("head.norm.") else None
            if norm in tmap:
                mapping[norm] = k
            continue
        if prefix + k in wanted:
            mapping[prefix + k] = k
        else:
            unknown.append(k)
    if unknown:
        raise InitFromError(f"{file}: key(s) that are not in the {model.model_name} backbone: "
                            + ", ".join(sorted(unknown)[:8]))
    missing = sorted(wanted - set(mapping))
    if missing:
        raise InitFromError(f"{file}: backbone key(s) missing: " + ", ".join(k[len(prefix):] for k in missing[:8]))
    state, pure = _weights_pure(model)
    for ours, theirs in mapping.items():
        path, kind = tmap[ours]
        node = pure
        for p in path[:-1]:
            node = node[p]
        value = np.asarray(sd[theirs])
        if not np.issubdtype(value.dtype, np.floating):
            raise InitFromError(f"{file}: {theirs} has dtype {value.dtype}, expected floating point")
        try:
            converted = KINDS[kind](value)
        except ValueError as e:
            raise InitFromError(f"{file}: {theirs} has shape {value.shape}, which does not fit the model") from e
        if converted.shape != np.shape(node[path[-1]]):
            raise InitFromError(f"{file}: {theirs} has shape {value.shape}, the model built from the config expects "
                                f"{np.shape(node[path[-1]])} (in our layout)")
        node[path[-1]] = np.ascontiguousarray(converted, np.float32)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)
    return len(mapping)


def apply(model, config) -> dict[str, Any]:
    """Apply the config's init_from* fields to a fresh model (in place); returns what was done, for the logs and
    the model card's provenance."""
    done: dict[str, Any] = {}
    whole = config.get("init_from", "")
    image, meta = config.get("init_from_image", ""), config.get("init_from_metadata", "")
    timm_path = config.get("init_from_timm", "")
    if whole and (image or meta or timm_path):
        raise InitFromError("init_from sets the whole model; do not combine it with init_from_image/metadata/timm")
    if timm_path and image:
        raise InitFromError("init_from_timm and init_from_image both set the image backbone; give one")
    if whole:
        done["init_from"] = (os.fspath(whole), init_whole(model, config.model, whole))
    if timm_path:
        done["init_from_timm"] = (os.fspath(timm_path), init_backbone_from_timm(model, timm_path))
    if image:
        done["init_from_image"] = (os.fspath(image), init_branch(model, config.model, image, "image"))
    if meta:
        done["init_from_metadata"] = (os.fspath(meta), init_branch(model, config.model, meta, "metadata"))
    for k, (p, n) in done.items():
        log.info("%s: %d weights from %s", k, n, p)
    return {k: p for k, (p, _) in done.items()}
