"""Build the torch network described by a model card's `NetworkSpec` (torch/monai imported lazily)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medseg.models.card import NetworkSpec

if TYPE_CHECKING:
    import torch


def build_network(spec: NetworkSpec) -> torch.nn.Module:
    """A MONAI 3D UNet (default, CPU-friendly) or DynUNet (GPU machines) from `spec`."""
    from medseg.monai_import import import_monai

    import_monai()
    from monai.networks.nets import DynUNet, UNet

    norm = "instance" if spec.norm == "instance" else "batch"
    if spec.name == "UNet":
        return UNet(
            spatial_dims=3,
            in_channels=spec.in_channels,
            out_channels=spec.out_channels,
            channels=spec.channels,
            strides=spec.strides,
            num_res_units=spec.num_res_units,
            norm=norm,
            dropout=spec.dropout,
        )
    kernels = [[3, 3, 3]] * (len(spec.strides) + 1)
    strides = [[1, 1, 1]] + [[s] * 3 for s in spec.strides]
    return DynUNet(
        spatial_dims=3,
        in_channels=spec.in_channels,
        out_channels=spec.out_channels,
        kernel_size=kernels,
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=list(spec.channels),
        norm_name=norm,
        dropout=spec.dropout or None,
    )
