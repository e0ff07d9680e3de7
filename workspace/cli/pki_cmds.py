"""The site PKI (`ws-admin pki ...`): a thin CLI over ``workspace/pki.py``.

    ws-admin pki init [--dir D]                  make the site CA
    ws-admin pki issue user NAME [--admin] [--project P]... --out DIR
    ws-admin pki issue node NAME --out DIR [--host H]...
    ws-admin pki issue service HOST... [--name NAME] [--force] --out DIR
    ws-admin pki revoke NAME|KIND:NAME|SERIAL     re-signs crl.pem
    ws-admin pki list                             what was issued, and what is revoked
    ws-admin pki bundle CA_DIR... --out DIR       ca.pem and crl.pem of several CAs

The CA directory is ``--dir``, else ``$WS_PKI_DIR``, else ``pki/`` in the local
site's directory (where ``ws-admin site up`` makes its CA). Nothing here talks to
the service: copy the new ``crl.pem`` to where the service and the agents read it
(``[tls] crl_file``); they re-read it when it changes. See docs/security.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from workspace import errors, pki
from workspace.cli import common, render
from workspace.identity import Identity, Kind, name_problem, tls_name
from workspace.site import record as site_record

PKI_ENV = "WS_PKI_DIR"


def default_ca_dir() -> Path:
    env = os.environ.get(PKI_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return site_record.default_site_dir() / "pki"


def _ca_dir(args: argparse.Namespace) -> Path:
    return Path(args.dir).expanduser() if getattr(args, "dir", None) else default_ca_dir()


def _not_after(row: pki.Issued) -> str:
    """When the certificate expires, as every time the CLIs print (``2027-12-05T08:34:36Z``;
    issued.json keeps ``+00:00``, which jq's ``fromdate`` does not read)."""
    try:
        return render.fmt_epoch(datetime.fromisoformat(row.not_after).timestamp())
    except ValueError:  # not written by pki.py: shown as it is
        return row.not_after


def _in_force(row: pki.Issued, now: datetime) -> bool:
    """Whether ``row``'s certificate still works: not revoked, and not expired (an expired
    one is not "a valid certificate" that a new one of its name would stand beside)."""
    try:
        return not row.revoked and datetime.fromisoformat(row.not_after) > now
    except (ValueError, TypeError):  # not written by pki.py: taken as in force
        return not row.revoked


def _state(row: pki.Issued, now: datetime) -> str:
    """What ``pki list`` says of ``row``: revoked, expired (it showed "valid" for one whose
    time had run out, which no client takes) or valid."""
    if row.revoked:
        return "revoked"
    return "valid" if _in_force(row, now) else "expired"


def _issued_dict(row: pki.Issued) -> dict[str, Any]:
    return {
        "serial": f"{row.serial:#x}",
        "kind": row.kind,
        "name": row.name,
        "not_after": _not_after(row),
        "revoked": row.revoked,
    }


def init(args: argparse.Namespace) -> int:
    d = _ca_dir(args)
    ca = pki.init(d)
    out = {
        "dir": str(ca.dir),
        "ca_file": str(ca.dir / pki.CA_CERT),
        "crl_file": str(ca.dir / pki.CRL),
    }
    render.emit(
        args,
        out,
        f"site CA made in {ca.dir}\n"
        f"  CA certificate {out['ca_file']} (every party trusts it)\n"
        f"  CRL            {out['crl_file']} (copy it to each [tls] crl_file)\n"
        f"  key            {ca.dir / pki.CA_KEY} (keep it secret; offline if you can)",
    )
    return common.EXIT_OK


def issue(args: argparse.Namespace) -> int:
    kind = Kind(args.kind)
    out = Path(args.out).expanduser().absolute()  # the hint below goes into a config
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        # A refusal (exit 1), as pki.CA.issue's of a directory holding an identity.
        raise errors.AlreadyExists(f"--out {out} exists and is not empty; choose a new directory")
    ca = pki.CA(_ca_dir(args))
    for project in args.project or () if kind is Kind.USER else ():
        problem = name_problem(Kind.USER, project, what="project")
        if problem:
            # A refusal (exit 1), as pki.CA.issue's of an invalid name; said here to name
            # the option.
            raise errors.InvalidArgument(f"--project {problem}")
    if kind is Kind.USER:
        who = Identity(kind, args.name, args.admin, tuple(sorted(set(args.project or ()))))
        hosts: list[str] = []
    elif kind is Kind.NODE:
        who, hosts = Identity(kind, args.name), list(args.host or ())
    else:
        who, hosts = Identity(kind, args.name or args.hosts[0]), list(args.hosts)
    before = [r for r in ca.issued() if (r.kind, r.name) == (kind.value, who.name)]
    now = datetime.now(UTC)
    valid = [r for r in before if _in_force(r, now)]
    serials = ", ".join(f"{r.serial:#x}" for r in valid)
    if valid and kind is Kind.SERVICE and not args.force:
        # Every replica is the same service to clients; its name is only what `pki list`
        # and `pki revoke` call its certificate. Two of one name (replicas on one host,
        # both named by its first HOST) were revoked together by that name.
        raise errors.AlreadyExists(
            f"{who.principal} already holds a valid certificate (serial {serials}); give "
            "another replica a name of its own (--name NAME), so that `ws-admin pki revoke "
            "service:NAME` revokes its certificate alone; to renew this one, --force (then "
            "revoke the old one by serial once it is replaced)"
        )
    try:
        bundle = Path(args.ca_file).expanduser().read_bytes() if args.ca_file else None
    except OSError as exc:
        raise errors.NotFound(f"--ca-file {args.ca_file}: {exc.strerror or exc}") from None
    row = ca.issue(who, out, hosts, ca_bundle=bundle)
    server_name = tls_name(who.kind, who.name)
    if valid and not render.wants_json(args):
        print(
            f"ws-admin: note: {who.principal} already holds a valid certificate (serial "
            f"{serials}); each works until it expires or is revoked: revoke the old one by "
            "serial once it is replaced",
            file=sys.stderr,
        )
    data = {
        **_issued_dict(row),
        "uris": who.uris(),
        "hosts": hosts,
        "server_name": server_name,
        "dir": str(out),
    }
    text = (
        f"issued {who.principal}{' (admin)' if who.admin else ''} serial {row.serial:#x}, "
        f"valid until {_not_after(row)}\n"
        f"  identity directory {out} (ca.pem, cert.pem, key.pem 0600)"
    )
    if server_name:
        text += f"\n  server name {server_name} (what clients check, whatever address they dial)"
    if kind is Kind.USER:
        text += f"\n  use it: ws --identity {out} ...   or   export WS_IDENTITY={out}"
    else:
        text += f'\n  use it: [tls] identity_dir = "{out}" in the {kind.value}\'s config'
    render.emit(args, data, text)
    return common.EXIT_OK


def revoke(args: argparse.Namespace) -> int:
    ca = pki.CA(_ca_dir(args))
    rows = ca.revoke(args.ref)
    crl = ca.dir / pki.CRL
    data = {"revoked": [_issued_dict(r) for r in rows], "crl_file": str(crl)}
    lines = [f"revoked {r.kind}:{r.name} serial {r.serial:#x}" for r in rows]
    lines.append(f"published {crl}: copy it to every [tls] crl_file (re-read on change)")
    render.emit(args, data, "\n".join(lines))
    return common.EXIT_OK


def bundle(args: argparse.Namespace) -> int:
    out = pki.bundle(args.ca_dirs, Path(args.out).expanduser().absolute())
    data = {
        "ca_dirs": [str(Path(d).expanduser().absolute()) for d in args.ca_dirs],
        "ca_file": str(out / pki.CA_CERT),
        "crl_file": str(out / pki.CRL),
    }
    render.emit(
        args,
        data,
        f"wrote {data['ca_file']} (the CAs of {', '.join(data['ca_dirs'])})\n"
        f"  and {data['crl_file']} (the CRL of each)\n"
        "  copy ca.pem over every party's CA file and crl.pem over every [tls] crl_file "
        "(re-read on change); run this again after each revoke",
    )
    return common.EXIT_OK


def list_issued(args: argparse.Namespace) -> int:
    ca = pki.CA(_ca_dir(args))
    rows = ca.issued()
    now = datetime.now(UTC)
    data = {
        "dir": str(ca.dir),
        "issued": [_issued_dict(r) | {"state": _state(r, now)} for r in rows],
    }
    text = render.table(
        ["SERIAL", "KIND", "NAME", "NOT_AFTER", "STATE"],
        [(f"{r.serial:#x}", r.kind, r.name, _not_after(r), _state(r, now)) for r in rows],
    )
    render.emit(args, data, text if rows else f"nothing issued yet by the CA in {ca.dir}")
    return common.EXIT_OK


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    """Add `pki init|issue|revoke|list|bundle` to ``sub``, the subparsers of ws-admin."""
    dir_help = f"CA directory (default: ${PKI_ENV}, else pki/ in the local site's directory)"
    top = sub.add_parser("pki", parents=[parent], help="the site CA: issue and revoke identities")
    top.description = __doc__.split("\n\n")[1] if __doc__ else None
    top.formatter_class = argparse.RawDescriptionHelpFormatter
    pki_sub = top.add_subparsers(dest="pki_command", metavar="COMMAND", required=True)

    p = pki_sub.add_parser("init", parents=[parent], help="make the site CA")
    p.add_argument("--dir", help=dir_help)
    p.set_defaults(func=init)

    p = pki_sub.add_parser("issue", parents=[parent], help="issue an identity directory")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    out_help = "write ca.pem, cert.pem and key.pem here (a new or empty directory)"
    ca_help = (
        "write this CA bundle as the identity's ca.pem instead of the CA alone (during a CA "
        "rotation: the ca.pem of `pki bundle`)"
    )
    q = kinds.add_parser("user", parents=[parent], help="a user (optionally an admin)")
    q.add_argument("name")
    q.add_argument("--admin", action="store_true", help="a site admin")
    q.add_argument(
        "--project", action="append", metavar="P", help="a project the user belongs to (repeat)"
    )
    q.add_argument("--out", required=True, metavar="DIR", help=out_help)
    q.add_argument("--dir", help=dir_help)
    q.add_argument("--ca-file", metavar="FILE", help=ca_help)
    q.set_defaults(func=issue)
    q = kinds.add_parser("node", parents=[parent], help="a node agent")
    q.add_argument("name")
    q.add_argument(
        "--host",
        action="append",
        metavar="H",
        help="a name or address other agents reach its peer server at (repeat; the CA "
        "adds NAME.node.workspace.invalid, which peers check)",
    )
    q.add_argument("--out", required=True, metavar="DIR", help=out_help)
    q.add_argument("--dir", help=dir_help)
    q.add_argument("--ca-file", metavar="FILE", help=ca_help)
    q.set_defaults(func=issue)
    q = kinds.add_parser("service", parents=[parent], help="the service")
    q.add_argument(
        "hosts",
        nargs="+",
        metavar="HOST",
        help="names and addresses it is reached at (the CA adds service.workspace.invalid, "
        "which clients check)",
    )
    q.add_argument(
        "--name",
        help="the certificate's name in `pki list` and `pki revoke` (default: the first "
        "HOST); each replica its own (a name that holds a valid certificate is refused)",
    )
    q.add_argument(
        "--force",
        action="store_true",
        help="issue even though NAME holds a valid certificate (a renewal of that replica's)",
    )
    q.add_argument("--out", required=True, metavar="DIR", help=out_help)
    q.add_argument("--dir", help=dir_help)
    q.add_argument("--ca-file", metavar="FILE", help=ca_help)
    q.set_defaults(func=issue)

    p = pki_sub.add_parser("revoke", parents=[parent], help="revoke by name or serial")
    p.add_argument(
        "ref",
        metavar="NAME|KIND:NAME|SERIAL",
        help="every certificate of NAME (user:NAME, node:NAME where a user and a node share "
        "it), or one serial",
    )
    p.add_argument("--dir", help=dir_help)
    p.set_defaults(func=revoke)

    p = pki_sub.add_parser(
        "bundle", parents=[parent], help="one ca.pem and crl.pem of several CAs (CA rotation)"
    )
    p.add_argument("ca_dirs", nargs="+", metavar="CA_DIR", help="the CA directories (old, new)")
    p.add_argument("--out", required=True, metavar="DIR", help="write ca.pem and crl.pem here")
    p.set_defaults(func=bundle)

    p = pki_sub.add_parser("list", parents=[parent], help="what was issued")
    p.add_argument("--dir", help=dir_help)
    p.set_defaults(func=list_issued)
