"""Helpers for the inference tests: small model folders made on the fly (same contract as the shipped model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from medseg.models.registry import sha256_file


def make_model_folder(
    folder: Path,
    seed: int = 0,
    spacing: tuple[float, float, float] = (3.0, 3.0, 3.0),
    roi: tuple[int, int, int] = (96, 96, 96),
    channels: tuple[int, ...] = (8, 16, 32, 64),
    strides: tuple[int, ...] = (2, 2, 2),
    foreground_bias: float = 0.0,
) -> Path:
    """Write model_card.yaml + weights.pt of a randomly initialised UNet; `foreground_bias` shifts the liver logit."""
    import torch

    from medseg.models.card import NetworkSpec
    from medseg.models.network import build_network

    spec = NetworkSpec(channels=channels, strides=strides, num_res_units=1)
    torch.manual_seed(seed)
    net = build_network(spec)
    if foreground_bias:
        last = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d | torch.nn.ConvTranspose3d)][-1]
        with torch.no_grad():
            last.bias[1] += foreground_bias
            last.bias[0] -= foreground_bias
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), folder / "weights.pt")
    card = {
        "name": f"test-liver-{seed}",
        "version": "0.0.1",
        "organ": "liver",
        "labels": {0: "background", 1: "liver"},
        "modality": "CT",
        "intended_use": "tests only",
        "spacing": list(spacing),
        "roi_size": list(roi),
        "intensity": {"a_min": -200.0, "a_max": 300.0},
        "network": spec.model_dump(mode="json"),
        "weights": {"file": "weights.pt", "sha256": sha256_file(folder / "weights.pt")},
        "metrics": {"untrained": {"mean_dice": 0.0, "note": "random weights: a figure so --organ liver is served"}},
    }
    (folder / "model_card.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    return folder


def intensity_network(threshold: float = 0.6, sharpness: float = 40.0):
    """A stand-in model with a known answer: 'liver' where the windowed intensity exceeds `threshold`."""

    def predict(batch: np.ndarray) -> np.ndarray:
        fg = (batch[:, 0] - threshold) * sharpness
        return np.stack([-fg, fg], axis=1).astype(np.float32)

    return predict


def write_negated_series(src_files: list[Path], dst: Path, ks: range) -> None:
    """Rewrite real CT slices with ImageOrientationPatient negated (rows and columns reversed) and new UIDs.

    Pixel (r, c) of the new slice is pixel (R-1-r, C-1-c) of the old one and the position moves to the old last
    pixel, so every voxel keeps its world position: a correct reader/writer must give the same anatomy.
    """
    import pydicom
    from pydicom.uid import generate_uid

    series = generate_uid()
    dst.mkdir(parents=True, exist_ok=True)
    for n, k in enumerate(ks):
        ds = pydicom.dcmread(src_files[k])
        rows, cols = int(ds.Rows), int(ds.Columns)
        dy, dx = (float(v) for v in ds.PixelSpacing)
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        pos = np.asarray(ds.ImagePositionPatient, dtype=float) + (cols - 1) * dx * iop[:3] + (rows - 1) * dy * iop[3:]
        ds.ImageOrientationPatient = [f"{v:.6g}" for v in -iop]
        ds.ImagePositionPatient = [f"{v:.6f}"[:16] for v in pos]
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[::-1, ::-1]).astype(ds.pixel_array.dtype).tobytes()
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(dst / f"slice{n:03d}.dcm")


def seg_frames_in_world(seg_path: Path) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Each SEG frame as (LPS positions of its pixel centres (R, C, 3), frame pixels, segment number)."""
    import pydicom

    ds = pydicom.dcmread(seg_path)
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    dy, dx = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    pixels = ds.pixel_array.reshape(-1, int(ds.Rows), int(ds.Columns))
    r, c = np.meshgrid(np.arange(ds.Rows), np.arange(ds.Columns), indexing="ij")
    out = []
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        ipp = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        world = ipp + c[..., None] * dx * iop[:3] + r[..., None] * dy * iop[3:]
        ident = item if "SegmentIdentificationSequence" in item else shared
        segment = int(ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        out.append((world, pixels[f], segment))
    return out
