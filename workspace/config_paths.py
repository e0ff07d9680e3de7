"""Paths in a config file must be absolute (workspace/config.py ``load``).

A daemon resolves a relative path against its working directory, not against its config
file: under the systemd units (conf/systemd/) that is ``/``, so ``data_dir = "data"``
put the store in ``/data``, and the same file run by hand from another directory made a
new, empty store there. A relative path in a config file is therefore an error naming
the key; a path given on the command line (``--data-dir``) is the caller's and is
resolved against the directory it runs in, as any argument is.
"""

from __future__ import annotations

import shlex
from typing import Any

from workspace.errors import ConfigError

# What a key holds: a path ("" = none; "~/x" is a directory named "~" like any other
# relative one), a path whose "~" is the home directory (the [tls] files: rpc.py expands
# it), an address list ("host:port" or "unix:PATH", comma-separated), a SQLAlchemy URL,
# a path but for some words ("auto", "none"), a command (a bare name is looked up in
# $PATH; one with a "/" is a path), or a command line (its first word such a command:
# ``squeue_command``, split as a shell would).
PATH, HOME_PATH, ADDRESS, URL, SCHEMA = "path", "home-path", "address", "url", "schema"
COMMAND, COMMAND_LINE = "command", "command-line"
TLS_KEYS = {
    f"tls.{k}": HOME_PATH for k in ("identity_dir", "ca_file", "cert_file", "key_file", "crl_file")
}

SERVICE_KEYS = {
    "data_dir": PATH,
    "database_url": URL,
    "listen": ADDRESS,
    "node_listen": ADDRESS,
    "context.vendor_data_file": PATH,
    "context.cloud_config_schema": SCHEMA,
    "autoscale_commands_dir": PATH,
    "squeue_command": COMMAND_LINE,
    **TLS_KEYS,
}
AGENT_KEYS = {
    "state_dir": PATH,
    "cache_dir": PATH,
    "service": ADDRESS,
    "peer_listen": ADDRESS,
    **TLS_KEYS,
}
# ws-slurm's config (workspace/slurm/settings.py). slurmctld runs its programs in its own
# working directory. ``mapping_file`` is not here: a relative one is taken relative to
# the config file (docs/design/slurm.md).
SLURM_KEYS = {
    "service": ADDRESS,
    "identity": HOME_PATH,
    "log_file": PATH,
    "lock_file": PATH,
    "munge_key_file": PATH,
    "slurm_conf_file": PATH,
    "scontrol": COMMAND,
}


def _relative(kind: str, value: str) -> str:
    """The relative path in ``value`` ("" when there is none)."""
    if kind == SCHEMA and value in ("auto", "none"):
        return ""
    if kind == URL:
        scheme, sep, rest = value.partition(":///")
        if not sep or not scheme.startswith("sqlite") or rest in ("", ":memory:"):
            return ""
        value = rest.partition("?")[0]
    if kind == COMMAND_LINE:
        try:
            words = shlex.split(value)
        except ValueError:
            return ""  # not a command line: the loader's checks say so
        return _relative(COMMAND, words[0]) if words else ""
    if kind == COMMAND and "/" not in value:
        return ""
    if kind == ADDRESS:
        for address in value.split(","):
            address = address.strip()
            if address.startswith("unix:") and (rel := _relative(PATH, address[5:])):
                return rel
        return ""
    if value and not value.startswith(("/", "~") if kind == HOME_PATH else "/"):
        return value
    return ""


def check(data: dict[str, Any], keys: dict[str, str]) -> None:
    """ConfigError naming the first key of ``keys`` (dotted: ``tls.ca_file``) whose value
    in ``data``, a config file's tables, is or holds a relative path."""
    for dotted, kind in keys.items():
        value: Any = data
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if not isinstance(value, str):
            continue  # absent, or of a wrong type: the loader says so
        if rel := _relative(kind, value):
            raise ConfigError(
                f"{dotted}: {rel!r} is a relative path; give an absolute one (it is not "
                "taken relative to this file, and a daemon's working directory is / under "
                "systemd)"
            )
