"""Projects and quotas on the command line.

    ws-admin project create P [--quota instances=N,vcpus=N,memory-mib=N,disk-gib=N,image-bytes=N]
                              [--default-lease 8h] [--max-lease 72h] [--on-expiry stop|destroy]
                              [--quota-preemptible-instances N] [--quota-preemptible-vcpus N]
                              [--quota-preemptible-memory-mib N] [--quota-preemptible-disk-gib N]
    ws-admin project set P [--default-cpu-percent N] [--default-net-mbps N] ...
                           [--quota-preemptible-instances N] ...
    ws-admin project add-user P NAME
    ws-admin project list
    ws-admin project show P                           one project: settings, use and quotas
    ws project show P                                 one of your projects: use, quotas, leases
    ws-admin image publish NAME | unpublish NAME     make an image visible to every user, or not
    ws quota                                          your projects: use, limits, leases
    ws whoami                                         who the service takes you for: user, admin,
                                                      projects

Output follows workspace/cli/render.py (--output json), exit codes workspace/cli/common.py.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from workspace.cli import common, render
from workspace.client_policy import LIMIT_NAMES
from workspace.client_projects import LEASE_ACTIONS, PREEMPTIBLE_QUOTAS, QUOTA_FIELDS
from workspace.domain.leases import duration_text

# The largest quota (the API's signed 64-bit counts).
MAX_QUOTA = 2**63 - 1


def quota_arg(text: str) -> dict[str, int]:
    """--quota instances=N,vcpus=N,...: each a known name with a whole number >= 0."""
    out: dict[str, int] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or name not in QUOTA_FIELDS:
            raise argparse.ArgumentTypeError(
                f"{item!r}: give NAME=N with NAME one of {', '.join(QUOTA_FIELDS)}"
            )
        if not value.isdigit() or int(value) > MAX_QUOTA:
            raise argparse.ArgumentTypeError(
                f"{item!r}: {name} must be a whole number from 0 to {MAX_QUOTA}"
            )
        out[name] = int(value)
    return out


def lease_arg(text: str) -> int:
    """A lease duration of ``project set`` (common.lease_duration_s: 8h, not 8), or 0 / none:
    no lease."""
    if text.strip().lower() in ("0", "none"):
        return 0
    return common.lease_duration_s(text)


def _quota(q: Any) -> str:
    parts = [f"{name}={getattr(q, field)}" for name, field in QUOTA_FIELDS.items()]
    return ",".join(p for p in parts if not p.endswith("=0")) or "no limits"


def add_default_limits(p: argparse.ArgumentParser, unset: str) -> None:
    for name in LIMIT_NAMES:
        p.add_argument(
            "--default-" + name.replace("_", "-"),
            dest="default_" + name,
            type=common.non_negative_int,
            metavar="N",
            help=f"a new workspace's {name} when it asks for none ({unset})",
        )


def default_limits(args: argparse.Namespace) -> dict[str, int]:
    return {n: getattr(args, "default_" + n) for n in LIMIT_NAMES if getattr(args, "default_" + n)}


def add_preemptible_quotas(p: argparse.ArgumentParser, unset: str) -> None:
    """--quota-preemptible-instances/-vcpus/-memory-mib: the preemptible class's quotas,
    counted apart from the normal ones (0: no limit)."""
    for name in PREEMPTIBLE_QUOTAS:
        p.add_argument(
            "--quota-" + name,
            dest="quota_" + QUOTA_FIELDS[name],
            type=common.non_negative_int,
            metavar="N",
            help=f"the preemptible class's {name.removeprefix('preemptible-')} quota "
            f"(0: no limit; {unset})",
        )


def given_quotas(args: argparse.Namespace) -> dict[str, int]:
    """Every --quota given (repeatable: `--quota instances=20 --quota vcpus=64` is both;
    a name given twice, the last), then the --quota-preemptible-* options."""
    out = {name: n for given in args.quota or [] for name, n in given.items()}
    return {**out, **preemptible_quotas(args)}


def preemptible_quotas(args: argparse.Namespace) -> dict[str, int]:
    """The --quota-preemptible-* options given: {"preemptible-vcpus": N, ...}."""
    out = {}
    for name in PREEMPTIBLE_QUOTAS:
        value = getattr(args, "quota_" + QUOTA_FIELDS[name])
        if value is not None:
            out[name] = value
    return out


def project_rows(projects: list[Any]) -> str:
    return render.table(
        ["NAME", "QUOTA", "DEFAULT_LEASE", "MAX_LEASE", "ON_EXPIRY", "DEFAULT_LIMITS", "USERS"],
        [
            [
                p.name,
                _quota(p.quota),
                duration_text(p.default_lease_s) if p.default_lease_s else "-",
                duration_text(p.max_lease_s) if p.max_lease_s else "-",
                "destroy" if p.on_expiry == LEASE_ACTIONS["destroy"] else "stop",
                render.limits_text(p.default_limits) or "-",
                ",".join(p.users) or "-",
            ]
            for p in projects
        ],
    )


def quota_rows(uses: list[Any]) -> str:
    """One row per project and quota, the normal class's first, then the preemptible
    class's (counted apart)."""
    rows = []
    for u in uses:
        for name, field in QUOTA_FIELDS.items():
            limit = getattr(u.limits, field)
            rows.append([u.project, name, getattr(u.used, field), limit or "-"])
    return render.table(["PROJECT", "QUOTA", "USED", "LIMIT"], rows)


def lease_lines(uses: list[Any]) -> str:
    """A line per project on its lease policy, which a member could learn only from a
    refusal before: what a new workspace gets, the longest it may have, its end."""
    out = []
    for u in uses:
        if not u.HasField("leases"):
            continue  # a service older than the field: its policy unknown, not "no lease"
        p = u.leases
        if not (p.default_lease_s or p.max_lease_s):
            out.append(f"project {u.project}: no lease (its workspaces live until destroyed)")
            continue
        default = duration_text(p.default_lease_s or p.max_lease_s)
        most = (
            f"at most {duration_text(p.max_lease_s)} from now (--lease, `ws lease extend`)"
            if p.max_lease_s
            else "any length asked (--lease, `ws lease extend`)"
        )
        end = "destroyed" if p.on_expiry == LEASE_ACTIONS["destroy"] else "stopped"
        out.append(
            f"project {u.project}: a new workspace's lease is {default}, {most}; "
            f"at its end the workspace is {end}"
        )
    return "\n".join(out)


def user_quota_text(uses: list[Any]) -> str:
    """`ws quota`, `ws project show`: the quotas, a line for each one a project is over
    (an admin lowered it: a member's creates are refused, saying "exceeded already"),
    then each project's lease policy."""
    parts = [quota_rows(uses), "\n".join(over_quota(uses)), lease_lines(uses)]
    return "\n\n".join(part for part in parts if part)


def over_quota(uses: list[Any]) -> list[str]:
    """A line for each quota a project's use is over (an admin lowered it below)."""
    out = []
    for u in uses:
        for name, field in QUOTA_FIELDS.items():
            limit, used = getattr(u.limits, field), getattr(u.used, field)
            if 0 < limit < used:
                what = (
                    "images are"
                    if field == "image_bytes"
                    else "preemptible workspaces are"
                    if name in PREEMPTIBLE_QUOTAS
                    else "workspaces are"
                )
                out.append(
                    f"project {u.project} uses {used} {name}, more than its quota of {limit}: "
                    f"new {what} refused until it is back under; those it has stay"
                )
    return out


def quota_dict(use: Any) -> dict[str, Any]:
    """A project's use and limits as JSON: the ProjectQuota, and its ``project`` as
    ``name`` too, the key a project (`ws-admin project list`) and every other object
    the CLIs print is named by."""
    data = render.plain(use)
    return {"name": use.project, **data}


def show(client: Any, args: argparse.Namespace, admin: bool) -> int:
    """`project show P`: its use and quotas, both classes (an admin: its settings too)."""
    uses = client.quota(args.name)
    if not admin:
        render.emit(args, quota_dict(uses[0]), user_quota_text(uses))
        return common.EXIT_OK
    spec = next(p for p in client.list_projects() if p.name == args.name)
    data = {"name": spec.name, "project": render.plain(spec), "quota": quota_dict(uses[0])}
    parts = [project_rows([spec]), quota_rows(uses), "\n".join(over_quota(uses))]
    render.emit(args, data, "\n\n".join(part for part in parts if part))
    return common.EXIT_OK


def register_admin(
    subparsers: Any,
    images: Any,
    parent: argparse.ArgumentParser,
    client_for: common.ClientFor,
) -> None:
    """Add `project create|add-user|list` to ws-admin, `publish`/`unpublish` to its
    `image` subcommands (``images``)."""

    def create(args: argparse.Namespace) -> int:
        p = client_for(args).create_project(
            args.name,
            given_quotas(args),
            args.default_lease or 0,
            args.max_lease or 0,
            args.on_expiry,
            default_limits(args),
        )
        render.emit(args, p, project_rows([p]))
        return common.EXIT_OK

    def set_(args: argparse.Namespace) -> int:
        """What is given changes; the rest stays (a quota left out of a class keeps
        its value)."""
        client = client_for(args)
        limits_given = any(getattr(args, "default_" + n) is not None for n in LIMIT_NAMES)
        quota = given_quotas(args)
        lease_given = (args.default_lease, args.max_lease, args.on_expiry) != (None,) * 3
        known = (
            next((p for p in client.list_projects() if p.name == args.name), None)
            if quota or lease_given  # (what is left out of them stays as it is)
            else None
        )
        normal = [n for n in QUOTA_FIELDS if n not in PREEMPTIBLE_QUOTAS]
        for names in (normal, PREEMPTIBLE_QUOTAS):
            if known is not None and any(k in names for k in quota):
                # The quotas of a class named but left out keep their values.
                quota = {**{n: getattr(known.quota, QUOTA_FIELDS[n]) for n in names}, **quota}
        leases = None
        if lease_given:
            was = (
                (known.default_lease_s, known.max_lease_s, known.on_expiry) if known else (0, 0, 0)
            )
            action = "destroy" if was[2] == LEASE_ACTIONS["destroy"] else "stop"
            leases = (
                was[0] if args.default_lease is None else args.default_lease,
                was[1] if args.max_lease is None else args.max_lease,
                args.on_expiry or action,
            )
        if not (limits_given or quota or lease_given):
            raise common.UsageError(
                "nothing to change: give --quota, --default-lease, --max-lease, --on-expiry, "
                "--default-* limits (0 each: none) or --quota-preemptible-*"
            )
        p = client.set_project(
            args.name,
            default_limits=default_limits(args) if limits_given else None,
            quota=quota or None,
            leases=leases,
        )
        over = over_quota(client.quota(p.name)) if quota and not render.wants_json(args) else []
        render.emit(args, p, "\n".join([project_rows([p]), *over]))
        return common.EXIT_OK

    def remove_user(args: argparse.Namespace) -> int:
        client = client_for(args)
        p = client.remove_project_user(args.name, args.user)
        said = f"user {args.user} is no longer a recorded member of {p.name}"
        if not render.wants_json(args):  # what stays behind, which the admin may miss
            live = sum(
                w.owner == args.user and w.project == p.name
                for w in client.list_workspaces(all_users=True)
            )
            if live:
                said += (
                    f"; {live} live workspace(s) of theirs stay in {p.name} and count against "
                    f"its quota until destroyed (`ws list --all-users`)"
                )
        render.emit(args, p, said)
        return common.EXIT_OK

    def delete(args: argparse.Namespace) -> int:
        p = client_for(args).delete_project(args.name)
        render.emit(
            args, p, f"project {p.name} deleted (with its {len(p.users)} recorded member(s))"
        )
        return common.EXIT_OK

    def add_user(args: argparse.Namespace) -> int:
        p = client_for(args).add_project_user(args.name, args.user)
        render.emit(args, p, f"user {args.user} is in project {p.name}")
        return common.EXIT_OK

    def list_(args: argparse.Namespace) -> int:
        listed = client_for(args).list_projects()
        render.emit_list(
            args, listed, project_rows, "no projects; `ws-admin project create NAME` makes one"
        )
        return common.EXIT_OK

    def publish(args: argparse.Namespace) -> int:
        public = args.image_command == "publish"
        img = client_for(args).set_image_public(args.name, public)
        word = "public: every user sees it" if public else "private to its owner and project"
        render.emit(args, render.image_dict(img), f"image {img.name} is {word}")
        return common.EXIT_OK

    p = subparsers.add_parser("project", parents=[parent], help="projects: quotas and members")
    sub = p.add_subparsers(dest="project_command", metavar="COMMAND", required=True)
    q = sub.add_parser("create", parents=[parent], help="make a project")
    q.add_argument("name", metavar="P", help="the project's name")
    q.add_argument(
        "--quota",
        type=quota_arg,
        action="append",
        metavar="instances=N,vcpus=N,memory-mib=N,disk-gib=N,image-bytes=N",
        help="limits (0 or left out: no limit; repeatable)",
    )
    q.add_argument(
        "--default-lease", type=common.lease_duration_s, metavar="8h", help="a new workspace's"
    )
    q.add_argument(
        "--max-lease", type=common.lease_duration_s, metavar="72h", help="the longest allowed"
    )
    q.add_argument(
        "--on-expiry",
        choices=sorted(LEASE_ACTIONS),
        default="stop",
        help="what happens to a workspace whose lease ends (default stop)",
    )
    add_default_limits(q, "default: the site's")
    add_preemptible_quotas(q, "left out: no limit")
    q.set_defaults(func=create)
    q = sub.add_parser(
        "set",
        parents=[parent],
        help="change a project's quotas, lease policy or default limits: what is given "
        "changes, the rest stays (default limits given replace them all)",
    )
    q.add_argument("name", metavar="P", help="the project's name")
    q.add_argument(
        "--quota",
        type=quota_arg,
        action="append",
        metavar="instances=N,vcpus=N,...",
        help="quotas to change (0: no limit; repeatable); those left out stay",
    )
    q.add_argument("--default-lease", type=lease_arg, metavar="8h", help="0 or none: none")
    q.add_argument("--max-lease", type=lease_arg, metavar="72h", help="0 or none: none")
    q.add_argument(
        "--on-expiry",
        choices=sorted(LEASE_ACTIONS),
        help="what happens to a workspace whose lease ends",
    )
    add_default_limits(q, "left out: the site's")
    add_preemptible_quotas(q, "left out: unchanged")
    q.set_defaults(func=set_)
    q = sub.add_parser("add-user", parents=[parent], help="add a user to a project")
    q.add_argument("name", metavar="P", help="the project's name")
    q.add_argument("user", metavar="NAME")
    q.set_defaults(func=add_user)
    q = sub.add_parser(
        "remove-user",
        parents=[parent],
        help="take a user out of a project's recorded members (a certificate naming the "
        "project still counts: revoke it)",
    )
    q.add_argument("name", metavar="P", help="the project's name")
    q.add_argument("user", metavar="NAME")
    q.set_defaults(func=remove_user)
    q = sub.add_parser(
        "delete",
        parents=[parent],
        help="forget a project nothing live belongs to (no workspace but terminated ones, "
        "no image, no backfill); its past usage stays reported under its name",
        description="Refused while a workspace (not terminated), an image or a backfill "
        "entry belongs to the project. Its past usage stays reported under its name to "
        "admins (`ws-admin usage`) and to each owner (their own). A project made later "
        "under the same name is a new one: its members see none of the old one's usage "
        "or workspaces; `ws-admin usage --until T` (T: when it was made, `ws-admin "
        "events --kind project`) bills the old one apart. A certificate naming the "
        "old project makes its holder a member of the new one: revoke it first.",
    )
    q.add_argument("name", metavar="P", help="the project's name")
    q.set_defaults(func=delete)
    q = sub.add_parser("list", parents=[parent], help="every project")
    q.set_defaults(func=list_)
    q = sub.add_parser(
        "show", parents=[parent], help="one project: settings, and use and quotas of both classes"
    )
    q.add_argument("name", metavar="P", help="the project's name")
    q.set_defaults(func=lambda args: show(client_for(args), args, admin=True))
    for name, text in (
        ("publish", "make an image visible to every user"),
        ("unpublish", "make an image private to its owner and project again"),
    ):
        q = images.add_parser(name, parents=[parent], help=text)
        q.add_argument("name", help="image name (name:version)")
        q.set_defaults(func=publish)


def whoami_text(me: Any) -> str:
    """`ws whoami`: the user, whether an admin, the projects the service counts."""
    return render.fields(
        [
            ("user", me.user),
            ("admin", "yes" if me.admin else "no"),
            ("projects", ", ".join(me.projects) or "-"),
        ]
    )


def unknown_projects(names: list[str]) -> str:
    """What `ws quota` says of the projects the caller's certificate names that the site
    does not know (no quota, no workspace): it said "you belong to no project"."""
    which = ("project " if len(names) == 1 else "projects ") + ", ".join(names)
    return (
        f"your certificate names {which}, which this site does not know (it has no quota "
        f"and takes no workspace): an admin makes it with `ws-admin project create "
        f"{names[0]}`, or issues you a certificate naming a project that exists"
    )


def whoami(client: Any, args: argparse.Namespace) -> int:
    me = client.whoami()
    render.emit(args, me, whoami_text(me))
    return common.EXIT_OK


def register_user(
    subparsers: Any, parent: argparse.ArgumentParser, client_for: common.ClientFor
) -> None:
    """Add `quota`, `project list` and `project show` to ws."""

    def quota(args: argparse.Namespace) -> int:
        """The caller's projects' use and limits; on stderr, in JSON mode too (whose
        ``[]`` explained nothing), why there is none, or which of the projects the
        caller's certificate names the site does not know."""
        client = client_for(args)
        uses = client.quota()
        listed = {u.project for u in uses}
        unknown = [p for p in client.whoami().projects if p not in listed]
        note = unknown_projects(unknown) if unknown else ""
        if not uses and not unknown:
            note = "you belong to no project (no project quota applies)"
        render.emit_list(args, uses, user_quota_text, note, quota_dict)
        if note and (uses or render.wants_json(args)):  # else emit_list said it
            print(note, file=sys.stderr)
        return common.EXIT_OK

    p = subparsers.add_parser("quota", parents=[parent], help="your projects: use and limits")
    p.set_defaults(func=quota)
    p = subparsers.add_parser(
        "whoami", parents=[parent], help="who the service takes you for: user, admin, projects"
    )
    p.set_defaults(func=lambda args: whoami(client_for(args), args))
    p = subparsers.add_parser("project", parents=[parent], help="your projects")
    sub = p.add_subparsers(dest="project_command", metavar="COMMAND", required=True)
    q = sub.add_parser(
        "list", parents=[parent], help="the projects you belong to: use and limits (as `ws quota`)"
    )
    q.set_defaults(func=quota)
    q = sub.add_parser(
        "show", parents=[parent], help="one of your projects: use and quotas of both classes"
    )
    q.add_argument("name", metavar="P", help="the project's name")
    q.set_defaults(func=lambda args: show(client_for(args), args, admin=False))
