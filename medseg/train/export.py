"""Turn a training run into an installable model folder: `model_card.yaml` + `weights.pt` with its SHA-256.

`python -m medseg.train.export RUN_DIR DEST [--metrics metrics.json] [--overwrite]` writes the folder; the card
records the training config, the manifests' digests, the data sources and licences, and the measured metrics.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from medseg.errors import InvalidInputError, UsageError
from medseg.models.card import ConfidenceCalibration, ModelCard, WeightsSpec
from medseg.models.registry import CARD_NAME, sha256_file
from medseg.train.config import TrainConfig
from medseg.train.manifest import Manifest
from medseg.yamltext import load_yaml

CARD_TEXT = Path(__file__).with_name("card_text.yaml")


class CardText(BaseModel):
    """The human-written part of a model card (per organ, from card_text.yaml)."""

    model_config = ConfigDict(extra="forbid")
    intended_use: str
    limitations: list[str]
    volume_range_ml: tuple[float, float] | None = None


def card_text(organ: str, model: str | None = None, version: str | None = None) -> CardText:
    """The card text written for `model version` or else `model` in card_text.yaml; a model without its own text
    gets `unassessed_text` (never another model's intended use and limitations)."""
    texts = load_yaml(CARD_TEXT.read_text())
    key = next((k for k in (f"{model} {version}", model) if k in texts), None)
    if key is None:
        return unassessed_text(organ, model or "unnamed", version or "unversioned")
    return CardText.model_validate(texts[key])


def unassessed_text(organ: str, model: str, version: str) -> CardText:
    """Card text for a newly trained model nobody has written text for: it claims nothing that was not assessed."""
    return CardText(
        intended_use=f"Research model {model} {version} ({organ} segmentation in CT) produced by `medseg train`. "
        "Not assessed for any clinical use: no intended use has been written for it.",
        limitations=[
            "No limitations have been assessed for this model: its behaviour on scanners, contrast phases, "
            "pathologies and patient groups is unknown. Write its text in medseg/train/card_text.yaml before use.",
            "Selected on the validation split of its training manifest only; not evaluated on a locked test set "
            "unless the card's metrics say so.",
        ],
    )


def sources_of(manifest: Manifest) -> list[dict[str, Any]]:
    """Per source: number of cases by split, licence and label type (for the card)."""
    out: dict[str, dict[str, Any]] = {}
    for e in manifest.entries:
        d = out.setdefault(e.source, {"source": e.source, "licence": e.licence, "label_type": e.label_type,
                                      "kind": e.kind, "cases": {}})  # fmt: skip
        d["cases"][e.split] = d["cases"].get(e.split, 0) + 1
    return list(out.values())


def build_card(cfg: TrainConfig, weights_sha256: str, training: dict[str, Any], metrics: dict[str, Any],
               roi_size: tuple[int, int, int] = (96, 96, 96),
               confidence: ConfidenceCalibration | None = None) -> ModelCard:  # fmt: skip
    """The model card for weights trained with `cfg` (roi_size: the inference sliding-window size)."""
    text = card_text(cfg.organ, cfg.name, cfg.version)
    return ModelCard(
        name=cfg.name, version=cfg.version, organ=cfg.organ, labels=cfg.labels, modality="CT",
        intended_use=text.intended_use, limitations=text.limitations, spacing=cfg.spacing, intensity=cfg.intensity,
        roi_size=roi_size, network=cfg.network,
        weights=WeightsSpec(file="weights.pt", sha256=weights_sha256, storage="float16"),
        volume_range_ml=text.volume_range_ml, training=training, metrics=metrics, confidence=confidence,
    )  # fmt: skip


def card_config(cfg: TrainConfig, summary: dict[str, Any]) -> dict[str, Any]:
    """The config as the card shows it: `data.manifest` and `init_weights` as the references summary.json records
    (repository path, else `sha256:<digest>`), never a local path; an older run's path outside the repository is
    named not recorded."""
    config = cfg.model_dump(mode="json")
    config["data"]["manifest"] = summary.get("manifest_file") or summary.get("manifest")
    if cfg.init_weights:
        local = Path(cfg.init_weights).is_absolute() or ".." in Path(cfg.init_weights).parts
        config["init_weights"] = summary.get("init_weights") or ("not recorded" if local else cfg.init_weights)
    return config


def training_record(run_dir: Path) -> tuple[TrainConfig, dict[str, Any]]:
    """Config and the training section of the card, read back from a finished run folder."""
    from medseg.train.manifest import load_manifest

    try:
        raw = (run_dir / "config.yaml").read_bytes()
        cfg = TrainConfig.model_validate(load_yaml(raw))
        summary = json.loads((run_dir / "summary.json").read_text())
        run = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"not a finished training run: {exc}".splitlines()[0], path=run_dir) from exc
    manifest, man_sha = load_manifest(run_dir / "manifest.json")
    check_validation_log(run_dir, summary)
    if hashlib.sha256(raw).hexdigest() != summary["config_sha256"] or man_sha != summary["manifest_sha256"]:
        raise InvalidInputError("config.yaml or manifest.json is not the one the run's summary.json records",
                                path=run_dir, hint="The folder was changed after training; export another run.")
    record = {
        "config": card_config(cfg, summary),
        "config_sha256": summary["config_sha256"],
        "manifest": {"name": manifest.name, "file": summary.get("manifest_file") or summary.get("manifest"),
                     "sha256": man_sha},
        "data_sources": sources_of(manifest),
        "iterations": summary["iterations"],
        "training_minutes": round(summary["elapsed_s"] / 60, 1),
        "stopped_by": summary["stopped_by"],
        "best_iteration": summary["best_iteration"],
        "best_validation_score": round(summary["best_score"], 4),
        "git_commit": summary.get("git_commit"),
        "git_dirty": summary.get("git_dirty", "not recorded"),
        "segments": [{**{k: s.get(k) for k in ("started", "from_iteration", "git_commit", "git_dirty", "hardware")},
                      **({"run_length": s["run_length"]} if "run_length" in s else {})}
                     for s in summary.get("segments", [])],
        "packages": {k: v for k, v in (summary.get("packages") or {}).items() if k in ("torch", "monai", "numpy")}
        or "not recorded",
        "mlflow_run_id": run.get("mlflow_run_id"),
        "hardware": summary.get("hardware", "not recorded"),
        "best_weights_sha256": summary.get("best_weights_sha256"),
        **{k: summary[k] for k in ("init_weights", "init_weights_sha256") if k in summary},
    }
    return cfg, record


def check_validation_log(run_dir: Path, summary: dict[str, Any]) -> None:
    """metrics.jsonl's validation score at the best iteration must be summary.json's best_score: the card's
    per-case Dice at the best checkpoint comes from that log, so a log that disagrees with the summary was changed
    (or belongs to another run) and is refused (exit 3)."""
    path = run_dir / "metrics.jsonl"
    try:
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        at_best = [r for r in records if r.get("iteration") == summary["best_iteration"]]
        differs = any(abs(float(r["val_score"]) - float(summary["best_score"])) > 1e-9 for r in at_best)
    except FileNotFoundError:
        return
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidInputError(f"not a validation log: {exc}".splitlines()[0], path=path) from exc
    if differs:
        raise InvalidInputError(f"the validation score at the best iteration ({summary['best_iteration']}) is not "
                                "summary.json's best_score; changed after training, not exported", path=path,
                                hint="Export an unchanged run.")  # fmt: skip


def evidence_digests(run_dir: Path, bench: dict[str, str] | None = None) -> dict[str, str | None]:
    """SHA-256 of every file the card's figures come from (the run's summary.json, metrics.jsonl and run.json, and
    the bench files by option), so that a card can be traced to the exact evidence it was written from."""
    run = {name: sha256_file(run_dir / name) if (run_dir / name).is_file() else None
           for name in ("summary.json", "metrics.jsonl", "run.json")}  # fmt: skip
    return {**run, **(bench or {})}


NOT_AUDITED = "not in this machine's audit trail (not trained by `medseg train` here, or the run folder was moved)"
RUN_FILES = ("summary.json", "best_weights.pt", "metrics.jsonl", "run.json")  # what `medseg train` records as outputs
ALWAYS_RECORDED = ("summary.json", "best_weights.pt")  # records before metrics.jsonl and run.json were added hold these


def audit_record_of(run_dir: Path, best_weights_sha256: str | None) -> dict[str, Any] | str:
    """The audit trail's newest `train` record whose outputs list this run's summary.json: the card points at it
    (store, sequence number, hash). A run file (summary.json, best_weights.pt, metrics.jsonl, run.json) that differs
    from what that record holds was changed after training (e.g. both edited to swap the weights, or the validation
    log's Dice raised) and is refused (exit 3). No record: said so. A damaged store is an AuditError (exit 4)."""
    from medseg.audit.config import load_config
    from medseg.audit.store import AuditStore
    from medseg.errors import AuditError, IntegrityError

    config = load_config()
    if not config.db_path.is_file():
        return "no audit trail on this machine (MEDSEG_AUDIT_DIR)"
    try:
        with AuditStore.open(config, create=False) as store:
            last, refs = _newest_train_record(store, run_dir)
            store_id = store.store_id
    except IntegrityError as exc:
        raise AuditError(f"the audit trail cannot be read: {exc.message}", path=config.audit_dir,
                         hint="Run `medseg audit verify`; export once the trail is intact.") from exc  # fmt: skip
    if last is None:
        return NOT_AUDITED
    recorded = {o.get("ref"): o.get("sha256") for o in last.body.get("outputs") or []}
    now = {name: sha256_file(run_dir / name) if (run_dir / name).is_file() else None for name in RUN_FILES}
    now["best_weights.pt"] = best_weights_sha256
    for name, digest in now.items():
        if (name in ALWAYS_RECORDED or refs[name] in recorded) and recorded.get(refs[name]) != digest:
            raise InvalidInputError(f"{name} is not the file the audit trail recorded when this run trained (record "
                                    f"{last.seq}); changed after training, not exported", path=run_dir / name,
                                    hint="Export an unchanged run; `medseg audit show` lists its record.")
    return {"store_id": store_id, "seq": last.seq, "hash": last.hash}


def _newest_train_record(store: Any, run_dir: Path) -> tuple[Any, dict[str, str]]:
    """The newest `train` record listing the run's summary.json among its outputs, and the keyed references of the
    run files it was found under: the resolved folder first (what `medseg train` records, so a symlink or another
    spelling of the folder finds the same record), then the folder as given (records of older versions)."""
    from medseg.audit.digest import path_ref
    from medseg.audit.query import RecordFilter, query_records

    refs: dict[str, str] = {}
    for folder in dict.fromkeys((run_dir.resolve(), run_dir)):
        refs = {name: path_ref(folder / name, store.path_key) for name in RUN_FILES}
        found = [r for r in query_records(store, RecordFilter(command="train", touching=(refs["summary.json"],)))
                 if any(o.get("ref") == refs["summary.json"] for o in r.body.get("outputs") or [])]
        if found:
            return found[-1], refs
    return None, refs


def run_weights_bytes(src: Path, recorded: str | None) -> bytes:
    """The bytes of `src`, read once, when their SHA-256 is the best-weights digest the run's summary.json records:
    only the weights the run selected may be shipped under its training record (a swapped best_weights.pt or any
    other --weights file is refused, exit 3)."""
    if not src.is_file():
        raise InvalidInputError("best weights missing", path=src)
    data = src.read_bytes()
    if recorded is None:
        raise InvalidInputError("the run's summary.json records no best_weights_sha256 (a run from before weights "
                                "digests were recorded): its weights cannot be tied to the run", path=src,
                                hint="Export a run trained with this version of medseg train.")  # fmt: skip
    if hashlib.sha256(data).hexdigest() != recorded:
        raise InvalidInputError("weights are not the run's best weights (SHA-256 differs from best_weights_sha256 "
                                "in its summary.json); not exported", path=src,
                                hint="Export the run's own best_weights.pt, unchanged.")  # fmt: skip
    return data


def save_half_precision(src: Path, dest: Path, data: bytes | None = None) -> None:
    """Store the floating-point weights as float16 (half the size; loading casts them back to the float32 network);
    `data`: the bytes of `src` already read and checked."""
    import torch

    from medseg.train.checkpoint import first_non_finite, read_torch_file

    state = read_torch_file(src, "weights", "Export the best_weights.pt a training run wrote.", data)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidInputError("not a weights file (a state_dict of names and tensors)", path=src,
                                hint="Export the best_weights.pt a training run wrote.")  # fmt: skip
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    bad = first_non_finite(state) or first_non_finite(half)
    if bad:
        raise InvalidInputError(f"weights are not finite in float16 ({bad}); not exported", path=src,
                                hint="A diverged training; export the weights of a run that trained correctly.")
    torch.save(half, dest)


def check_evidence(evidence: dict[str, tuple[Path, str | None]], exported_sha256: str) -> None:
    """Each evidence file (option -> its path and the weights SHA-256 it records) must have been measured on the
    weights being exported: a card must not carry another model's accuracy or confidence figures (exit 3)."""
    for option, (path, measured) in evidence.items():
        if measured is None:
            raise InvalidInputError(f"{option}: the file records no weights_sha256, so its figures cannot be tied to "
                                    "the exported weights; not exported", path=path,
                                    hint="Measure the exported candidate again with this version's bench script.")
        if measured != exported_sha256:
            raise InvalidInputError(f"{option}: measured on other weights (SHA-256 {measured[:12]}...) than the ones "
                                    f"exported ({exported_sha256[:12]}...); not exported", path=path,
                                    hint="Measure this run's exported candidate, then export with that file.")


def export_model(run_dir: Path, dest: Path, metrics: dict[str, Any], overwrite: bool = False,
                 weights: Path | None = None, confidence: ConfidenceCalibration | None = None,
                 evidence: dict[str, tuple[Path, str | None]] | None = None,
                 bench_sha256: dict[str, str] | None = None) -> ModelCard:  # fmt: skip
    """Copy the run's best weights into `dest` and write the validated card next to them; `evidence` (option ->
    file, weights digest it records) is checked against the exported weights first; `bench_sha256` (option -> the
    SHA-256 of the file as read) goes on the card with the run files' digests (`training.evidence_sha256`)."""
    from medseg.io.atomic import atomic_write_text

    cfg, record = training_record(run_dir)
    src = weights or run_dir / "best_weights.pt"
    data = run_weights_bytes(src, record.get("best_weights_sha256"))
    record["audit_record"] = audit_record_of(run_dir, record.get("best_weights_sha256"))
    record["evidence_sha256"] = evidence_digests(run_dir, bench_sha256)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise UsageError("the destination is not a folder", path=dest,
                         hint="Give a new or existing model folder as DEST.") from exc
    target = dest / "weights.pt"
    if target.exists() and not overwrite:
        raise UsageError("model folder already has weights", path=target, hint="Pass --overwrite.")
    tmp = dest / ".weights.pt.tmp"
    try:  # the card is built and checked before anything in dest changes: a refused export leaves the model as it was
        save_half_precision(src, tmp, data)
        exported = sha256_file(tmp)
        check_evidence(evidence or {}, exported)
        card = build_card(cfg, exported, record, metrics, confidence=confidence)
        text = card.dump()
    except ValidationError as exc:
        tmp.unlink(missing_ok=True)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": str(exc)}
        where = ".".join(str(part) for part in first.get("loc", ())) or "card"
        raise InvalidInputError(f"the model card would not be valid: {where}: {first.get('msg')}", path=dest,
                                hint="Check the --metrics / --accuracy / --organs files.") from exc  # fmt: skip
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(target)
    atomic_write_text(dest / CARD_NAME, text, overwrite=True)
    return card


def card_metrics(run_dir: Path, accuracy: dict[str, Any]) -> dict[str, Any]:
    """The card's metrics from `bench/bench_train.py accuracy` output and the run's validation log."""
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    at_best = next((r["cases"] for r in records if r["iteration"] == summary["best_iteration"]), [])
    extra = {"trained_on_real_ct": accuracy["trained_on"]} if accuracy.get("trained_on") else {}
    return {
        "locked_test_real_ct": accuracy.get("locked_test") or accuracy["liver_test_locked"],
        "validation_real_ct_model_label": accuracy.get("validation") or accuracy["liver_v1"],
        **extra,
        "checkpoint_selection": {
            "score": "0.5 * Dice(real validation CT) + 0.5 * mean Dice(fixed-seed synthetic validation volumes), "
            "at model spacing without post-processing",
            "best_iteration": summary["best_iteration"],
            "cases_at_best": at_best,
        },
        "target": "liver Dice >= 0.90 on real CT (goal 0.95)",
    }


ORGAN_MIN_DICE = 0.80


def organ_metrics(confidence_bench: dict[str, Any], main_organ: str) -> dict[str, Any]:
    """`metrics.organs` from `bench/bench_confidence.py --synthetic-organs --totalseg-organs` output: an organ other
    than the main one gets validation figures (and so may be served) only if its mean Dice on the validation label
    maps rendered as CT reaches ORGAN_MIN_DICE and the one real CT with its label, the TotalSegmentator example
    (model-made labels, reported beside it as such), does not contradict it: a real Dice under ORGAN_MIN_DICE
    refuses the organ (seen with the kidney: 0.86 synthetic, 0.46 real, the paraspinal muscles called kidney)."""
    synth = confidence_bench.get("synthetic_organ_dice") or {}
    totalseg = confidence_bench.get("totalseg_organ_dice_model_labels") or {}
    out: dict[str, Any] = {}
    for name, dice in (synth.get("mean_dice") or {}).items():
        real = totalseg.get(name)
        if name == main_organ or dice < ORGAN_MIN_DICE or (real is not None and real < ORGAN_MIN_DICE):
            continue
        out[name] = {
            "mean_dice": dice,
            "evaluation": f"validation label maps of {synth['manifest']} rendered as synthetic CT (fixed seed), "
            "medseg.infer.predict_labels; not real CT",
            "cases": {case: d[name] for case, d in synth["cases"].items() if name in d},
            "totalseg_example_dice_vs_model_labels": totalseg.get(name),
        }
    return out


def confidence_limit(bench: dict[str, Any]) -> ConfidenceCalibration:
    """The card's `low_confidence` limit from `bench/bench_confidence.py --out` (chosen on its synthetic side only)."""
    if not bench.get("threshold"):
        raise InvalidInputError("the confidence bench chose no threshold", hint="Run it with synthetic seeds > 0.")
    n = len(bench.get("synthetic") or [])
    return ConfidenceCalibration(
        max_uncertain_fraction=round(float(bench["threshold"]), 4),
        chosen_on=f"bench/bench_confidence.py: least-squares line of liver Dice against uncertain_fraction on {n} "
        "synthetic validation volumes (fixed seeds, degraded), where it predicts Dice 0.915; no real CT used",
    )


def main(argv: list[str] | None = None) -> None:
    """`python -m medseg.train.export RUN_DIR DEST [--accuracy bench.json | --metrics FILE.json] [--overwrite]`."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("dest", type=Path)
    unchecked = "JSON written as the card's metrics as is, NOT checked against any bench output; prefer --accuracy"
    ap.add_argument("--metrics", type=Path, default=None, help=unchecked)
    ap.add_argument("--accuracy", type=Path, default=None, help="output of bench/bench_train.py accuracy --out")
    ap.add_argument("--organs", type=Path, default=None, help="bench/bench_confidence.py --out with organ Dice")
    ap.add_argument("--confidence", type=Path, default=None, help="bench/bench_confidence.py --out: the limit")
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args(argv)
    cfg, _ = training_record(a.run_dir)
    metrics = read_json_option(a.metrics, "--metrics") if a.metrics else {}
    files = {"--accuracy": a.accuracy, "--organs": a.organs, "--confidence": a.confidence}
    read = {option: read_json_option(path, option) for option, path in files.items() if path}
    bench_sha256 = {option: sha256_file(path) for option, path in (files | {"--metrics": a.metrics}).items() if path}
    evidence = {option: (files[option], content.get("weights_sha256") if isinstance(content, dict) else None)
                for option, content in read.items()}  # fmt: skip
    if a.accuracy:
        metrics = from_bench(files["--accuracy"], lambda: card_metrics(a.run_dir, read["--accuracy"]))
    if a.organs:
        metrics["organs"] = from_bench(files["--organs"], lambda: organ_metrics(read["--organs"], cfg.organ))
    limit = from_bench(files["--confidence"], lambda: confidence_limit(read["--confidence"])) if a.confidence else None
    inputs = [a.run_dir / name for name in (*RUN_FILES, "config.yaml", "manifest.json")]
    inputs += [p for p in (*files.values(), a.metrics, a.weights) if p]
    audited_export(inputs, a.dest, {"run_dir": a.run_dir, "dest": a.dest, "overwrite": a.overwrite},
                   lambda: export_model(a.run_dir, a.dest, metrics, a.overwrite, a.weights, limit, evidence,
                                        bench_sha256))  # fmt: skip


def audited_export(inputs: list[Path], dest: Path, params: dict[str, Any], work: Any) -> None:
    """Run `work` (the export) under a `model-export` audit record: the run files and bench files read as inputs,
    weights.pt and model_card.yaml as outputs, so that every model folder written can be traced in the trail."""
    from medseg.audit.command import audited

    outputs = [dest / "weights.pt", dest / CARD_NAME]
    with audited("model-export", params=params) as rec:
        rec.add_inputs([p for p in inputs if p.exists()])
        rec.will_write(outputs)
        work()
        rec.add_outputs(outputs)


def from_bench(path: Path, build: Any) -> Any:
    """`build()`, with a bench output that lacks an expected field refused in one line naming the file (exit 3)."""
    try:
        return build()
    except (KeyError, TypeError, AttributeError) as exc:
        raise InvalidInputError(f"not the bench output expected here: missing or malformed field {exc}", path=path,
                                hint="Give the --out file of the bench script the option's --help names.") from exc


def read_json_option(path: Path, option: str) -> Any:
    """The JSON file given to `option`; unreadable or not JSON is one InvalidInputError naming it (exit 3)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{option}: cannot read a JSON file: {exc}".splitlines()[0], path=path) from exc


if __name__ == "__main__":
    from medseg.train.entry import run_entry

    raise SystemExit(run_entry(main))
