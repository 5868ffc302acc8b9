"""What `medseg pacs status` shows: counts per state, and each open or bad job with its reason and age."""

from __future__ import annotations

import socket
import time
from typing import Any

from medseg.pacs.queue import JOB_STATES, JobQueue
from medseg.pacs.research import RESEARCH_STATES
from medseg.signals import process_alive

SHOWN = ("receiving", "queued", "running", "pending", "failed", "quarantined")


def holder_gone(owner: str | None) -> int | None:
    """The pid of a lease owner ('host:pid:tag') that ran on this host and no longer exists; None otherwise (another
    host's owner cannot be checked from here)."""
    host, _, rest = (owner or "").partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return None
    return None if process_alive(int(pid)) else int(pid)


def orphans(queue: JobQueue) -> dict[int, int]:
    """{job id: fence} of the running jobs whose holder on this host is gone (killed): nobody will finish them before
    their lease expires; `pacs retry` may queue them again."""
    return {j.id: j.fence for j in queue.jobs("running") if holder_gone(j.lease_owner) is not None}


def status(queue: JobQueue, now: float | None = None) -> dict[str, Any]:
    """Counts of studies receiving and jobs per state, plus the jobs and studies not yet done, with ages in seconds,
    the research copies published and withheld (with the reasons of those withheld), and what retention deleted."""
    now = time.time() if now is None else now
    studies = queue.studies()
    jobs = queue.jobs()
    counts = {"receiving": sum(s["state"] == "receiving" for s in studies)}
    counts |= {state: sum(j.state == state for j in jobs) for state in JOB_STATES}
    stored = queue.not_input_studies()
    counts["not_input"] = len(stored)
    receiving = [
        {"study": s["study_uid"], "instances": s["instances"], "age_s": round(now - float(s["first_at"]), 1),
         "completes_in_s": round(max(0.0, float(s["deadline"]) - now), 1)}
        for s in studies if s["state"] == "receiving"
    ]  # fmt: skip
    orphaned = orphans(queue)
    counts["orphaned"] = len(orphaned)
    rows = [
        {"job": j.id, "study": j.study_uid, "state": j.state, "attempts": j.attempts, "orphaned": j.id in orphaned,
         "reason": _orphan_reason(j.lease_owner) if j.id in orphaned else j.reason,
         "age_s": round(now - j.created_at, 1), "since_change_s": round(now - j.updated_at, 1),
         "retry_in_s": round(max(0.0, j.not_before - now), 1) if j.state in ("pending", "failed") else None}
        for j in jobs if j.state in SHOWN
    ]  # fmt: skip
    research = queue.research()
    copies = {state: sum(r["state"] == state for r in research) for state in RESEARCH_STATES}
    withheld = [{"job": r["job_id"], "reason": r["reason"]} for r in research if r["state"] == "withheld"]
    purges = queue.purges()
    last = round(now - max(float(p["at"]) for p in purges), 1) if purges else None  # type: ignore[arg-type]
    retention = {"studies_purged": len({p["study_uid"] for p in purges}), "last_purge_age_s": last}
    not_input = [{"study": s["study_uid"], "instances": s["instances"], "age_s": round(now - float(s["first_at"]), 1)}
                 for s in stored]  # fmt: skip
    counts["refused"], refused = _refused(queue, now)
    return {"counts": counts, "refused": refused, "receiving": receiving, "jobs": rows, "not_input": not_input,
            "sent": len(queue.ledger()), "research": copies | {"withheld_jobs": withheld},
            "retention": retention}  # fmt: skip


def _orphan_reason(owner: str | None) -> str:
    """Why a running job is shown as orphaned, and what to do."""
    return (f"orphaned: its holder (pid {holder_gone(owner)} on this host) is gone; `medseg pacs retry` queues it "
            "again now, a service start does too, otherwise its lease expires")  # fmt: skip


def _refused(queue: JobQueue, now: float) -> tuple[int, dict[str, Any]]:
    """The count of refused C-STOREs, and the last one's age, status (hex) and short reason."""
    row = queue.refusals()
    at = row["last_at"]
    if at is None:
        return 0, {"last_age_s": None, "last_status": None, "last_reason": None}
    last = {"last_age_s": round(now - float(at), 1), "last_status": f"{row['last_status']:04X}",  # type: ignore[arg-type]
            "last_reason": row["last_reason"]}  # fmt: skip
    return int(row["refused"]), last  # type: ignore[call-overload]
