"""SOUP list (IEC 62304 8.1.2) from requirements.lock: name, exact version, licence, purpose, issue tracker."""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

from medseg.errors import InvalidInputError
from medseg.validation.sets import REPO
from medseg.yamltext import load_yaml

LOCK = REPO / "requirements.lock"
PURPOSES = Path(__file__).with_name("soup_purpose.yaml")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """Normalised name -> exact version of every `name==version` line of the lock file."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            if "==" not in line:
                raise InvalidInputError(f"lock line {line!r} is not an exact pin", path=path)
            name, version = line.split("==", 1)
            pins[_norm(name)] = version.strip()
    return pins


def _licence(meta: Any) -> str:
    expr = meta.get("License-Expression")
    if expr:
        return expr
    classifiers = [c.split(" :: ")[-1] for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    if classifiers:
        return "; ".join(classifiers)
    text = (meta.get("License") or "").strip().splitlines()
    return text[0][:80] if text else "not stated in package metadata"


def _tracker(meta: Any) -> str | None:
    urls = {}
    for entry in meta.get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        urls[label.strip().lower()] = url.strip()
    for key in ("issues", "issue tracker", "tracker", "bug tracker", "bug reports", "source", "repository", "homepage"):
        if key in urls:
            return urls[key] + (
                "" if key in ("issues", "issue tracker", "tracker", "bug tracker", "bug reports") else " (issues there)"
            )
    home = meta.get("Home-page")
    return f"{home} (issues there)" if home else None


def _required_by(pins: dict[str, str]) -> dict[str, list[str]]:
    """Normalised name -> the locked packages that declare it as a dependency."""
    needed: dict[str, list[str]] = {}
    for name in pins:
        try:
            reqs = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        for req in reqs:
            if "extra ==" in req:
                continue
            dep = _norm(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0])
            needed.setdefault(dep, []).append(name)
    return needed


def soup_list(lock: Path = LOCK) -> list[dict[str, Any]]:
    """One record per locked package; licence and tracker from its installed metadata."""
    pins = read_lock(lock)
    purposes = {_norm(k): v for k, v in load_yaml(PURPOSES.read_text()).items()}
    users = _required_by(pins)
    rows = []
    for name, version in sorted(pins.items()):
        try:
            meta = distribution(name).metadata
            installed = distribution(name).version
        except PackageNotFoundError:
            meta, installed = None, None
        purpose = purposes.get(name) or (
            "needed by " + ", ".join(sorted(users[name])) if name in users else "not stated"
        )
        rows.append({
            "name": name, "version": version, "installed": installed,
            "licence": _licence(meta) if meta else "not installed", "purpose": purpose,
            "anomaly_reference": _tracker(meta) if meta else None,
        })  # fmt: skip
    return rows


def soup_diff(previous: list[dict[str, Any]], current: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Packages added, removed and changed in version between two SOUP lists."""
    old = {r["name"]: r["version"] for r in previous}
    new = {r["name"]: r["version"] for r in current}
    return {
        "added": [f"{n}=={new[n]}" for n in sorted(new.keys() - old.keys())],
        "removed": [f"{n}=={old[n]}" for n in sorted(old.keys() - new.keys())],
        "changed": [f"{n}: {old[n]} -> {new[n]}" for n in sorted(new.keys() & old.keys()) if old[n] != new[n]],
    }


SPDX = re.compile(r"^[A-Za-z0-9.+-]+( (AND|OR|WITH) [A-Za-z0-9.+-]+)*$")


def _licence_entry(licence: str) -> list[dict[str, Any]]:
    """CycloneDX licence: an SPDX expression when it is one, else a named licence; none when unknown."""
    if licence in ("not installed", "not stated in package metadata"):
        return []
    return [{"expression": licence}] if SPDX.match(licence) else [{"license": {"name": licence[:200]}}]


def cyclonedx(rows: list[dict[str, Any]], lock: Path = LOCK) -> dict[str, Any]:
    """A CycloneDX 1.5 JSON SBOM of the SOUP list (serial number derived from the lock file, so it is reproducible)."""
    import hashlib
    import uuid

    from medseg import __version__

    serial = uuid.UUID(hashlib.sha256(lock.read_bytes()).hexdigest()[:32], version=5)
    components = []
    for r in rows:
        comp: dict[str, Any] = {
            "type": "library",
            "name": r["name"],
            "version": r["version"],
            "purl": f"pkg:pypi/{r['name']}@{r['version']}",
            "description": r["purpose"],
        }
        if licences := _licence_entry(r["licence"]):
            comp["licenses"] = licences
        if ref := r["anomaly_reference"]:
            kind = "vcs" if "(issues there)" in ref else "issue-tracker"
            comp["externalReferences"] = [{"type": kind, "url": ref.replace(" (issues there)", "")}]
        components.append(comp)
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{serial}",
        "version": 1,
        "metadata": {"component": {"type": "application", "name": "medseg", "version": __version__}},
        "components": components,
    }
