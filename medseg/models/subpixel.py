"""Exact sub-pixel form of stride-2 transposed 3D convolutions, so INT8 quantisation covers the decoder too.

OpenVINO's INT8 path keeps `ConvTranspose3d` in f32 (in MONAI's UNet the last one alone is a quarter of the window
time). A transposed convolution with kernel 3, stride 2, padding 1 and output padding 1 equals, per output phase,
an ordinary kernel-2 convolution of the input padded by one zero at the far end; the eight phases are interleaved
by a 3D pixel shuffle. Along one axis: y[2m] = w[1] x[m] and y[2m+1] = w[2] x[m] + w[0] x[m+1].
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# The 3D pixel shuffle: (B, rd, rh, rw, C, D, H, W) -> (B, C, D, rd, H, rh, W, rw); OpenVINO keeps it as this Transpose
PIXEL_SHUFFLE_ORDER = (0, 4, 5, 1, 6, 2, 7, 3)
# Per output phase r (0 = even, 1 = odd): the transposed-kernel tap used at input offset 0 and at offset +1 (-1: none)
_TAPS = {0: (1, -1), 1: (2, 0)}


def _phase_kernel(weight: torch.Tensor) -> torch.Tensor:
    """(C_in, C_out, 3, 3, 3) transposed weights -> (8 * C_out, C_in, 2, 2, 2) ordinary conv weights, phase-major."""

    c_in, c_out = weight.shape[:2]
    out = weight.new_zeros((2, 2, 2, c_out, c_in, 2, 2, 2))
    w = weight.permute(1, 0, 2, 3, 4)  # (C_out, C_in, kd, kh, kw)
    for rd in (0, 1):
        for rh in (0, 1):
            for rw in (0, 1):
                for od, kd in enumerate(_TAPS[rd]):
                    for oh, kh in enumerate(_TAPS[rh]):
                        for ow, kw in enumerate(_TAPS[rw]):
                            if min(kd, kh, kw) >= 0:
                                out[rd, rh, rw, :, :, od, oh, ow] = w[:, :, kd, kh, kw]
    return out.reshape(8 * c_out, c_in, 2, 2, 2)


def subpixel_module(transposed: Any) -> Any:
    """A module computing exactly what `transposed` (ConvTranspose3d k=3, s=2, p=1, op=1) computes."""
    import torch
    from torch import nn

    spec = (transposed.kernel_size, transposed.stride, transposed.padding, transposed.output_padding)
    if spec != ((3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1)) or transposed.groups != 1 or transposed.dilation != (
        1,
        1,
        1,
    ):
        raise ValueError(f"only ConvTranspose3d(kernel 3, stride 2, padding 1, output_padding 1) is supported: {spec}")

    class SubpixelConvTranspose3d(nn.Module):
        """Kernel-2 phase convolution + 3D pixel shuffle; equal to the transposed convolution it replaces."""

        def __init__(self) -> None:
            super().__init__()
            self.c_out = transposed.out_channels
            self.conv = nn.Conv3d(transposed.in_channels, 8 * self.c_out, 2, bias=transposed.bias is not None)
            with torch.no_grad():
                self.conv.weight.copy_(_phase_kernel(transposed.weight.detach()))
                if transposed.bias is not None:
                    self.conv.bias.copy_(transposed.bias.detach().repeat(8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, _, d, h, w = x.shape
            y = self.conv(nn.functional.pad(x, (0, 1, 0, 1, 0, 1)))
            y = y.reshape(b, 2, 2, 2, self.c_out, d, h, w).permute(*PIXEL_SHUFFLE_ORDER)
            return y.reshape(b, self.c_out, 2 * d, 2 * h, 2 * w)

    return SubpixelConvTranspose3d()


def replace_transposed_convs(net: Any) -> int:
    """Swap every ConvTranspose3d in `net` (in place) for its sub-pixel equivalent; return how many were swapped."""
    from torch import nn

    swapped = 0
    for name, child in list(net.named_children()):
        if isinstance(child, nn.ConvTranspose3d):
            setattr(net, name, subpixel_module(child))
            swapped += 1
        else:
            swapped += replace_transposed_convs(child)
    return swapped
