"""The user-data that turns a workspace into a Slurm node: cloud-init starts slurmd.

Two ways for slurmd to get slurm.conf (``docs/design/slurm.md``):

* **configless** (the default): ``slurmd --conf-server CONTROLLER:PORT -N NODE`` fetches
  the configuration from slurmctld (``SlurmctldParameters=enable_configless``) and keeps it
  current: nothing to copy when slurm.conf changes;
* **a written slurm.conf** (``slurm_conf_file`` in the config): the file's text goes into
  ``/etc/slurm/slurm.conf`` and slurmd runs ``-N NODE`` with it (for a controller that does
  not serve its configuration, or with ``AuthType=auth/none``: a configless slurmd's
  configuration request is authenticated with munge before it knows the AuthType).

The document is a ``#cloud-config``: the node's hostname is its Slurm node name,
``/etc/default/slurmd`` holds slurmd's options (Debian's unit reads it), a drop-in lets
Debian's unit start without a local slurm.conf, and runcmd starts slurmd (munged first,
with the site's key, if ``munge_key_file`` is set). A rule's own ``user_data`` (a
``#cloud-config``) comes first in a multi-part document; the service then appends its
own part (SSH keys, the cluster roster) as for any workspace.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

from workspace.slurm.settings import NodeSpec, Settings

SLURMD_DROPIN = "[Unit]\nConditionPathExists=\n"
SLURMD_DROPIN_PATH = "/etc/systemd/system/slurmd.service.d/10-ws-slurm.conf"


class ContextError(ValueError):
    """The node's user-data cannot be made (a file it needs cannot be read)."""


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ContextError(f"{what} {path}: {exc.strerror or exc}") from None


def slurmd_args(node: str, s: Settings) -> list[str]:
    if s.slurm_conf_file:
        return ["-N", node]
    if not s.controller:
        raise ContextError(
            "no controller in the config file: set controller (slurmctld's address) for "
            "configless slurmd, or slurm_conf_file"
        )
    return ["--conf-server", f"{s.controller}:{s.controller_port}", "-N", node]


# A word systemd splits out of an unquoted ``$VAR`` as it is: nothing that separates,
# quotes or escapes there.
PLAIN_WORD = re.compile(r"[^\s'\"\\]+")
# What a backslash escapes inside an EnvironmentFile's double-quoted value.
ENV_FILE_ESCAPED = '\\"`$'


def environment_line(name: str, args: list[str]) -> str:
    """``NAME="..."`` for an EnvironmentFile that a unit expands as ``$NAME`` (Debian's
    slurmd.service: ``ExecStart=/usr/sbin/slurmd -D -s $SLURMD_OPTIONS``), so that each
    of ``args`` reaches the program as one argument, whatever it holds. Not shell
    quoting: systemd reads the file itself (a double-quoted value, in which a backslash
    escapes ``\\ " ` $`` only), then splits the unquoted ``$NAME`` at whitespace, where
    single and double quotes group and a backslash, quoted or not, keeps the next
    character (``extract_first_word`` with ``EXTRACT_RELAX|EXTRACT_UNQUOTE``). So a word
    with whitespace, a quote or a backslash is single-quoted with ``\\`` and ``\'``
    inside; ``shlex.quote`` would lose a backslash there and end the value at a ``"``."""
    words = [
        a if PLAIN_WORD.fullmatch(a) else "'" + a.replace("\\", "\\\\").replace("'", "\\'") + "'"
        for a in args
    ]
    value = "".join("\\" + c if c in ENV_FILE_ESCAPED else c for c in " ".join(words))
    return f'{name}="{value}"\n'


def cloud_config(spec: NodeSpec, s: Settings) -> str:
    """Our ``#cloud-config`` for one node (JSON is YAML: no YAML writer needed)."""
    files: list[dict[str, str]] = [
        {
            "path": "/etc/default/slurmd",
            "content": environment_line("SLURMD_OPTIONS", slurmd_args(spec.node, s)),
            "permissions": "0644",
        },
        {"path": SLURMD_DROPIN_PATH, "content": SLURMD_DROPIN, "permissions": "0644"},
    ]
    runcmd: list[list[str]] = [["systemctl", "daemon-reload"]]
    if s.slurm_conf_file:
        text = _read(s.slurm_conf_file, "slurm_conf_file").decode()
        files.append({"path": "/etc/slurm/slurm.conf", "content": text, "permissions": "0644"})
    if s.munge_key_file:
        key = _read(s.munge_key_file, "munge_key_file")
        files.append(
            {
                "path": "/etc/munge/munge.key",
                "encoding": "b64",
                "content": base64.b64encode(key).decode(),
                "owner": "munge:munge",
                "permissions": "0400",
            }
        )
        runcmd.append(["systemctl", "restart", "munge"])
    runcmd.append(["systemctl", "start", "slurmd"])
    doc = {
        "hostname": spec.node,
        "fqdn": spec.node,
        "write_files": files,
        "runcmd": runcmd,
    }
    return "#cloud-config\n" + json.dumps(doc, indent=1) + "\n"


def user_data(spec: NodeSpec, s: Settings) -> bytes:
    """The node's whole user-data: the rule's own (if any) and ours."""
    ours = cloud_config(spec, s)
    if not spec.user_data.strip():
        return ours.encode()
    # The boundary comes from the content: the same node gets the same bytes every time
    # (its create's request id is derived from them).
    digest = hashlib.sha256((spec.user_data + "\0" + ours).encode()).hexdigest()[:32]
    outer = MIMEMultipart(boundary=f"ws-slurm-{digest}")
    for i, text in enumerate((spec.user_data, ours)):
        subtype = "cloud-config" if text.lstrip().startswith("#cloud-config") else "x-shellscript"
        part = MIMEText(text, subtype, "utf-8")
        part.add_header("Content-Disposition", "attachment", filename=f"ws-slurm-{i}")
        if subtype == "cloud-config":
            part.add_header("Merge-Type", "dict(recurse_array,no_replace)+list(append)")
        outer.attach(part)
    return outer.as_bytes()
