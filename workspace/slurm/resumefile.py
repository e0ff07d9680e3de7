"""SLURM_RESUME_FILE: the job -> nodes mapping slurmctld writes for its ResumeProgram.

Slurm 22.05 (``src/slurmctld/power_save.c``) writes JSON like::

    {
      "all_nodes_resume": "cloud[1-3,7-8]",
      "jobs": [
        {"extra": null, "features": "c1,c2", "job_id": 140814,
         "nodes_alloc": "cloud[1-4]", "nodes_resume": "cloud[1-3]",
         "oversubscribe": "OK", "partition": "cloud", "reservation": null},
        ...
      ]
    }

``features`` is the job's constraint expression (``--constraint``, e.g.
``bigmem&ib`` or ``[rack1|rack2]``), ``nodes_resume`` the job's nodes being powered up
now. Debian 12's Slurm 22.05.8 writes less, under older names (seen here)::

    {"jobs":[{"job_id":1,"nodes":"c[1-2]"},{"job_id":2,"nodes":"b[1-2]"}],
     "all_nodes":"b[1-2],c[1-2]"}

so both spellings are read and every other key is optional (without ``features`` the
nodes' own features, from ``scontrol show node``, choose the mapping rule). The file is
temporary (``/proc/<slurmctld>/fd/N``, gone when slurmctld stops): it is read first
thing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from workspace.slurm.hostlist import HostlistError, expand

RESUME_FILE_ENV = "SLURM_RESUME_FILE"
JOB_ID_ENV = "SLURM_JOB_ID"


class ResumeFileError(ValueError):
    """The resume file is not what Slurm writes."""


@dataclass(frozen=True)
class Job:
    job_id: int
    nodes: Sequence[str]  # the nodes of this job being resumed
    features: frozenset[str] = frozenset()
    extra: str = ""
    partition: str = ""


@dataclass(frozen=True)
class ResumeFile:
    all_nodes: Sequence[str] = ()
    jobs: Sequence[Job] = field(default_factory=tuple)


def feature_names(expr: str | None) -> frozenset[str]:
    """The feature names in a constraint expression: ``a&b|[c*2]`` -> {a, b, c}."""
    if not expr:
        return frozenset()
    words = re.split(r"[&|,()\[\]\s]+|\*\d+", expr)
    return frozenset(w for w in words if w and not w.isdigit())


def _hosts(value: object, where: str) -> list[str]:
    if value is None or value == "":
        return []
    if not isinstance(value, str):
        raise ResumeFileError(f"{where} is not a hostlist string")
    try:
        return expand(value)
    except HostlistError as exc:
        raise ResumeFileError(f"{where}: {exc}") from None


def parse(text: str) -> ResumeFile:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ResumeFileError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ResumeFileError("not a JSON object")
    all_nodes = _hosts(data.get("all_nodes_resume", data.get("all_nodes")), "all_nodes_resume")
    raw_jobs = data.get("jobs")
    if raw_jobs is None:
        raw_jobs = []
    if not isinstance(raw_jobs, list):
        raise ResumeFileError("jobs is not a list")
    jobs: list[Job] = []
    for i, raw in enumerate(raw_jobs):
        if not isinstance(raw, dict):
            raise ResumeFileError(f"jobs[{i}] is not an object")
        job_id = raw.get("job_id")
        if isinstance(job_id, bool) or not isinstance(job_id, int):
            raise ResumeFileError(f"jobs[{i}].job_id is not a number")
        nodes = _hosts(raw.get("nodes_resume", raw.get("nodes")), f"jobs[{i}].nodes_resume")
        extra = raw.get("extra")
        jobs.append(
            Job(
                job_id=job_id,
                nodes=tuple(nodes),
                features=feature_names(raw.get("features")),
                extra=extra if isinstance(extra, str) else "",
                partition=str(raw.get("partition") or ""),
            )
        )
    return ResumeFile(all_nodes=tuple(all_nodes), jobs=tuple(jobs))


@dataclass(frozen=True)
class Reboot:
    """slurmctld asks ResumeProgram to reboot a job's nodes (``sbatch --reboot``, or node
    features that need a reboot): ``power_job_reboot`` runs it with the nodes, optionally
    the features to boot with as a second argument, and ``SLURM_JOB_ID``, without
    ``SLURM_RESUME_FILE`` (a power-up has the file and no job id; seen with Debian's
    22.05.8). The nodes are up: their workspaces must be made anew, for Slurm waits for
    a slurmd that registers with a new boot time."""

    job_id: int
    features: frozenset[str] = frozenset()


# What the environment of a job (salloc, sbatch, srun, scrontab) has, and the one
# slurmctld makes for its programs (SLURM_CONF, SLURM_JOB_ID, SLURM_RESUME_FILE) has not.
JOB_ENV = ("SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_JOBID")


def in_job(environ: Mapping[str, str]) -> str:
    """The variable that shows ``environ`` is a Slurm job's, not slurmctld's ("" if none):
    ``ws-slurm resume`` run by hand in an allocation has SLURM_JOB_ID too."""
    return next((v for v in JOB_ENV if environ.get(v, "").strip()), "")


def reboot_request(
    environ: Mapping[str, str], args: Sequence[str]
) -> tuple[Sequence[str], Reboot | None]:
    """(the hostlist arguments, the reboot asked) of a ``resume``: a reboot when
    ``SLURM_JOB_ID`` is set without ``SLURM_RESUME_FILE``, in slurmctld's environment,
    not a job's (``in_job``: a resume by hand in an allocation would otherwise destroy
    the running workspaces of the nodes named, and read a second hostlist as features);
    then only the first argument is a hostlist, a second names the features."""
    job = environ.get(JOB_ID_ENV, "").strip()
    if environ.get(RESUME_FILE_ENV, "").strip() or not job.isdigit() or in_job(environ):
        return args, None
    features = feature_names(args[1]) if len(args) > 1 else frozenset()
    return args[:1], Reboot(int(job), features)
