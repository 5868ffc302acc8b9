"""`medseg pacs serve|status|retry|stop` (the PACS-adjacent service) and `medseg batch` (offline, same queue)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import typer

from medseg.cli.state import console

EXAMPLES = """
Examples:

  medseg pacs serve --config pacs.yaml

  medseg pacs status --config pacs.yaml --json

  medseg pacs retry 12 --config pacs.yaml

  medseg pacs retry --failed --config pacs.yaml

  medseg pacs stop --config pacs.yaml

  medseg pacs purge --config pacs.yaml --dry-run

See configs/pacs.example.yaml for every key and docs/pacs.md for how it behaves when things fail.
"""

BATCH_EXAMPLES = """
Examples:

  medseg batch studies/ --out results/

  medseg batch studies/ --out results/ --scheduler tcp://10.0.0.5:8786

  medseg batch studies/ --out results/ --research research/ --research-key deid.key

SEGs go to OUT/seg/<StudyInstanceUID>/. The queue (OUT/queue.db) knows each study by its StudyInstanceUID and
the digest of its files (not its folder name): a rerun finishes what is left, retries failed studies and changed
quarantined ones, and says which were done before. Ctrl-C hands the running study back; run again to finish.
With --research, each segmented study and its SEG are also de-identified (Annex E, as `medseg deid`), leak-checked
and published as RESEARCH/<new study UID>/ (a copy with a finding is withheld in OUT/research/withheld/).
"""

CONFIG = typer.Option(Path("pacs.yaml"), "--config", "-c", help="The service's YAML configuration.")


def register(app: typer.Typer) -> None:
    """Add the `pacs` command group and the `batch` command to the app."""
    pacs_app = typer.Typer(help="Receive studies over DICOM, segment them, send DICOM SEG back.", no_args_is_help=True)
    app.add_typer(pacs_app, name="pacs")

    @pacs_app.command("serve", epilog=EXAMPLES)
    def serve(
        config: Path = CONFIG,
        grace: float = typer.Option(30.0, "--grace", help="Seconds running jobs get to finish on stop."),
    ) -> None:
        """Run the C-STORE listener, the completion scheduler and the workers until stopped (SIGTERM / pacs stop)."""
        import os
        import signal
        import sys

        from medseg.cli.audited import audited
        from medseg.infer.pipeline import check_thread_setting
        from medseg.pacs.config import load_config
        from medseg.pacs.service import Service

        cfg = load_config(config)
        check_thread_setting()  # before a study is acknowledged, not as every job's failure afterwards
        with audited("pacs.serve", params={"config": config, "workers": cfg.workers}) as rec:
            rec.add_inputs([config])
            service = Service(cfg, on_event=console.info)
            signal.signal(signal.SIGTERM, lambda *_: service.stop.set())
            signal.signal(signal.SIGINT, lambda *_: service.stop.set())
            finished = service.run(grace)
            if not finished:
                rec.set_outcome_detail("leases_handed_back")
        if not finished:  # a worker thread is still inside native inference code: do not wait for it at exit
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

    @pacs_app.command("status", epilog=EXAMPLES)
    def status_cmd(
        config: Path = CONFIG,
        as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Studies receiving and jobs queued, running, pending, sent, failed and quarantined, with reasons and ages."""
        import json

        from medseg.pacs.config import load_config
        from medseg.pacs.service import read_pid
        from medseg.pacs.status import status

        cfg = load_config(config)
        report = status(_existing_queue(cfg)) | {"service_pid": read_pid(cfg.storage)}
        report["dispatch"] = _dispatch_state(cfg, report["service_pid"])
        if as_json:
            console.result(json.dumps(report, indent=2))
            return
        running = f"running (pid {report['service_pid']})" if report["service_pid"] else "not running"
        if report["dispatch"]["state"] == "down":
            running += f", dispatch: down since {report['dispatch']['down_since']} ({report['dispatch']['reason']})"
        console.result(f"service {running}; " + ", ".join(f"{n} {k}" for k, n in report["counts"].items()))
        refused = report["refused"]
        if report["counts"]["refused"]:
            console.result(f"  C-STOREs refused: {report['counts']['refused']}, the last {refused['last_age_s']} s "
                           f"ago: {refused['last_status']} ({refused['last_reason']})")  # fmt: skip
        for s in report["receiving"]:
            left = s['completes_in_s']
            console.result(f"  receiving {s['study']}: {s['instances']} instance(s), completes in {left} s")
        for s in report["not_input"]:
            console.result(f"  stored {s['study']}: {s['instances']} instance(s), no image input (no job)")
        for j in report["jobs"]:
            why = f": {j['reason']}" if j["reason"] else ""
            state = f"{j['state']}, orphaned" if j["orphaned"] else j["state"]
            console.result(f"  job {j['job']} {state} (attempts {j['attempts']}, age {j['age_s']} s){why}")
        copies = report["research"]
        if cfg.research is not None or copies["published"] or copies["withheld"]:
            console.result(f"research copies: {copies['published']} published, {copies['withheld']} withheld")
        for w in copies["withheld_jobs"]:
            console.result(f"  job {w['job']} research copy withheld: {w['reason']}")
        kept = report["retention"]
        if cfg.retention.keep_days is not None or kept["studies_purged"]:
            console.result(f"retention: keep {cfg.retention.keep_days} days; {kept['studies_purged']} stud(y/ies) "
                           f"purged, the last {kept['last_purge_age_s']} s ago")

    @pacs_app.command("retry", epilog=EXAMPLES)
    def retry(
        job: int | None = typer.Argument(None, help="Job id (see `medseg pacs status`)."),
        failed: bool = typer.Option(False, "--failed", help="Retry every failed job."),
        config: Path = CONFIG,
    ) -> None:
        """Queue a failed, pending, quarantined or orphaned job again now (or every failed job)."""
        from medseg.cli.audited import audited
        from medseg.errors import UsageError
        from medseg.pacs.config import load_config
        from medseg.pacs.status import orphans

        if (job is None) == (not failed):
            raise UsageError("name one JOB or pass --failed", hint="See `medseg pacs retry --help`.")
        cfg = load_config(config)
        queue = _existing_queue(cfg)
        with audited("pacs.retry", params={"job": job, "failed": failed}) as rec:
            ids = queue.retry(job, failed, orphans(queue))
            if job is not None and not ids:  # inside the audited block: the record says the command failed
                _not_retried(queue, job)
            rec.set_outcome_detail(f"requeued:{len(ids)}")
        console.result(f"queued again: {', '.join(map(str, ids)) or 'nothing'}")

    @pacs_app.command("purge", epilog=EXAMPLES)
    def purge(
        config: Path = CONFIG,
        dry_run: bool = typer.Option(False, "--dry-run", help="List what would be deleted; delete nothing."),
    ) -> None:
        """Delete the received studies and results that `retention.keep_days` has expired (the running service does
        this by itself every `retention.check_interval_s`)."""
        from medseg.cli.audited import audited
        from medseg.errors import UsageError
        from medseg.pacs.config import load_config
        from medseg.pacs.retention import purge_expired
        from medseg.pacs.service import read_pid, service_lock

        cfg = load_config(config)
        if cfg.retention.keep_days is None:
            raise UsageError("retention.keep_days is not set: nothing expires", path=config,
                             hint="Set retention.keep_days in the config (see configs/pacs.example.yaml).")  # fmt: skip
        queue = _existing_queue(cfg)
        pid = read_pid(cfg.storage)
        if pid is not None and not dry_run:
            raise UsageError(f"the service (pid {pid}) runs on this storage and purges by itself", path=cfg.storage,
                             hint="Let it, or stop it first (`medseg pacs stop`).")  # fmt: skip
        with audited("pacs.purge", params={"dry_run": dry_run, "keep_days": cfg.retention.keep_days}) as rec, \
                contextlib.nullcontext() if dry_run else service_lock(cfg.storage):  # no service starts meanwhile
            purged = purge_expired(cfg, queue, dry_run=dry_run)
            n = sum(p.instances for p in purged)
            rec.set_outcome_detail(f"{'would_purge' if dry_run else 'purged'}:{len(purged)}:{n}")
        verb = "would delete" if dry_run else "deleted"
        for p in purged:
            console.result(f"  {verb} study {p.study_uid}: {p.instances} instance(s), {p.folders} folder(s)"
                           + (f": {', '.join(p.paths)}" if p.paths else ""))  # fmt: skip
        console.result(f"{verb} the files of {len(purged)} stud{'y' if len(purged) == 1 else 'ies'} ({n} instances) "
                       f"settled over {cfg.retention.keep_days} days ago")

    @pacs_app.command("stop", epilog=EXAMPLES)
    def stop(
        config: Path = CONFIG,
        wait: float = typer.Option(60.0, "--wait", help="Seconds to wait for the service to exit."),
    ) -> None:
        """Stop the service gracefully: no new associations, running jobs finish or are handed back."""
        import os
        import signal
        import time

        from medseg.errors import ProcessingError, UsageError
        from medseg.pacs.config import load_config
        from medseg.pacs.service import read_pid

        cfg = load_config(config)
        _existing_queue(cfg).close()
        pid = read_pid(cfg.storage)
        if pid is None:
            raise UsageError("no service is running on this storage", path=cfg.storage)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            console.result(f"stopped (pid {pid} had already exited)")
            return
        deadline = time.monotonic() + wait
        while read_pid(cfg.storage) == pid and time.monotonic() < deadline:
            time.sleep(0.2)
        if read_pid(cfg.storage) == pid:
            raise ProcessingError(f"service pid {pid} still running after {wait:.0f} s", hint="Wait, or kill it.")
        console.result(f"stopped (pid {pid})")

    @app.command("batch", epilog=BATCH_EXAMPLES)
    def batch(
        input: Path = typer.Argument(..., help="Folder of DICOM studies."),
        out: Path = typer.Option(..., "--out", "-o", help="Results folder (also holds the queue)."),
        organ: str = typer.Option("liver", "--organ", help="Organ(s), e.g. liver,spleen: one SEG segment each."),
        model: str | None = typer.Option(None, "--model", help="Installed model name or model folder."),
        backend: str = typer.Option("auto", "--backend"),
        scheduler: str | None = typer.Option(None, "--scheduler", help="Dask scheduler address, tcp://HOST:PORT."),
        research: Path | None = typer.Option(None, "--research", help="Also publish de-identified copies here."),
        research_key: Path | None = typer.Option(None, "--research-key", help="Secret for --research (`medseg keys "
                                                 "secret FILE`); the same key gives the same pseudonyms."),
        research_option: list[str] = typer.Option([], "--research-option", help="Annex E option for --research."),
    ) -> None:
        """Segment many studies offline through the durable queue (locally or on a Dask cluster)."""
        from medseg.cli.audited import audited
        from medseg.pacs.batch import batch_config, check_out, enqueue_studies, run_batch
        from medseg.pacs.segment import served_model

        cfg = batch_config(out, organ, model, backend, scheduler, research, research_key, research_option)
        served_model(cfg.organs, cfg.model)  # before any study is read or queued
        params = {"organ": organ, "model": model, "scheduler": scheduler, "research": research is not None}
        with audited("batch", params=params) as rec:  # SIGTERM is Ctrl-C for every command (cli.main)
            check_out(cfg.storage)
            rec.add_inputs([input])
            queue, studies = enqueue_studies(cfg, input, console.warn)
            _tell_known(studies)
            _record_outputs(rec, queue, run_batch(cfg, queue, console.info))
            _summarize(queue, studies, rec)


def _existing_queue(cfg: Any) -> Any:
    """The service's job queue, opened only when STORAGE/queue.db exists: status, retry, stop and purge on a storage
    path that is wrong (a typo, a folder not mounted) must say so, not create an empty queue there and report a
    healthy idle service (review 18). UsageError (exit 2) naming the folder otherwise."""
    from medseg.errors import UsageError
    from medseg.pacs.queue import JobQueue

    if not cfg.queue_path.is_file():
        raise UsageError("no job queue (queue.db) in this storage folder", path=cfg.storage,
                         hint="Check `storage` in the config (is the disk mounted?); `medseg pacs serve` creates the "
                         "queue when it first starts.")  # fmt: skip
    return JobQueue(cfg.queue_path)


def _not_retried(queue: Any, job: int) -> None:
    """UsageError (exit 2) for a job `pacs retry` cannot queue again: 'no such job', or the state it is in."""
    from medseg.errors import UsageError

    found = queue.job(job)
    if found is None:
        raise UsageError(f"no such job: {job}", hint="See `medseg pacs status` for the job ids.")
    raise UsageError(f"job {job} is {found.state}: only a failed, pending, quarantined or orphaned job is queued again",
                     hint="See `medseg pacs status`.")  # fmt: skip


def _dispatch_state(cfg: Any, pid: int | None) -> dict[str, Any]:
    """How the running service hands jobs out: {'state': 'threads'|'up'|'down'|'stopped', ...}; 'down' (with since
    when, UTC, and why) while its Dask scheduler is lost, so status never shows a healthy service that cannot
    segment what it acknowledges (review 19)."""
    from datetime import UTC, datetime

    from medseg.pacs.dask_workers import dispatch_down

    if pid is None:
        return {"state": "stopped"}
    if not cfg.scheduler:
        return {"state": "threads"}
    down = dispatch_down(cfg.storage)
    if down is None:
        return {"state": "up", "scheduler": cfg.scheduler}
    since = datetime.fromtimestamp(float(down.get("down_since", 0)), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"state": "down", "scheduler": cfg.scheduler, "down_since": since, "reason": str(down.get("reason", ""))}


def _record_outputs(rec: Any, queue: Any, results: list[Any]) -> None:
    """The files the batch's jobs wrote (the SEGs), wherever they ran (on Dask too: a worker's own audit record may
    be in another host's trail, review 19) as the `batch` record's outputs, with the model that made them when one
    model made them all."""
    rec.add_outputs([p for r in results for p in r.outputs])
    makers = {tuple(m) for r in results if r.outputs and (m := queue.seg_model(r.job_id))}
    if len(makers) == 1:
        rec.set_model(*makers.pop())


def _tell_known(studies: list[Any]) -> None:
    """One line for each study of the input the queue already knew: done, quarantined, retried, or a copy."""
    for s in studies:
        if s.same_as is not None:
            console.info(f"study {s.name}: the same files as {s.same_as} (job {s.job_id}), segmented once")
        elif s.how == "done":
            made = f": {s.made_with}" if s.made_with else ""
            console.info(f"study {s.name}: segmented in an earlier run (job {s.job_id}{made}), not run again")
        elif s.how == "quarantined":
            console.info(f"study {s.name}: quarantined in an earlier run and its files have not changed "
                         f"(job {s.job_id}), not run again")  # fmt: skip
        elif s.how == "retried":
            console.info(f"study {s.name}: failed in an earlier run (job {s.job_id}), tried again")


def _summarize(queue: Any, studies: list[Any], rec: Any) -> None:
    """The run's closing lines: this input's studies by state, each one not sent with its reason; ProcessingError
    (exit 4) when any is not sent."""
    from medseg.errors import ProcessingError

    jobs = [queue.job(i) for i in dict.fromkeys(s.job_id for s in studies)]
    counts = {k: sum(j.state == k for j in jobs) for k in ("sent", "quarantined", "failed")}
    for j in jobs:
        if j.state != "sent":
            console.warn(f"job {j.id} ({j.input}): {j.state}: {j.reason}")
    earlier = sum(s.how == "done" and s.same_as is None for s in studies)
    console.result(", ".join(f"{n} {k}" for k, n in counts.items()) + f" of {len(jobs)} studies"
                   + (f" ({earlier} done in an earlier run)" if earlier else ""))  # fmt: skip
    for r in queue.research():
        if r["state"] == "withheld" and r["job_id"] in {j.id for j in jobs}:
            console.warn(f"job {r['job_id']}: research copy {r['state']}: {r['reason']}")
    if counts["sent"] != len(jobs):
        rec.set_outcome_detail("not_all_sent")
        raise ProcessingError(f"{len(jobs) - counts['sent']} of {len(jobs)} studies not completed",
                              hint="Each one's state and reason are listed above. `medseg batch` again retries the "
                              "failed ones, and a quarantined study once its files changed.")  # fmt: skip
