"""``ws-slurm check HOSTLIST``: what resume would create for the nodes, and everything
resume would refuse, found before Slurm needs the nodes (nothing is changed).

Per node: its rule (image, size), its user-data, and whether its name can be a workspace
name. Then ws-slurm's own ground: the identity directory, and, when the service answers,
each image (``GetImage``): that it exists for ws-slurm's user and takes user-data (an
image whose ``context`` is ``none`` would boot without the user-data that starts slurmd).
Nodes scontrol does not show (not in slurm.conf, or no ``PrivateData=cloud``), and
scontrol that does not answer at all (not installed, slurmctld away), or that this
shell's PATH finds but slurmctld's programs, which have no PATH, would not; a
``service`` or ``identity`` the config leaves to this shell's $WS_* variables, which
slurmctld does not pass. And
``replace_wait_s`` against each node's ResumeTimeout (``scontrol show config``,
``show partition``): a wait that long would let Slurm give up on the node first. And
``lock_file``: that SlurmUser (``show config``) could open it, or make it and its
directory (``lockcheck``; nothing is made). And slurm.conf's ``AuthType=auth/none``
(``show config``) without ``slurm_conf_file``, or a ``SlurmctldPort`` other than
``controller_port``: configless slurmd would never register.
Exit 0 if resume would go ahead for every node, 1 if not (each problem printed), 3 if
the service could not be asked (the rest was checked).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Protocol

from workspace import errors
from workspace.client_address import IDENTITY_ENV, SERVICE_ENV, TLS_ENV
from workspace.site.record import SITE_ENV
from workspace.slurm.context import ContextError, user_data
from workspace.slurm.hostlist import brief
from workspace.slurm.lockcheck import check_lock_file, runs_as
from workspace.slurm.nodenames import name_problem
from workspace.slurm.program import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE
from workspace.slurm.scontrol import NO_PATH_SEARCH, Scontrol, find
from workspace.slurm.settings import Settings, Unmapped
from workspace.v1 import images_pb2


class Images(Protocol):
    def get_image(self, name: str) -> images_pb2.Image: ...


def check(
    s: Settings,
    scontrol: Scontrol,
    nodes: Sequence[str],
    connect: Callable[[], Images],
    out: Callable[[str], None] = print,
) -> int:
    status = EXIT_OK
    # Slurm's side is asked only if scontrol answers at all: with slurmctld away each
    # call took ~9 s and logged the same failure, seven of them until the run's budget.
    answers = bool(nodes) and scontrol.states(nodes) is not None
    for problem in (
        scontrol_elsewhere(s.scontrol),
        *from_this_shell(s),
        *(configless_problems(s, scontrol) if answers else ()),
    ):
        if problem:
            out(problem)
            status = EXIT_FAILED
    features = scontrol.features(nodes) if answers else {}
    images: dict[str, list[str]] = {}
    for n in nodes:
        try:
            spec = s.resolve(n, features.get(n, frozenset()))
            size = len(user_data(spec, s))
        except (Unmapped, ContextError) as exc:
            out(f"{n}: {exc}")
            status = EXIT_FAILED
            continue
        if name_problem(n):
            out(
                f"{n}: the Slurm node name cannot be a workspace name nor a guest's "
                f"hostname ({name_problem(n)}): resume would refuse it"
            )
            status = EXIT_FAILED
            continue
        images.setdefault(spec.image, []).append(n)
        out(
            f"{n}: image {spec.image}, cpus {spec.cpus or 'default'}, memory_mib "
            f"{spec.memory_mib or 'default'} (rule {spec.rule + 1}), user-data {size} bytes"
        )
    if nodes and not answers:
        # No answer at all (no scontrol, slurmctld away): every check of Slurm's side
        # below is silent then, and a node mapped by feature took another rule.
        out(
            f"{brief(list(nodes))}: scontrol could not be asked (see the warnings above): "
            "the nodes' features (rules by feature), whether slurmctld shows them and "
            "their ResumeTimeout are not checked; resume could not tell slurmctld their "
            "addresses either"
        )
        status = EXIT_FAILED
    hidden = scontrol.not_shown(nodes) if answers else []
    if hidden:
        out(
            f"{brief(hidden)}: scontrol show node says 'not found': not in slurm.conf, or "
            "slurm.conf lacks PrivateData=cloud (without it powered-down cloud nodes are "
            "hidden, and ws-slurm cannot read their features nor find a workspace a failed "
            "suspend left on them)"
        )
        status = EXIT_FAILED
    if answers and not _waits_within_resume_timeout(s, scontrol, nodes, out):
        status = EXIT_FAILED
    # Looked at, not made: check runs as whoever runs it (lockcheck).
    if not check_lock_file(s.lock_file, runs_as(scontrol.slurm_user() if answers else None), out):
        status = EXIT_FAILED
    if s.identity and not os.path.isdir(os.path.expanduser(s.identity)):
        out(
            f"identity directory {s.identity} not found: resume would fail (make one with "
            "`ws-admin pki issue user slurm --out DIR`)"
        )
        return EXIT_FAILED
    if not images:
        return status
    try:
        service = connect()
        for image, users in images.items():
            problem = _image_problem(service, image)
            if problem:
                out(f"{', '.join(users[:5])}{' ...' if len(users) > 5 else ''}: {problem}")
                status = EXIT_FAILED
    except errors.Unavailable as exc:
        out(f"images not checked: the workspace service cannot be reached: {exc.message}")
        return status or EXIT_UNREACHABLE
    except errors.ConfigError as exc:
        out(f"{exc.message}: resume would fail")
        return EXIT_FAILED
    except errors.WorkspaceError as exc:
        out(f"images not checked: the workspace service refused ws-slurm: {exc.message}")
        return EXIT_FAILED
    return status


def from_this_shell(s: Settings) -> list[str]:
    """What this check takes from this shell's environment that ws-slurm under slurmctld,
    which passes it none, would not have: a ``service`` or ``identity`` the config leaves
    empty, filled here from $WS_SERVICE or $WS_SITE_DIR, $WS_IDENTITY or $WS_TLS_*. The
    images were then checked at a service, or as a user, that resume would not call
    (no address at all: DOWN ``ws: config: ...``; no identity: plaintext, refused)."""
    found: list[str] = []
    given = [v for v in (SERVICE_ENV, SITE_ENV) if os.environ.get(v, "").strip()]
    if not s.service and given:
        found.append(
            f"service: the config names none; this check used ${given[0]} "
            f"({os.environ[given[0]].strip()}), which slurmctld does not pass to ws-slurm: "
            'set service = "HOST:PORT" in the ws-slurm config'
        )
    # (A local site's identity, found by its socket's directory, is found there too.)
    given = [v for v in (IDENTITY_ENV, *TLS_ENV) if os.environ.get(v, "").strip()]
    if not s.identity and given:
        found.append(
            f"identity: the config names none; this check used ${given[0]} "
            f"({os.environ[given[0]].strip()}), which slurmctld does not pass to ws-slurm "
            "(it would call the service without a certificate): set identity = "
            '"/etc/workspace/slurm-identity" (ws-admin pki issue user slurm --out DIR)'
        )
    return found


def configless_problems(s: Settings, scontrol: Scontrol) -> list[str]:
    """What stops a configless slurmd (no ``slurm_conf_file``) from ever registering,
    from slurm.conf as ``scontrol show config`` shows it (resume itself goes ahead):
    ``AuthType=auth/none``, for slurmd asks for slurm.conf with munge before it knows
    the AuthType; a ``controller_port`` slurmctld does not listen on (``SlurmctldPort``,
    a port or a range ``6817-6820``)."""
    if s.slurm_conf_file:
        return []
    found = []
    if scontrol.config_value("AuthType") == "auth/none":
        found.append(
            "slurm_conf_file: the config names none, so the nodes' slurmd runs configless, "
            "but slurm.conf has AuthType=auth/none: a configless slurmd asks for slurm.conf "
            "with munge whatever AuthType says, and no node would ever register; set "
            'slurm_conf_file = "/etc/slurm/slurm.conf" in the ws-slurm config (or use '
            "AuthType=auth/munge with munge_key_file)"
        )
    ports = scontrol.config_value("SlurmctldPort") or ""
    low, _, high = ports.partition("-")
    if low.isdigit() and not int(low) <= s.controller_port <= int(high or low):
        found.append(
            f"controller_port: {s.controller_port}, but slurmctld listens on {ports} "
            f"(SlurmctldPort): the nodes' slurmd --conf-server {s.controller}:"
            f"{s.controller_port} would never reach it; set controller_port = {low} in the "
            "ws-slurm config"
        )
    return found


def scontrol_elsewhere(command: str) -> str:
    """What is wrong when the ``scontrol`` this shell's PATH finds is not the one ws-slurm
    finds under slurmctld, which runs it without PATH (bare names are then looked for in
    ``NO_PATH_SEARCH``): ``/opt/slurm/bin/scontrol`` is found here, nothing there, and
    resume could tell Slurm nothing (no NodeAddr, no DOWN reason, no features)."""
    path = os.environ.get("PATH")
    if "/" in command or path is None:
        return ""
    here = find(command, path)
    there = find(command, NO_PATH_SEARCH)
    if here is None or (there is not None and os.path.realpath(there) == os.path.realpath(here)):
        return ""
    return (
        f"scontrol: {command!r} is {here} on your PATH, but slurmctld runs ws-slurm without "
        f"PATH, and in {NO_PATH_SEARCH} it is {there or 'not found'}: set "
        f'scontrol = "{here}" in the ws-slurm config'
    )


def _waits_within_resume_timeout(
    s: Settings, scontrol: Scontrol, nodes: Sequence[str], out: Callable[[str], None]
) -> bool:
    """False (and said) when ``replace_wait_s`` is not below a node's ResumeTimeout:
    resume may wait that long for a node's old workspace before it makes the new one, and
    the new one still has to boot and register within ResumeTimeout, so Slurm would mark
    the node DOWN ("ResumeTimeout reached") while resume is still waiting. Nothing is
    said when scontrol cannot tell."""
    timeouts = scontrol.resume_timeouts(nodes) if nodes else None
    if not timeouts:
        return True
    short: dict[tuple[int, str], list[str]] = {}
    for node in nodes:
        if node in timeouts and s.replace_wait_s >= timeouts[node][0]:
            short.setdefault(timeouts[node], []).append(node)
    for (limit, where), which in short.items():
        out(
            f"{brief(which)}: replace_wait_s {s.replace_wait_s:g} s is not below their "
            f"ResumeTimeout ({limit} s, {where}): Slurm would give up on a node while resume "
            "still waits for its old workspace to be destroyed; set replace_wait_s well "
            "below it (the new workspace must still boot within ResumeTimeout)"
        )
    return not short


def _image_problem(service: Images, image: str) -> str:
    try:
        img = service.get_image(image)
    except errors.NotFound:
        return f"image {image} is not in the service (or not visible to ws-slurm's user)"
    if img.context != "nocloud":
        return (
            f"image {image} takes no user-data (context {img.context or 'none'}): slurmd "
            "would never be started; use an image with context nocloud"
        )
    return ""
