"""Building blocks shared by the BTSbot v2 models (Rehemtulla et al. 2025): timm-equivalent layers in NHWC.

Every layer here reproduces the PyTorch/timm definition it stands for, including the details that decide parity
with the published weights: exact (erf) GELU, symmetric timm padding ((stride - 1) + (k - 1)) // 2 on every side
(also for stride 2, unlike XLA's 'SAME'), LayerNorm over channels with a two-pass variance, BatchNorm in
inference with its running statistics.

Each module also says where its weights sit in the upstream PyTorch `state_dict` (`torch_map`): a dict from the
torch key (relative to the module) to (path in our nnx state, layout kind). `KINDS` converts a torch tensor into
our layout; the importer (btsbot_jax.inference.import_torch) only walks these maps.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

TorchMap = dict[str, tuple[tuple, str]]

# torch layout -> ours. conv: OIHW -> HWIO (also depthwise (C,1,k,k) -> (k,k,1,C)); dense: a Linear (out,in) or a
# 1x1 conv (out,in,1,1) -> (in,out); same: copied as is (vectors, relative-position tables).
KINDS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "conv": lambda w: np.transpose(w, (2, 3, 1, 0)),
    "dense": lambda w: np.transpose(w.reshape(w.shape[0], w.shape[1]), (1, 0)),
    "same": lambda w: w,
}

# Layers are created abstractly (nnx.eval_shape) and their values filled by models.v2.build_v2_model (timm's
# initialisation, drawn with numpy), so the initialiser here is only a cheap placeholder to trace.
_PLACEHOLDER = nnx.initializers.zeros_init()

LN_EPS = 1e-6  # timm LayerNorm / LayerNorm2d in ConvNeXt and MaxViT
BN_EPS = 1e-5  # torch BatchNorm default (timm MBConv, stem, BTSbot metadata BatchNorm1d)
BN_MOMENTUM = 0.9  # torch momentum 0.1 in Flax's convention


def gelu(x: jax.Array) -> jax.Array:
    """torch.nn.GELU() / timm 'gelu': the exact erf form, not the tanh approximation."""
    return jax.nn.gelu(x, approximate=False)


def timm_padding(kernel: int, stride: int = 1, dilation: int = 1) -> int:
    """timm.layers.padding.get_padding: symmetric padding applied on every side."""
    return ((stride - 1) + dilation * (kernel - 1)) // 2


def depthwise_conv(x: jax.Array, kernel: jax.Array, pad: int, stride: int = 1) -> jax.Array:
    """Depthwise convolution (kernel (k, k, 1, C), symmetric zero padding `pad`, square stride) as a sum of shifted
    (strided) products: one elementwise loop that XLA fuses, where its grouped-convolution path on CPU is many times
    slower than the FLOPs warrant. Taps that only ever see padding (offsets beyond the map, e.g. a 7x7 kernel on
    ConvNeXt's 3x3 and 1x1 stages) are skipped; they add exact zeros."""
    n, h, w, c = x.shape
    k, s = kernel.shape[0], stride
    out_h, out_w = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    acc = None
    for i in range(k):
        if i + s * (out_h - 1) < pad or i >= pad + h:  # rows i, i+s, ... of xp are all padding
            continue
        for j in range(k):
            if j + s * (out_w - 1) < pad or j >= pad + w:
                continue
            term = xp[:, i:i + s * (out_h - 1) + 1:s, j:j + s * (out_w - 1) + 1:s, :] * kernel[i, j, 0]
            acc = term if acc is None else acc + term
    return acc if acc is not None else jnp.zeros((n, out_h, out_w, c), x.dtype)


def patch_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """A convolution whose stride equals its kernel, without padding (ConvNeXt's stem and downsampling) as what it
    is: non-overlapping patches times a matrix. Rows/columns past the last whole patch are dropped, as the
    convolution drops them."""
    kh, kw, cin, cout = kernel.shape
    n, h, w, _ = x.shape
    oh, ow = h // kh, w // kw
    x = x[:, :oh * kh, :ow * kw, :].reshape(n, oh, kh, ow, kw, cin).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, oh, ow, kh * kw * cin) @ kernel.reshape(kh * kw * cin, cout)


class Conv2d(nnx.Conv):
    """nnx.Conv (same parameters, same results) that computes the shapes XLA:CPU handles poorly as a grouped or
    strided convolution (depthwise, patchify) with the equivalent elementwise sum or matmul."""

    def __call__(self, x: jax.Array) -> jax.Array:
        k, s = self.kernel_size, self.strides
        pads = self.padding
        square = k[0] == k[1] and s[0] == s[1] and isinstance(pads, tuple) and len({p for pp in pads for p in pp}) == 1
        y = None
        if square and self.feature_group_count == self.in_features == self.out_features:
            y = depthwise_conv(x, self.kernel[...], pads[0][0], s[0])
        elif square and self.feature_group_count == 1 and s[0] == k[0] and pads[0][0] == 0:
            y = patch_conv(x, self.kernel[...])
        if y is None:
            return super().__call__(x)
        return y + self.bias[...] if self.bias is not None else y


def conv(n_in: int, n_out: int, kernel: int, *, rngs: nnx.Rngs, stride: int = 1, padding: int | None = None,
         groups: int = 1, bias: bool = True) -> nnx.Conv:
    """nn.Conv2d with explicit symmetric padding (timm's default when `padding` is None)."""
    p = timm_padding(kernel, stride) if padding is None else padding
    return Conv2d(n_in, n_out, (kernel, kernel), strides=(stride, stride), padding=((p, p), (p, p)),
                  feature_group_count=groups, use_bias=bias, kernel_init=_PLACEHOLDER, rngs=rngs)


def layer_norm(n: int, *, rngs: nnx.Rngs, eps: float = LN_EPS) -> nnx.LayerNorm:
    """LayerNorm over the last (channel) axis: timm LayerNorm2d on NCHW == LayerNorm on NHWC."""
    return nnx.LayerNorm(n, epsilon=eps, use_fast_variance=False, rngs=rngs)


def batch_norm(n: int, *, rngs: nnx.Rngs, eps: float = BN_EPS) -> nnx.BatchNorm:
    return nnx.BatchNorm(n, epsilon=eps, momentum=BN_MOMENTUM, use_fast_variance=False, rngs=rngs)


def linear(n_in: int, n_out: int, *, rngs: nnx.Rngs, bias: bool = True) -> nnx.Linear:
    return nnx.Linear(n_in, n_out, use_bias=bias, kernel_init=_PLACEHOLDER, rngs=rngs)


# ------------------------------------------------------------------------------------------- torch key maps


def map_conv(path: tuple, has_bias: bool) -> TorchMap:
    m = {"weight": ((*path, "kernel"), "conv")}
    if has_bias:
        m["bias"] = ((*path, "bias"), "same")
    return m


def map_dense(path: tuple, has_bias: bool = True) -> TorchMap:
    m = {"weight": ((*path, "kernel"), "dense")}
    if has_bias:
        m["bias"] = ((*path, "bias"), "same")
    return m


def map_norm(path: tuple) -> TorchMap:
    return {"weight": ((*path, "scale"), "same"), "bias": ((*path, "bias"), "same")}


def map_batch_norm(path: tuple) -> TorchMap:
    return {**map_norm(path), "running_mean": ((*path, "mean"), "same"), "running_var": ((*path, "var"), "same")}


def prefixed(prefix: str, m: TorchMap) -> TorchMap:
    return {f"{prefix}.{k}": v for k, v in m.items()}


def module_map(module: nnx.Module, path: tuple, torch_prefix: str) -> TorchMap:
    """The torch map of a standard layer at `path` (Conv, Linear, LayerNorm, BatchNorm)."""
    if isinstance(module, nnx.Conv):
        m = map_conv(path, module.bias is not None)
    elif isinstance(module, nnx.Linear):
        m = map_dense(path, module.bias is not None)
    elif isinstance(module, nnx.BatchNorm):
        m = map_batch_norm(path)
    elif isinstance(module, nnx.LayerNorm):
        m = map_norm(path)
    else:
        raise TypeError(f"no torch layout for {type(module).__name__}")
    return prefixed(torch_prefix, m)


def bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """torch F.interpolate(mode='bilinear', align_corners=False) along one axis as an (n_out, n_in) matrix:
    half-pixel centres, source coordinates below 0 clamped to 0, the upper neighbour clamped to the last pixel."""
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in), np.float64)
    m[np.arange(n_out), lo] += 1.0 - frac
    m[np.arange(n_out), hi] += frac
    return m.astype(np.float32)


def resize_bilinear(x: jax.Array, size: int) -> jax.Array:
    """NHWC bilinear resize to (size, size), align_corners=False (as upstream MaxViT.forward)."""
    h, w = x.shape[1], x.shape[2]
    if h == size and w == size:
        return x
    rh = jnp.asarray(bilinear_matrix(size, h))
    rw = jnp.asarray(bilinear_matrix(size, w))
    hp = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,nhwc->nowc", rh, x, precision=hp)
    return jnp.einsum("pw,nowc->nopc", rw, x, precision=hp)
