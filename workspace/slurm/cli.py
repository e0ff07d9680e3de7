"""ws-slurm: Slurm's ResumeProgram, SuspendProgram and ResumeFailProgram on workspaces.

    ws-slurm [--config FILE] resume HOSTLIST...
    ws-slurm [--config FILE] suspend HOSTLIST...
    ws-slurm [--config FILE] resume-fail HOSTLIST...
    ws-slurm [--config FILE] check HOSTLIST...   what resume would create (no changes)

Called as ``ws-slurm-resume``, ``ws-slurm-suspend`` or ``ws-slurm-resume-fail`` (symlinks
to ws-slurm), the command is implied: those names can be slurm.conf's ResumeProgram,
SuspendProgram and ResumeFailProgram as they are (the config file is then $WS_SLURM_CONFIG
or /etc/workspace/slurm.toml).

slurmctld starts its programs with a cleaned environment: $WS_SLURM_CONFIG set for
slurmctld does not reach them, so under slurmctld the config file is
/etc/workspace/slurm.toml.

``check`` logs to stderr only (a person runs it, often as root: a log file it made would
be root's and SlurmUser could not write it). slurmctld discards what its programs print,
so everything else goes to the log file
(``log_file`` in the config, default /var/log/ws-slurm.log, made 0640 if missing; one line
per event, with the pid). The runs lock their nodes against each other on ``lock_file``
(``nodelock``; default /var/lib/ws-slurm/nodes.lock); one that cannot open it does nothing
(a config error, exit 2, the nodes told to Slurm). Exit codes: 0 done, 1 something
failed (the log says what), 2 usage or config error (a config file, identity directory
or lock file that cannot be read), 3 the service cannot be reached. Whatever stops
resume, suspend or resume-fail from doing its work (config, identity, lock file,
service) is also told to Slurm: the nodes are marked DOWN with a ``ws: ``
reason (``reasons.fail_nodes``), for scontrol needs no ws-slurm config.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import cast

from workspace import errors, version
from workspace.cli import common
from workspace.client import IDENTITY_ENV, Client
from workspace.client_address import ServiceNotConfigured
from workspace.slurm import program, reasons
from workspace.slurm.check import Images, check
from workspace.slurm.dirs import LOG_DIR_MODE, make_dirs
from workspace.slurm.hostlist import HostlistError
from workspace.slurm.nodelock import NodeLocks
from workspace.slurm.resumefile import (
    JOB_ID_ENV,
    RESUME_FILE_ENV,
    ResumeFile,
    ResumeFileError,
    in_job,
    reboot_request,
)
from workspace.slurm.resumefile import parse as parse_resume
from workspace.slurm.scontrol import Scontrol
from workspace.slurm.settings import (
    CONFIG_ENV,
    DEFAULT_CONFIG,
    DEFAULT_LOG,
    ConfigError,
    Settings,
    load,
)

PROG = "ws-slurm"
EXIT_USAGE = 2
log = logging.getLogger("ws-slurm")


EPILOG = f"""\
slurm.conf runs it through symlinks named ws-slurm-resume, ws-slurm-suspend and
ws-slurm-resume-fail (the name implies the command), with a hostlist (cloud[1-3]):
  ResumeProgram=/usr/local/sbin/ws-slurm-resume (conf/slurm/slurm.conf.fragment)
slurmctld passes none of your environment (no $WS_SLURM_CONFIG, no PATH): under it
the config is {DEFAULT_CONFIG} (conf/slurm/ws-slurm.toml). resume, suspend and
resume-fail log to the config's log_file (default {DEFAULT_LOG}; Slurm
discards what they print); check prints what it finds on stdout and logs to stderr
only. A node that cannot run is DOWN with a reason starting "ws: "
(sinfo -R). Run resume or suspend by hand as SlurmUser only (sudo -u slurm): a log or
lock file a run as root makes is root's, and slurmctld's runs cannot open it.
Exit: 0 done, 1 something failed, 2 usage or config error, 3 the service cannot be
reached. README "Slurm"; docs/design/slurm.md."""


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = common.Parser(
        prog=PROG,
        description="Slurm power-saving programs that run Slurm nodes as workspaces",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    version.add_option(parser)
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help=f"config file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG})",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("resume", "create workspaces for the nodes (ResumeProgram)"),
        ("suspend", "destroy the nodes' workspaces (SuspendProgram)"),
        ("resume-fail", "destroy what a failed resume made (ResumeFailProgram)"),
        ("check", "print what resume would create for the nodes; change nothing"),
    ):
        p = sub.add_parser(name, help=text, description=f"{PROG} {name}: {text}")
        p.add_argument(
            "hostlist",
            nargs="+",
            metavar="HOSTLIST",
            help="Slurm node names or hostlist expressions (cloud3, cloud[1-4,7])",
        )
    return parser


def setup_logging(path: str | None, stderr: bool = False) -> None:
    """Log lines to ``path`` (made if missing); stderr too, for a person at a terminal
    (or always with ``stderr``). ``path`` None: stderr only (``check``, which a person runs,
    often as root: a log file it made would be root's, and SlurmUser could not write it)."""
    root = logging.getLogger("ws-slurm")
    root.setLevel(logging.INFO)
    root.propagate = False
    for old in list(root.handlers):  # called again in one process: no line written twice
        root.removeHandler(old)
        old.close()
    fmt = logging.Formatter(
        f"%(asctime)s {PROG}[{os.getpid()}] %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S%z"
    )
    handler: logging.Handler = logging.StreamHandler(sys.stderr)
    if path is not None:
        try:
            make_dirs(Path(path).parent, LOG_DIR_MODE)
            # Made 0640 if missing (README's install -m 0640): FileHandler would make it
            # 0644, every local user reading the nodes' failures and the service's answers.
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640))
            handler = logging.FileHandler(path)
        except OSError as exc:
            print(
                f"{PROG}: cannot write the log file {path}: {exc} (it must be writable by "
                "SlurmUser, who runs ws-slurm under slurmctld)",
                file=sys.stderr,
            )
    to_file = isinstance(handler, logging.FileHandler)
    handler.setFormatter(fmt)
    root.addHandler(handler)
    if to_file and (stderr or log_to_tty()):
        tty = logging.StreamHandler(sys.stderr)
        tty.setFormatter(fmt)
        root.addHandler(tty)


COMMANDS = ("resume", "suspend", "resume-fail")


def log_to_tty() -> bool:
    return sys.stderr is not None and sys.stderr.isatty()


def implied_command(argv: list[str]) -> list[str]:
    """The arguments, with the command taken from the program's name when it is called
    as ``ws-slurm-resume``, ``ws-slurm-suspend`` or ``ws-slurm-resume-fail`` (symlinks to
    ws-slurm: slurm.conf's programs take no arguments of their own)."""
    name = Path(argv[0]).name if argv else ""
    command = name.removeprefix(f"{PROG}-")
    if name.startswith(f"{PROG}-") and command in COMMANDS:
        return [command, *argv[1:]]
    return argv[1:]


def ensure_std_fds() -> None:
    """slurmctld runs its programs with stdin, stdout and stderr closed: point them at
    /dev/null, so that no file opened later takes their numbers (a child such as scontrol
    would inherit it as its stdin or stdout)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            opened = os.open(os.devnull, os.O_RDWR)
            if opened != fd:
                os.dup2(opened, fd)
                os.close(opened)


def read_resume_text(environ: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """(path, text) of the resume file Slurm named: read at once, for it is temporary.
    The text is None when no file was named or it cannot be read (the path is kept)."""
    env = os.environ if environ is None else environ
    path = env.get(RESUME_FILE_ENV, "").strip()
    if not path:
        return "", None
    try:
        return path, Path(path).read_text()
    except OSError as exc:
        return path, f"\0{exc.strerror or exc}"


def resume_file(path: str, text: str | None) -> ResumeFile | None:
    """The parsed resume file, or None (none given, or unusable: logged)."""
    if not path or text is None:
        return None
    if text.startswith("\0"):
        log.warning("%s %s cannot be read (%s): nodes are resumed one by one", RESUME_FILE_ENV,
                    path, text[1:])  # fmt: skip
        return None
    try:
        return parse_resume(text)
    except ResumeFileError as exc:
        log.warning("%s %s: %s: nodes are resumed one by one", RESUME_FILE_ENV, path, exc)
        return None


def not_a_reboot(environ: Mapping[str, str]) -> str:
    """For the log line of a resume run in a Slurm job (by hand, in an allocation): its
    SLURM_JOB_ID is not slurmctld's reboot of the nodes ("" otherwise)."""
    job, shown = environ.get(JOB_ID_ENV, "").strip(), in_job(environ)
    if not job or not shown or environ.get(RESUME_FILE_ENV, "").strip():
        return ""
    return f"; {JOB_ID_ENV} {job} is a Slurm job's ({shown} set): not a reboot, what runs is kept"


def connect(s: Settings) -> Client:
    """A client of the configured service; no address anywhere is a ConfigError (the config
    file's ``service`` is what slurmctld's programs have: it passes them no $WS_SERVICE)."""
    try:
        return Client.from_env(
            s.service or None,
            identity=s.identity or None,
            timeout_s=s.timeout_s,
            identity_hint=f'identity = "DIR" in the ws-slurm config (or ${IDENTITY_ENV})',
        )
    except ServiceNotConfigured as exc:
        raise errors.ConfigError(
            f'config has no service address: set service = "host:port" in the ws-slurm '
            f"config ({exc.message})"
        ) from None
    except errors.BadArgument as exc:
        # What the config gave the client (a unix socket path too long for one): told as
        # the config's, not as the service refusing ws-slurm.
        raise errors.ConfigError(exc.message.removeprefix("Client: ")) from None


def config_reason(message: str) -> str:
    """A config error as a node's reason: it starts with ``config`` (``ws: config ...``)."""
    return message if message.startswith("config") else f"config: {message}"


def config_failed(
    command: str, hostlist: list[str], path: str, exc: Exception, scontrol: Scontrol | None
) -> int:
    """The config cannot be read: said on stderr and in the log file (the config's, if it
    can be read that far, else the default), and to Slurm: the nodes DOWN with
    ``ws: config ...`` (scontrol needs no ws-slurm config)."""
    try:
        log_file = load(path, need_mapping=False).log_file
    except ConfigError:
        log_file = DEFAULT_LOG
    setup_logging(log_file if command in COMMANDS else None, stderr=True)
    log.error("%s %s: %s", command, " ".join(hostlist), exc)
    if command in COMMANDS:
        sc = scontrol or Scontrol()
        try:
            nodes = sc.hostnames(hostlist)
        except HostlistError:
            nodes = []
        reasons.fail_nodes(sc, command, nodes, config_reason(str(exc)))
    return EXIT_USAGE


def main(
    argv: list[str] | None = None,
    client: program.Service | None = None,
    scontrol: Scontrol | None = None,
) -> int:
    """ws-slurm; whatever stops it unforeseen is a line in the log naming the cause, with
    its traceback (slurmctld discards stderr, where Python would print it), exit 1."""
    try:
        return _main(argv, client, scontrol)
    except Exception as exc:
        log.exception("%s failed unexpectedly: %s: %s", PROG, type(exc).__name__, exc)
        return program.EXIT_FAILED


def _main(argv: list[str] | None, client: program.Service | None, scontrol: Scontrol | None) -> int:
    ensure_std_fds()
    if argv is None:
        argv = implied_command(sys.argv)
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    raw_resume = read_resume_text() if args.command == "resume" else ("", None)
    # slurmctld's reboot of a job's nodes: the first argument only is a hostlist.
    hostlist, reboot = (
        reboot_request(os.environ, args.hostlist)
        if args.command == "resume"
        else (args.hostlist, None)
    )
    path = args.config or os.environ.get(CONFIG_ENV) or str(DEFAULT_CONFIG)
    try:
        s = load(path)
    except ConfigError as exc:
        return config_failed(args.command, list(hostlist), path, exc, scontrol)
    setup_logging(s.log_file if args.command in COMMANDS else None)
    resume = resume_file(*raw_resume)
    sc = scontrol or Scontrol(s.scontrol)
    try:
        nodes = sc.hostnames(hostlist)
    except HostlistError as exc:
        log.error("%s %s: %s", args.command, " ".join(hostlist), exc)
        if args.command in COMMANDS and not log_to_tty():  # check logs to stderr already
            print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "check":
        return check(s, sc, nodes, lambda: connect(s) if client is None else cast(Images, client))
    log.info(
        "%s %s (%d node(s)%s%s%s)",
        args.command,
        " ".join(hostlist),
        len(nodes),
        f", {len(resume.jobs)} job(s) in {RESUME_FILE_ENV}" if resume else "",
        f", Slurm reboots them for job {reboot.job_id}" if reboot else "",
        not_a_reboot(os.environ) if args.command == "resume" and not reboot else "",
    )
    locks = NodeLocks(s.lock_file)
    own = client is None
    try:
        # Without its locks a run could act on a node another run is acting on.
        locks.open()
        # Client is a Service (its create methods take more keywords than the protocol).
        service = client if client is not None else cast(program.Service, connect(s))
    except errors.WorkspaceError as exc:
        # A missing or broken identity directory, or a lock file that cannot be opened,
        # is a config error (2); else 3.
        locks.close()
        config = isinstance(exc, errors.ConfigError)
        log.error("%s: %s", args.command, exc.message)
        why = config_reason(exc.message) if config else reasons.service_problem(exc)
        reasons.fail_nodes(sc, args.command, nodes, why)
        return EXIT_USAGE if config else program.EXIT_UNREACHABLE
    prog = program.Program(service, s, sc, locks, started=started)
    try:
        if args.command == "resume":
            code = prog.resume(nodes, resume, reboot)
        elif args.command == "resume-fail":
            code = prog.resume_fail(nodes)
        else:
            code = prog.destroy(nodes, args.command)
    except errors.Unavailable as exc:
        log.error("%s: the workspace service cannot be reached: %s", args.command, exc.message)
        code = program.EXIT_UNREACHABLE
    except errors.WorkspaceError as exc:
        log.error("%s: %s", args.command, exc.message)
        code = program.EXIT_FAILED
    finally:
        prog.close()
        if own and isinstance(service, Client):
            service.close()
    log.info("%s done in %.2f s, exit %d", args.command, time.monotonic() - started, code)
    return code


if __name__ == "__main__":  # python -m workspace.slurm.cli, as python -m workspace.slurm
    sys.exit(main())
