"""Streams of cases for the monitoring tests, made from REAL `medseg infer` summaries and seeded site variation.

The four real CTs give four real summaries (volumes, HU, grid, QC flags as the shipped model produced them). A site's
stream draws from them and varies what differs between patients and scanners at one site, then a shift changes what a
site would change. Acquisition facts the current summary does not record (manufacturer, kernel, phase, thickness) are
written where the monitor reads them (`input.acquisition`), with each case's real values from SOURCES-ct.md.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medseg.monitor.facts import CaseFacts, facts_from_summary

REAL_INPUTS = {  # case name -> path under the data root
    "chaos": "ct/chaos_ct_sample/dicom",
    "radcttace_1211": "ct/radcttace_1211/image.nii.gz",
    "radcttace_0697": "ct/radcttace_0697/image.nii.gz",
    "totalseg_sm": "ct/totalseg_example_ct_sm/image.nii.gz",
}
# Real acquisition facts of each case (shared/data/SOURCES-ct.md); None where the source does not say.
REAL_ACQUISITION = {
    "chaos": {"manufacturer": None, "kernel": "B", "contrast": "iv", "phase": "portal-venous", "thickness": 3.2},
    "radcttace_1211": {
        "manufacturer": "Philips",
        "kernel": None,
        "contrast": "iv",
        "phase": "arterial",
        "thickness": 2.5,
    },
    "radcttace_0697": {
        "manufacturer": "GE MEDICAL SYSTEMS",
        "kernel": None,
        "contrast": "iv",
        "phase": "equilibrium",
        "thickness": 5.0,
    },
    "totalseg_sm": {
        "manufacturer": None,
        "kernel": None,
        "contrast": "none",
        "phase": "non-contrast",
        "thickness": 3.0,
    },
}
SITE_MANUFACTURERS = ["Philips", "GE MEDICAL SYSTEMS"]  # the site's scanners; cases whose header is empty get one
KERNELS = {"Philips": "B", "GE MEDICAL SYSTEMS": "STANDARD", "SIEMENS": "Br40"}
SITE_TRUNCATED_RATE = 0.15  # all four real crops are cut off at an edge; a site's full scans are cut off less often

Shift = Callable[[dict[str, Any], np.random.Generator], None]


def run_real_inference(data_root: Path, out: Path) -> dict[str, Path]:
    """Run `medseg infer` on the four real CTs (one process for the NIfTI files, one for the DICOM series).

    Returns each case's output folder (summary.json, preview.png, label map).
    """
    nifti_dir = out / "inputs"
    nifti_dir.mkdir(parents=True, exist_ok=True)
    for name, rel in REAL_INPUTS.items():
        if rel.endswith(".nii.gz"):
            link = nifti_dir / f"{name}.nii.gz"
            if not link.exists():
                link.symlink_to(data_root / rel)
    cmd = [sys.executable, "-m", "medseg", "infer", "--organ", "liver", "--overwrite"]
    env = os.environ | {"MEDSEG_DATA_ROOT": str(data_root)}
    for source, dest in ((nifti_dir, out / "results"), (data_root / REAL_INPUTS["chaos"], out / "results-dicom")):
        done = subprocess.run([*cmd, str(source), "--out", str(dest)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    folders = {p.parent.name: p.parent for p in (out / "results").glob("*/summary.json")}
    folders["chaos"] = next((out / "results-dicom").glob("*/summary.json")).parent
    missing = set(REAL_INPUTS) - set(folders)
    assert not missing, f"no summary for {missing}"
    return folders


def read_summaries(folders: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """The summary.json of each real case."""
    return {name: json.loads((folder / "summary.json").read_text()) for name, folder in folders.items()}


def site_case(base: dict[str, dict[str, Any]], rng: np.random.Generator, index: int, seed: int) -> dict[str, Any]:
    """One unshifted case: a real summary with this patient's volume and HU, the site's scanner and its QC rate."""
    name = sorted(base)[int(rng.integers(len(base)))]
    s = copy.deepcopy(base[name])
    facts = REAL_ACQUISITION[name]
    s["case"] = f"synthetic-{seed}-{index}"
    s["input"]["sha256"] = hashlib.sha256(f"{seed}/{index}".encode()).hexdigest()
    manufacturer = facts["manufacturer"] or SITE_MANUFACTURERS[int(rng.integers(2))]
    s["input"]["acquisition"] = {
        "manufacturer": manufacturer,
        "kernel": facts["kernel"] or KERNELS[manufacturer],
        "contrast": facts["contrast"],
        "phase": facts["phase"],
        "slice_thickness_mm": facts["thickness"],
        "body_part": "ABDOMEN",
        "kvp": 120.0,
    }
    for organ in s["organs"]:
        factor = float(rng.lognormal(0.0, 0.12))
        organ["volume_ml"] *= factor
        organ["voxel_count"] = int(organ["voxel_count"] * factor)
        organ["mean_hu"] += float(rng.normal(0.0, 6.0))
    _set_flag(s, "organ_truncated", bool(rng.random() < SITE_TRUNCATED_RATE))
    _set_flag(s, "low_confidence", False)  # model 1.0.0 flags every real CT here; tests inject the rate they need
    return s


def _set_flag(s: dict[str, Any], code: str, on: bool) -> None:
    flags = [f for f in s["qc"]["flags"] if f["code"] != code]
    if on:
        flags.append({"code": code, "stage": "result", "reason": f"{code} (test stream)"})
    s["qc"]["flags"] = flags
    s["qc"]["passed"] = not flags
    s["status"] = "flagged" if flags else "ok"


def thick_slices(s: dict[str, Any], rng: np.random.Generator) -> None:
    """The site switches to 5 mm reconstructions (slice spacing and thickness 5 mm, same coverage)."""
    axial = 2
    extent = s["input"]["spacing_mm"][axial] * s["input"]["shape"][axial]
    s["input"]["spacing_mm"][axial] = 5.0
    s["input"]["shape"][axial] = max(1, round(extent / 5.0))
    s["input"]["acquisition"]["slice_thickness_mm"] = 5.0


def non_contrast(s: dict[str, Any], rng: np.random.Generator) -> None:
    """The site sends non-contrast scans: no IV contrast, liver HU as in the real non-contrast case (44 HU)."""
    s["input"]["acquisition"] |= {"contrast": "none", "phase": "non-contrast"}
    for organ in s["organs"]:
        organ["mean_hu"] = 44.0 + float(rng.normal(0.0, 6.0))


def other_manufacturer(s: dict[str, Any], rng: np.random.Generator) -> None:
    """A new scanner from another manufacturer (Siemens, as the real Biograph series in shared/data)."""
    s["input"]["acquisition"] |= {"manufacturer": "SIEMENS", "kernel": KERNELS["SIEMENS"]}


def more_truncation(s: dict[str, Any], rng: np.random.Generator) -> None:
    """Shorter scan ranges: organ_truncated rises from 15 % to 50 % of cases."""
    _set_flag(s, "organ_truncated", bool(rng.random() < 0.5))


def under_segmentation(s: dict[str, Any], rng: np.random.Generator) -> None:
    """The model starts to under-segment: every organ volume x 0.8."""
    for organ in s["organs"]:
        organ["volume_ml"] *= 0.8
        organ["voxel_count"] = int(organ["voxel_count"] * 0.8)


SHIFTS: dict[str, Shift] = {
    "thick_slices": thick_slices,
    "non_contrast": non_contrast,
    "other_manufacturer": other_manufacturer,
    "more_truncation": more_truncation,
    "under_segmentation": under_segmentation,
}


def stream(
    base: dict[str, dict[str, Any]], seed: int, n: int, shift: Shift | None = None, change_at: int = 0
) -> list[dict[str, Any]]:
    """`n` summaries of one site; from case `change_at` on (0-based) the shift applies."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        s = site_case(base, rng, i, seed)
        if shift is not None and i >= change_at:
            shift(s, rng)
        cases.append(s)
    return cases


def to_facts(summaries: list[dict[str, Any]], key: bytes = b"k" * 32) -> list[CaseFacts]:
    """Read each summary as `monitor build` reads a summary.json file."""
    out = []
    for i, s in enumerate(summaries):
        raw = json.dumps(s).encode()
        out.append(facts_from_summary(json.loads(raw), raw, f"case-{i}", key))
    return out


def write_stream(summaries: list[dict[str, Any]], folder: Path, preview: Path | None = None, start: int = 0) -> None:
    """Write each summary as OUT/<case>/summary.json with increasing modification times (the order of use).

    `start` numbers the first case (its time) when a stream is written in parts. With `preview`, that real
    preview.png is copied next to each summary as the case's preview (for dashboard links).
    """
    for i, s in enumerate(summaries):
        path = folder / s["case"] / "summary.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        if preview is not None:
            shutil.copyfile(preview, path.parent / "preview.png")
        path.write_text(json.dumps(s))
        os.utime(path, ns=(1_700_000_000_000_000_000 + (start + i) * 10**9,) * 2)


# The summary `medseg infer` wrote for the real CHAOS CT (abdomen 2.2.0, 2026-11-30), identity replaced: every
# field as infer writes it, including input.acquisition and organs[].confidence. Fast tests vary it.
REAL_SUMMARY: dict[str, Any] = {
    "schema": "medseg.infer.summary/1",
    "case": "dicom",
    "organ": "liver",
    "software": {"medseg": "0.1.0", "python": "3.11.7", "backend": "openvino"},
    "model": {
        "name": "abdomen",
        "version": "2.2.0",
        "sha256": "5623c1d03bdadc9e778419b44c51dfc8e770e369ed8ab0c51202a281675a3c94",
        "spacing_mm": [3.0, 3.0, 3.0],
        "roi_size": [96, 96, 96],
    },
    "settings": {"fast": False, "strict": False, "force": False, "overlap": 0.25},
    "input": {
        "path": "/data/ct/case/dicom",
        "format": "dicom",
        "sha256": "0" * 64,
        "files": 78,
        "modality": "CT",
        "series_instance_uid": "1.2.840.113704.1.1762661655.11024.1129934350.12",
        "shape": [512, 512, 78],
        "spacing_mm": [0.7266, 0.7266, 2.0],
        "origin_lps_mm": [-185.0, -98.0, 1536.5],
        "direction": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        "acquisition": {
            "manufacturer": None,
            "model_name": None,
            "kernel": "B",
            "slice_thickness_mm": 3.2,
            "kvp": 120.0,
            "body_part": None,
            "contrast": "CONTRAST",
        },
    },
    "notes": ["SliceThickness 3.2 mm > slice spacing 2 mm (overlapping slices)"],
    "model_grid": {"shape": [125, 125, 52], "windows": {"planned": 4, "run": 4, "skipped": 0}},
    "organs": [
        {
            "name": "liver",
            "label": 1,
            "voxel_count": 1050000,
            "volume_ml": 1418.79,
            "mean_hu": 140.57,
            "std_hu": 22.9,
            "bbox_index": {"start": [35, 25, 0], "stop": [107, 86, 78]},
            "bbox_lps_mm": {"min": [-140.0, -266.3, 1380.5], "max": [72.9, -86.3, 1536.5]},
            "centroid_lps_mm": [-65.4, -185.2, 1450.3],
            "confidence": {"boundary_entropy": 0.2329, "uncertain_fraction": 0.1985, "neighbour_contact": 0.121},
        }
    ],
    "status": "flagged",
    "qc": {
        "passed": False,
        "strict": False,
        "refused": [],
        "forced": [],
        "flags": [
            {
                "code": "organ_truncated",
                "stage": "result",
                "reason": "liver touches the inferior edge of the scan: its volume may be underestimated",
                "refuses": False,
            }
        ],
    },
    "outputs": {"labels": "liver.nii.gz", "seg": "seg.dcm", "preview": "preview.png"},
    "timings_s": {"total": 1.734},
}


def summary_case(
    index: int,
    rng: np.random.Generator,
    uncertain: float = 0.2,
    volume_factor: float = 1.0,
    truncated_rate: float = 0.15,
    version: str = "2.2.0",
) -> dict[str, Any]:
    """One case of a site from REAL_SUMMARY: its own input digest, patient-to-patient volume, HU and confidence."""
    s = copy.deepcopy(REAL_SUMMARY)
    s["case"] = f"case{index:04d}"
    s["input"]["sha256"] = hashlib.sha256(f"case/{index}".encode()).hexdigest()
    s["model"]["version"] = version
    organ = s["organs"][0]
    organ["volume_ml"] = 1500.0 * float(rng.lognormal(0.0, 0.12)) * volume_factor
    organ["mean_hu"] = 120.0 + float(rng.normal(0.0, 6.0))
    organ["confidence"]["uncertain_fraction"] = uncertain + float(rng.normal(0.0, 0.02))
    organ["confidence"]["boundary_entropy"] = 0.23 + float(rng.normal(0.0, 0.01))
    _set_flag(s, "organ_truncated", bool(rng.random() < truncated_rate))
    return s
