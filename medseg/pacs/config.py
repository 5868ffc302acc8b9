"""The service's configuration file (`medseg pacs serve --config pacs.yaml`), validated with pydantic."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medseg.errors import UsageError
from medseg.pacs.tls import TlsFiles
from medseg.yamltext import load_yaml


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_ae_title(title: str) -> str:
    """An AE title as PS3.5 (AE value representation) allows it: 1-16 characters of the default repertoire (ASCII),
    not only spaces, no backslash or control character; surrounding spaces removed. pynetdicom refuses the others
    only when it uses them (a ValueError at send time, which left the job running for ever: review 18), so they are
    refused when the config is read."""
    if (not 0 < len(title.strip()) <= 16 or "\\" in title or not title.isascii()
            or any(ord(c) < 32 or ord(c) == 127 for c in title)):
        raise ValueError(f"not a valid AE title: {title!r} (1 to 16 ASCII characters, not only spaces, no backslash "
                         "or control character)")  # fmt: skip
    return title.strip()


class Listen(_Strict):
    """Where the C-STORE SCP listens, and whom it accepts: associations must call this AE title (unless
    `check_called_aet` is off) and, when `allowed_callers` is not empty, come from one of those AE titles.
    `max_associations` connections at once (an idle one counts too); a connection that has not sent its association
    request (and finished its TLS handshake) within `association_timeout_s` is closed, so idle sockets cannot hold
    every slot for long (pynetdicom's defaults, 10 and 30 s, let 10 idle sockets lock every sender out: review 18)."""

    ae_title: str = Field("MEDSEG", max_length=16)
    host: str = "127.0.0.1"
    port: int = Field(11112, ge=0, le=65535)
    check_called_aet: bool = True
    allowed_callers: list[str] = []
    tls: TlsFiles | None = None
    max_associations: int = Field(64, ge=1, le=1000)
    association_timeout_s: float = Field(10.0, gt=0, le=300)

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, title: str) -> str:
        """The service's own AE title, checked as PS3.5 allows it (`check_ae_title`)."""
        return check_ae_title(title)

    @field_validator("allowed_callers")
    @classmethod
    def _callers(cls, callers: list[str]) -> list[str]:
        """AE titles: 1-16 characters, no backslash or control characters (PS3.5 AE value representation)."""
        return [check_ae_title(t) for t in callers]


class Destination(_Strict):
    """Where SEGs go: a C-STORE peer (ae_title, host, port) or a DICOMweb base URL for STOW-RS."""

    ae_title: str | None = Field(None, max_length=16)
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    dicomweb: str | None = None
    folder: Path | None = None
    timeout_s: float = 30.0
    tls: TlsFiles | None = None

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, title: str | None) -> str | None:
        """The peer's AE title, checked as PS3.5 allows it (`check_ae_title`)."""
        return None if title is None else check_ae_title(title)

    @model_validator(mode="after")
    def _one_kind(self) -> Destination:
        dimse = self.ae_title is not None and self.host is not None and self.port is not None
        if dimse + (self.dicomweb is not None) + (self.folder is not None) != 1:
            raise ValueError("give exactly one of: ae_title, host and port (C-STORE); dicomweb (STOW-RS); folder")
        if self.tls is not None and self.folder is not None:
            raise ValueError("tls applies to a C-STORE or DICOMweb destination, not to a folder")
        if self.tls is not None and self.dicomweb is not None and not self.dicomweb.lower().startswith("https://"):
            raise ValueError("tls with dicomweb needs an https:// URL")
        return self

    @property
    def name(self) -> str:
        """How the ledger names this destination."""
        if self.folder is not None:
            return f"folder:{self.folder}"
        return f"stow:{self.dicomweb}" if self.dicomweb else f"dimse:{self.ae_title}@{self.host}:{self.port}"


class Completion(_Strict):
    """A study is complete once no instance arrived for `quiet_seconds` (deadline kept in the queue)."""

    quiet_seconds: float = Field(60.0, ge=0)
    check_interval_s: float = Field(1.0, gt=0)


class Retry(_Strict):
    """Exponential backoff with a cap; `max_attempts` then 'failed', retried after `failed_retry_after_s`."""

    base_s: float = Field(5.0, gt=0)
    cap_s: float = Field(300.0, gt=0)
    max_attempts: int = Field(5, ge=1)
    failed_retry_after_s: float = Field(3600.0, ge=0)
    max_rounds: int = Field(3, ge=0)


class Retention(_Strict):
    """How long received studies and job results (patient data) stay in storage after their last job ended: `keep_days`
    (None: for ever). The queue's rows (states, reasons, ledger) stay; checked every `check_interval_s`."""

    keep_days: float | None = Field(None, ge=0)
    check_interval_s: float = Field(3600.0, gt=0)


class Research(_Strict):
    """A de-identified copy of every segmented study and its SEG (`medseg deid`'s engine), published under `folder`
    only after the leak check found nothing (see medseg.pacs.research)."""

    folder: Path
    key_file: Path
    options: list[str] = []
    pixels: Literal["scan", "off"] = "scan"
    include_seg: bool = True
    workers: int = Field(1, ge=1, le=64)

    @field_validator("pixels", mode="before")
    @classmethod
    def _pixels(cls, pixels: object) -> object:
        """YAML 1.1 reads a bare `off` (as the example config writes it) as false and `on` as true: false is 'off'
        and true 'scan', so `pixels: off` unquoted is not refused (review 18)."""
        if isinstance(pixels, bool):
            return "scan" if pixels else "off"
        return pixels

    @field_validator("options")
    @classmethod
    def _options(cls, options: list[str]) -> list[str]:
        """Annex E option names as `medseg deid --option` takes them."""
        from medseg.deid.table import check_options

        try:
            return sorted(check_options(options))
        except UsageError as exc:
            raise ValueError(exc.message) from exc


_SCHEDULER = re.compile(r"(?:(tcp|tls)://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):([0-9]{1,5})")


def check_scheduler_address(address: str) -> str:
    """`address` when it is a Dask scheduler address (tcp://HOST:PORT, tls://HOST:PORT, or HOST:PORT); ValueError
    otherwise, so a typo is a usage error at start, not a connection attempt that times out (review 19)."""
    match = _SCHEDULER.fullmatch(address.strip())
    if match is None or not 0 < int(match.group(3)) < 65536:
        raise ValueError(f"{address!r} is not a Dask scheduler address: expected tcp://HOST:PORT")
    return address.strip()


class PacsConfig(_Strict):
    """Everything `medseg pacs serve` needs; see configs/pacs.example.yaml for each key."""

    listen: Listen = Listen()
    storage: Path
    destination: Destination
    organs: list[str] = ["liver"]
    model: str | None = None
    backend: str = "auto"
    strict: bool = False
    completion: Completion = Completion()
    retry: Retry = Retry()
    workers: int = Field(1, ge=1, le=64)
    scheduler: str | None = None
    lease_seconds: float = Field(600.0, gt=0)
    min_free_mb: float = Field(0.0, ge=0)
    research: Research | None = None
    retention: Retention = Retention()

    @field_validator("scheduler")
    @classmethod
    def _scheduler(cls, address: str | None) -> str | None:
        """A Dask scheduler address, checked before anything connects (`check_scheduler_address`)."""
        return None if address is None else check_scheduler_address(address)

    @field_validator("organs")
    @classmethod
    def _organs(cls, organs: list[str]) -> list[str]:
        """Normalised as `medseg infer --organ` normalises them (`parse_organs`)."""
        from medseg.infer.organs import parse_organs

        try:
            return list(parse_organs(",".join(organs)))
        except UsageError as exc:
            raise ValueError("one or more distinct organ names (one model, a SEG segment each)") from exc

    @property
    def queue_path(self) -> Path:
        """The job queue database."""
        return self.storage / "queue.db"


def load_config(path: Path, overrides: dict[str, Any] | None = None) -> PacsConfig:
    """Read and validate a YAML config; relative storage paths are taken from the config file's folder."""
    hint = "Start from configs/pacs.example.yaml."
    try:
        data = load_yaml(Path(path).read_text()) or {}
    except OSError as exc:
        raise UsageError(f"cannot read the config: {exc.strerror or exc}", path=path, hint=hint) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UsageError(f"not valid YAML{where}: {what}", path=path, hint=hint) from exc
    if not isinstance(data, dict):
        kind = "list" if isinstance(data, list) else "single value"
        raise UsageError(f"the config is a YAML {kind}, not a mapping of settings", path=path, hint=hint)
    data |= overrides or {}
    here = Path(path).resolve().parent
    if "storage" in data and not Path(data["storage"]).is_absolute():
        data["storage"] = str(here / data["storage"])
    research = data.get("research")
    if isinstance(research, dict):
        data["research"] = _absolute(research, ("folder", "key_file"), here)
    for part in ("listen", "destination"):
        section = data.get(part)
        if isinstance(section, dict) and isinstance(section.get("tls"), dict):
            files = ("certificate", "private_key", "trusted_certificates")
            data[part] = section | {"tls": _absolute(section["tls"], files, here)}
    try:
        config = PacsConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise UsageError(f"{where}: {first['msg']}", path=path, hint="See configs/pacs.example.yaml.") from exc
    check_research(config)
    check_tls(config)
    return config


def _absolute(section: dict[str, Any], keys: tuple[str, ...], here: Path) -> dict[str, Any]:
    """`section` with its path `keys` taken from the config file's folder when relative."""
    relative = [k for k in keys if section.get(k) is not None and not Path(section[k]).is_absolute()]
    return section | {k: str(here / section[k]) for k in relative}


def check_tls(config: PacsConfig) -> None:
    """Build both TLS contexts once at start: a missing file, a key that does not match its certificate or an expired
    certificate is a configuration error (exit 2), not a failure of every association later."""
    from medseg.pacs.tls import client_context, server_context

    if config.listen.tls is not None:
        server_context(config.listen.tls)
    if config.destination.tls is not None:
        client_context(config.destination.tls)


def check_research(config: PacsConfig) -> None:
    """Refuse at start, not at the first study, a research copy that could not be made: an unreadable or short key,
    or a folder that overlaps the service's storage (the copy would be received as input, or mix with it)."""
    from medseg.keys import read_secret

    if config.research is None:
        return
    read_secret(config.research.key_file)
    folder, storage = config.research.folder.resolve(), config.storage.resolve()
    if folder == storage or storage in folder.parents or folder in storage.parents:
        raise UsageError("research.folder overlaps the storage folder", path=config.research.folder,
                         hint="Give the research copy a folder of its own, outside storage.")  # fmt: skip
