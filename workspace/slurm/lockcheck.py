"""``ws-slurm check``'s look at ``lock_file`` (``nodelock``): could SlurmUser, who runs
ws-slurm under slurmctld, open it as a run does (made 0600 if missing, in a directory
made 0700 if missing)? A run that cannot does nothing: its nodes are DOWN with
``ws: config: lock file …``. The default, /var/lib/ws-slurm/nodes.lock, is in a
directory nothing makes but the admin, and SlurmUser cannot make it in /var/lib: a site
that upgraded to the version with ``lock_file`` without making it had every resume
fail, and ``check`` said nothing of it.

``check`` only looks (``os.stat``): it makes neither the file nor its directory, for it
runs as whoever runs it, often root, and what it made would be root's, which SlurmUser
could not open (the very failure it is there to find). The permission bits are read as
the kernel reads them for SlurmUser's uid and groups (root may do anything); ACLs and
read-only mounts are not looked at. Without SlurmUser (scontrol cannot tell, or it is no
user of this host) the user running ``check`` is taken for it (by its uid in a container
whose passwd does not name it).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

R, W, X = 4, 2, 1


@dataclass(frozen=True)
class RunsAs:
    """The user ws-slurm's runs are taken to run as."""

    name: str
    uid: int
    group: str  # the primary group's name (for install -g)
    gids: frozenset[int]
    label: str  # "SlurmUser slurm", or "you (root; ...)"

    def may(self, st: os.stat_result, want: int) -> bool:
        """Whether this user has the ``want`` bits (R, W, X) on what ``st`` is of."""
        if self.uid == 0:
            return True
        if st.st_uid == self.uid:
            bits = st.st_mode >> 6
        elif st.st_gid in self.gids:
            bits = st.st_mode >> 3
        else:
            bits = st.st_mode
        return bits & want == want


def _user(pw: pwd.struct_passwd, label: str) -> RunsAs:
    try:
        group = grp.getgrgid(pw.pw_gid).gr_name
    except KeyError:
        group = str(pw.pw_gid)
    gids = frozenset(os.getgrouplist(pw.pw_name, pw.pw_gid))
    return RunsAs(pw.pw_name, pw.pw_uid, group, gids, label)


def runs_as(slurm_user: tuple[str, int | None] | None) -> RunsAs:
    """SlurmUser (``Scontrol.slurm_user``) as a user of this host, else the user running
    ``check`` (said in its ``label``)."""
    if slurm_user is not None:
        name, uid = slurm_user
        try:
            pw = pwd.getpwuid(uid) if uid is not None else pwd.getpwnam(name)
        except KeyError:
            pass
        else:
            return _user(pw, f"SlurmUser {name}")
    why = "scontrol did not say who SlurmUser is" if slurm_user is None else (
        f"SlurmUser {slurm_user[0]} is no user of this host")  # fmt: skip
    uid = os.geteuid()
    try:
        me = pwd.getpwuid(uid)
    except KeyError:
        # A uid without a name (a container's): named by its number, which install and
        # chown take too (as nodelock names it).
        gid = os.getegid()
        try:
            group = grp.getgrgid(gid).gr_name
        except KeyError:
            group = str(gid)
        gids = frozenset({gid, *os.getgroups()})
        return RunsAs(str(uid), uid, group, gids, f"you (uid {uid}, no name; {why})")
    return _user(me, f"you ({me.pw_name}; {why})")


def owner(st: os.stat_result) -> str:
    """The name of the user owning what ``st`` is of (the uid if none)."""
    try:
        return pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        return str(st.st_uid)


def check_lock_file(path: str, user: RunsAs, out: Callable[[str], None]) -> bool:
    """False (and said) when ``user`` could not open the lock file at ``path`` as a run
    does; True when it could, or when this check cannot look (said, for it is then
    no finding of a problem)."""
    where = Path(os.path.abspath(path))
    fails = "every resume, suspend and resume-fail would fail, its nodes DOWN"
    make = f"install -d -o {user.name} -g {user.group} -m 0700 {where.parent}"
    try:
        # /, /var, /var/lib, /var/lib/ws-slurm, then the file itself
        for d in (*reversed(where.parents), where):
            try:
                st = os.stat(d)
            except FileNotFoundError:
                # The run makes it and what is below it, in its parent (which is there).
                if user.may(os.stat(d.parent), W | X):
                    return True
                missing = f"directory {where.parent}" if d != where else "it"
                fix = "make it" if d != where else "make the directory SlurmUser's"
                out(
                    f"lock file {path}: {missing} does not exist, and {user.label} cannot "
                    f"make it ({d.parent} is not writable by {user.name}): {fails}; "
                    f"{fix}: {make}"
                )
                return False
            if d == where:
                break
            if not stat.S_ISDIR(st.st_mode):
                out(f"lock file {path}: {d} is not a directory: {fails}; set lock_file")
                return False
            if not user.may(st, X):
                out(
                    f"lock file {path}: {user.label} cannot reach it ({d} is "
                    f"{stat.filemode(st.st_mode)} {owner(st)}): {fails}"
                )
                return False
    except OSError as exc:  # this user may not look where SlurmUser may
        out(f"lock file {path}: not checked: {exc.filename}: {exc.strerror}")
        return True
    if not stat.S_ISREG(st.st_mode):
        out(f"lock file {path}: not a regular file: {fails}; set lock_file")
        return False
    if not user.may(st, R | W):
        out(
            f"lock file {path}: {user.label} cannot open it for writing (it is "
            f"{stat.filemode(st.st_mode)} {owner(st)}, made by a run as another user?): "
            f"{fails}; chown {user.name}:{user.group} {path}"
        )
        return False
    return True
