"""StyleGAN2 layers in plain torch: equalised-lr linear layer, bias + activation with clamp,
FIR resampling (zero-insertion upsampling followed by a [1, 3, 3, 1] low-pass), modulated conv.

Parameter names and shapes are the published ones (`weight`, `bias`, `affine.*`, `noise_const`,
`noise_strength`, `resample_filter`); the arithmetic follows the reference ops' definitions
(weights scaled at run time by 1/sqrt(fan_in), lrelu gain sqrt(2), demodulation with eps 1e-8),
written as ordinary conv2d / conv_transpose2d calls instead of the custom CUDA kernels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)


def setup_filter(taps=(1, 3, 3, 1)) -> torch.Tensor:
    """The separable 2-D low-pass filter (outer product of `taps`), normalised to sum 1."""
    f = torch.as_tensor(np.asarray(taps, dtype=np.float32))
    f = torch.outer(f, f)
    return f / f.sum()


def bias_act(x: torch.Tensor, bias: torch.Tensor | None, activation: str = "linear", gain: float | None = None,
             clamp: float | None = None) -> torch.Tensor:
    """x + bias (on dim 1), then lrelu(0.2)·sqrt(2) or identity, times `gain`, clamped to ±clamp."""
    if bias is not None:
        x = x + bias.reshape([1, -1] + [1] * (x.ndim - 2))
    if activation == "lrelu":
        x = F.leaky_relu(x, LRELU_SLOPE)
        gain = LRELU_GAIN if gain is None else gain
    elif activation != "linear":
        raise ValueError(f"activation must be 'linear' or 'lrelu', got {activation!r}")
    if gain is not None and gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int = 1, pad: tuple[int, int, int, int] = (0, 0, 0, 0),
              gain: float = 1.0) -> torch.Tensor:
    """Upsample by zero insertion, pad (x0, x1, y0, y1), then FIR-filter each channel with `f`·gain.

    `f` is a symmetric 2-D filter (so convolution = correlation); no downsampling is needed here.
    """
    b, c, h, w = x.shape
    if up > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(b, c, h * up, w * up)
    x = F.pad(x, [pad[0], pad[1], pad[2], pad[3]])
    k = (f * gain).to(x.dtype)[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, k, groups=c)


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    """×up upsampling with the low-pass `f` (gain up², output exactly up·H × up·W)."""
    fw = f.shape[-1]
    p0, p1 = (fw + up - 1) // 2, (fw - up) // 2
    return upfirdn2d(x, f, up=up, pad=(p0, p1, p0, p1), gain=up * up)


class FullyConnectedLayer(torch.nn.Module):
    """Equalised-learning-rate linear layer: weight (out, in) scaled by lr_mul/sqrt(in) at run time."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype) * self.bias_gain
        if self.activation == "linear":
            return F.linear(x, w, b)
        return bias_act(x @ w.t(), b, self.activation)


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """x / sqrt(mean(x²) over dim 1 + eps)."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, noise: torch.Tensor | None = None,
                     up: int = 1, padding: int = 0, resample_filter: torch.Tensor | None = None,
                     demodulate: bool = True) -> torch.Tensor:
    """StyleGAN2 modulated convolution: input scaled by the styles, conv, per-sample demodulation.

    Equivalent to the reference's non-fused path. With up = 2 a stride-2 transposed convolution is
    followed by the FIR filter (gain 4), so the output is exactly 2H × 2W for a 3×3 kernel and
    padding 1, as the reference's `conv2d_resample`.
    """
    b = x.shape[0]
    out_c, in_c, kh, kw = weight.shape
    x = x * styles.to(x.dtype).reshape(b, -1, 1, 1)
    w = weight.to(x.dtype)
    if up == 1:
        x = F.conv2d(x, w, padding=padding)
    else:
        # transposed conv (the kernel transposed, not flipped) then the low-pass; the paddings
        # are the reference's for kernel k, filter taps fw, factor up and conv padding p.
        fw = resample_filter.shape[-1]
        p0 = padding + (fw + up - 1) // 2 - (kw - 1)
        p1 = padding + (fw - up) // 2 - (kw - up)
        x = F.conv_transpose2d(x, w.transpose(0, 1), stride=up)
        x = upfirdn2d(x, resample_filter, pad=(p0, p1, p0, p1), gain=up * up)
    if demodulate:
        dcoefs = ((w[None] * styles.to(x.dtype).reshape(b, 1, -1, 1, 1)).square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
        x = x * dcoefs.reshape(b, -1, 1, 1)
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


class SynthesisLayer(torch.nn.Module):
    """Modulated 3×3 conv (optionally ×2 upsampling) + noise + bias + lrelu, styled by w."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3,
                 up: int = 1, use_noise: bool = True, activation: str = "lrelu",
                 resample_filter=(1, 3, 3, 1), conv_clamp: float | None = None, channels_last: bool = False):
        super().__init__()
        self.in_channels, self.out_channels, self.w_dim = in_channels, out_channels, w_dim
        self.resolution, self.up, self.use_noise, self.activation = resolution, up, use_noise, activation
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "const",
                generator: torch.Generator | None = None, gain: float = 1.0) -> torch.Tensor:
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], generator=generator,
                                device=x.device, dtype=x.dtype) * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        elif noise_mode not in ("random", "const", "none"):
            raise ValueError(f"noise_mode must be 'const', 'random' or 'none', got {noise_mode!r}")
        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, self.activation, gain=LRELU_GAIN * gain, clamp=clamp)


class ToRGBLayer(torch.nn.Module):
    """Modulated 1×1 conv without demodulation (features → image channels) + bias."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: float | None = None, channels_last: bool = False):
        super().__init__()
        self.in_channels, self.out_channels, self.w_dim = in_channels, out_channels, w_dim
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_act(x, self.bias, clamp=self.conv_clamp)
