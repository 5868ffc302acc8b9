"""The typed form of summary.json (`medseg infer`'s per-case record): written by the pipeline, read by monitoring.

Every summary is validated against `CaseSummary` before it is written, so a missing or mistyped field fails at
the writer, not in a reader months later. The JSON schema is published in `docs/summary.schema.json` (a test
keeps it in step). Unknown extra keys are kept (`extra="allow"`), so a newer writer stays readable.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA = "medseg.infer.summary/1"
ACQUISITION_FROM_EXTRA = {
    "manufacturer": "manufacturer",
    "model_name": "manufacturer_model_name",
    "kernel": "convolution_kernel",
    "slice_thickness_mm": "slice_thickness",
    "kvp": "kvp",
    "body_part": "body_part_examined",
    "contrast": "contrast_bolus_agent",
}


class CaseStatus(StrEnum):
    """What happened to a case: segmented (ok/flagged), refused or rejected by QC, or failed."""

    OK = "ok"
    FLAGGED = "flagged"
    QC_REJECTED = "qc_rejected"
    FAILED = "failed"


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Software(_Open):
    medseg: str
    python: str
    backend: str


class ModelInfo(_Open):
    name: str
    version: str
    sha256: str = Field(description="SHA-256 of the f32 weights (weights.pt) the card names")
    card_sha256: str | None = Field(
        None,
        description="SHA-256 of the model card file as read (HU window, "
        "confidence limit, volume range); absent from older summaries",
    )
    int8_sha256: dict[str, str] | None = Field(
        None, description="--precision int8: the INT8 files that ran, each with its SHA-256"
    )
    spacing_mm: list[float]
    roi_size: list[int]
    runtime: dict[str, Any] | None = None


class Settings(_Open):
    fast: bool
    strict: bool
    force: bool = False
    overlap: float


class Acquisition(_Open):
    """Non-identifying acquisition facts from the source headers (None where the header has none): what post-market
    monitoring compares between sites and over time."""

    manufacturer: str | None = None
    model_name: str | None = None
    kernel: str | None = None
    slice_thickness_mm: float | None = None
    kvp: float | None = None
    body_part: str | None = None
    contrast: str | None = None


def acquisition_facts(extra: dict[str, Any]) -> Acquisition:
    """The acquisition facts of a volume's header extras; numbers that do not parse are left out, not guessed."""
    facts: dict[str, Any] = {}
    for field, key in ACQUISITION_FROM_EXTRA.items():
        value = extra.get(key)
        if isinstance(value, list):
            value = "\\".join(str(v) for v in value)
        if value is None:
            continue
        if field in ("slice_thickness_mm", "kvp"):
            try:
                value = float(str(value).replace(",", "."))
            except ValueError:
                continue
        facts[field] = value if field in ("slice_thickness_mm", "kvp") else str(value).strip()
    return Acquisition(**facts)


class InputInfo(_Open):
    path: str
    format: str
    sha256: str
    files: int
    modality: str | None
    series_instance_uid: str | None
    shape: list[int]
    spacing_mm: list[float]
    origin_lps_mm: list[float]
    direction: list[list[float]]
    acquisition: Acquisition | None = None


class QCFlagRecord(_Open):
    code: str
    stage: str
    reason: str
    refuses: bool = False
    organ: str | None = Field(None, description="the organ a result flag is about")


class QCRecord(_Open):
    passed: bool
    strict: bool
    refused: list[str] = Field(default_factory=list)
    forced: list[str] = Field(default_factory=list)
    flags: list[QCFlagRecord]
    rules_sha256: str | None = Field(None, description="SHA-256 of medseg/infer/qc_rules.yaml as applied")
    low_confidence_limit: float | None = Field(None, description="the low_confidence limit applied")
    low_confidence_limit_from: Literal["card", "rules"] | None = Field(
        None, description="where that limit came from: the model card's (wins when it has one) or the rules file's"
    )


class BoxIndex(BaseModel):
    start: list[int]
    stop: list[int]


class BoxMM(BaseModel):
    min: list[float]
    max: list[float]


class OrganConfidenceRecord(_Open):
    """Reference-free confidence of one organ (medseg.postprocess.confidence); `low_confidence` uses the fraction."""

    boundary_entropy: float
    uncertain_fraction: float
    neighbour_contact: float


class OrganStats(_Open):
    """One segmented label: volume, intensity inside it, where it is."""

    name: str
    label: int
    voxel_count: int
    volume_ml: float
    mean_hu: float | None
    std_hu: float | None
    bbox_index: BoxIndex | None
    bbox_lps_mm: BoxMM | None
    centroid_lps_mm: list[float] | None
    confidence: OrganConfidenceRecord | None = None


class ModelGridInfo(_Open):
    shape: list[int]
    windows: dict[str, int]


class CaseSummary(_Open):
    """summary.json of one case."""

    schema_: str = Field(SCHEMA, alias="schema")
    case: str
    organ: str
    software: Software
    model: ModelInfo
    settings: Settings
    input: InputInfo | None = None
    notes: list[str] = Field(default_factory=list)
    model_grid: ModelGridInfo | None = None
    organs: list[OrganStats] | None = None
    status: CaseStatus
    qc: QCRecord
    outputs: dict[str, str | None]
    timings_s: dict[str, float]
    seg_not_written: str | None = None
    failure: str | None = None  # status "failed": the one-line error (what the console said)
    exit_code: int | None = None  # status "failed": the case's exit code

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def to_json(self) -> dict[str, Any]:
        """The JSON form, keys as in summary.json (absent optional sections left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=False, exclude_unset=True)


def summary_json_schema() -> dict[str, Any]:
    """The JSON schema of summary.json (published as docs/summary.schema.json)."""
    return CaseSummary.model_json_schema(by_alias=True)
