"""Generate medseg/deid/data/table_e1_1.json from PS3.15 Table E.1-1 (innolitics JSON, edition 2024b).

Run: .venv/bin/python scripts/gen_deid_table.py [SOURCE_JSON]
(default source: $MEDSEG_DATA_ROOT or ../shared/data, file standard/confidentiality_profile_attributes.json).
tests/test_deid_table.py checks the committed table against the source row by row.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "medseg" / "deid" / "data" / "table_e1_1.json"
EDITION = "2024b"
COLUMNS = {
    "rtnSafePrivOpt": "retain-safe-private",
    "rtnUIDsOpt": "retain-uids",
    "rtnDevIdOpt": "retain-device-identity",
    "rtnInstIdOpt": "retain-institution-identity",
    "rtnPatCharsOpt": "retain-patient-characteristics",
    "rtnLongFullDatesOpt": "retain-dates-full",
    "rtnLongModifDatesOpt": "retain-dates-shifted",
    "cleanDescOpt": "clean-descriptors",
    "cleanStructContOpt": "clean-structured-content",
    "cleanGraphOpt": "clean-graphics",
}


def convert(rows: list[dict[str, str]]) -> dict[str, object]:
    """The package table: edition, source, and one record per source row in source order."""
    out = []
    for row in rows:
        options = {COLUMNS[k]: v for k, v in row.items() if k in COLUMNS and v}
        name = " ".join(row["name"].split())
        out.append({"tag": row["tag"], "name": name, "basic": row["basicProfile"], "options": options})
    return {
        "edition": EDITION,
        "source": "DICOM PS3.15 Annex E Table E.1-1 via innolitics/dicom-standard "
        "standard/confidentiality_profile_attributes.json",
        "rows": out,
    }


def main() -> None:
    """Read the source JSON and write the package table."""
    root = Path(os.environ.get("MEDSEG_DATA_ROOT", REPO.parent / "shared" / "data"))
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "standard" / "confidentiality_profile_attributes.json"
    table = convert(json.loads(src.read_text()))
    TARGET.write_text(json.dumps(table, indent=1) + "\n")
    print(f"{TARGET}: {len(table['rows'])} rows")


if __name__ == "__main__":
    main()
