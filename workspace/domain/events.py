"""Site events: what happened at the site, by whom and why (ops/site_events.py,
store/journal.py; `ws-admin events`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Kind(enum.StrEnum):
    WORKSPACE_CREATED = "workspace.created"
    WORKSPACE_STATE = "workspace.state"
    WORKSPACE_PLACED = "workspace.placed"
    WORKSPACE_QUEUED = "workspace.queued"
    WORKSPACE_REFUSED = "workspace.refused"
    # `ws update`: connectivity, allow rules or limits changed (reason: what changed).
    WORKSPACE_UPDATED = "workspace.updated"
    # `ws reboot` (a user's or an admin's; who: the caller): asked of a RUNNING workspace,
    # which stays RUNNING, so no workspace.state event tells it (reason: which reboot).
    WORKSPACE_REBOOT = "workspace.reboot"
    # `ws pause` / `ws resume` (a user's or an admin's; who: the caller): the state stays
    # as it is until the node reports the pause or resume carried out, and that
    # workspace.state event is the node's, so only these tell who asked (reason: what was
    # asked, and whether it withdrew the opposite one its node had not reported done yet).
    WORKSPACE_PAUSE = "workspace.pause"
    WORKSPACE_RESUME = "workspace.resume"
    QUOTA_REFUSED = "quota.refused"
    # A normal request took preemptible workspaces' capacity (reason: the victims), and
    # each victim (subject: its owner); ops/preempt.py.
    PREEMPTION = "preemption"
    WORKSPACE_PREEMPTED = "workspace.preempted"
    NODE_REGISTERED = "node.registered"
    NODE_STATE = "node.state"
    NODE_REMOVED = "node.removed"
    # An agent was refused a node's name: another agent reports for it, or another
    # certificate is bound to it (subject: the refused agent's key; state: what for;
    # reason: the refusal). One per node, agent and five minutes (ops/node_refusals.py).
    NODE_REFUSED = "node.refused"
    # A condition of a node appeared or cleared, as its agent reported (subject: the
    # condition, ``no-isolation`` or ``network-not-ready:NET``; state: appeared or
    # cleared; reason: its message); ops/node_conditions.py.
    NODE_CONDITION = "node.condition"
    TRUST_DECISION = "trust.decision"
    # `ws-admin trust add/revoke/mode` (ops/trust_admin.py; subject: the key id, the
    # digest, or "policy"; reason: what it was given or what changed old -> new, the new
    # policy version, and the workspaces it stopped, if any).
    TRUST_KEY_ADDED = "trust.key_added"
    TRUST_KEY_UPDATED = "trust.key_updated"
    TRUST_KEY_REVOKED = "trust.key_revoked"
    TRUST_DIGEST_REVOKED = "trust.digest_revoked"
    TRUST_MODE_SET = "trust.mode_set"
    LEASE_WARNING = "lease.warning"
    LEASE_EXTENDED = "lease.extended"
    LEASE_EXPIRED = "lease.expired"
    # A cluster role grew or shrank (reason: by whom/what and why; subject: the role).
    CLUSTER_SCALED = "cluster.scaled"
    # `ws-admin network create/set/delete` (subject: the network; reason: its subnet,
    # or what changed).
    NETWORK_CREATED = "network.created"
    NETWORK_UPDATED = "network.updated"
    NETWORK_DELETED = "network.deleted"
    # `ws-admin project create/set/delete/add-user/remove-user` (subject: the project;
    # reason: its settings, what changed old -> new, or the user): ops/admin_events.py.
    PROJECT_CREATED = "project.created"
    PROJECT_UPDATED = "project.updated"
    PROJECT_DELETED = "project.deleted"
    PROJECT_USER_ADDED = "project.user_added"
    PROJECT_USER_REMOVED = "project.user_removed"
    # `ws-admin backfill set/clear` (subject: the image; reason: the entry, what changed,
    # or how many of its workspaces the clear destroyed).
    BACKFILL_SET = "backfill.set"
    BACKFILL_CLEARED = "backfill.cleared"
    # Images pushed, imported or saved; made public or private; deleted (subject: the
    # image; reason: its project, visibility and size, or what changed).
    IMAGE_ADDED = "image.added"
    IMAGE_UPDATED = "image.updated"
    IMAGE_DELETED = "image.deleted"
    # `ws image save` (ops/save.py): begun (subject: the image to make), ended with the
    # image made, or failed (reason: why); a save whose service died lapses (failed).
    WORKSPACE_SAVING = "workspace.saving"
    WORKSPACE_SAVED = "workspace.saved"
    WORKSPACE_SAVE_FAILED = "workspace.save_failed"
    # A workspace destroyed while its node was not reachable gave back its addresses
    # (subject) and capacity: the node confirmed its VM gone, or was removed (reason).
    WORKSPACE_RELEASED = "workspace.released"


class Refusal(enum.StrEnum):
    """Why a request was refused, as few words as a metric label may carry."""

    CAPACITY = "capacity"
    QUOTA = "quota"
    TRUST = "trust"
    # The one a request is made for no longer has the rights it needs (an autoscaler
    # whose setter's certificate was revoked, or who left the project: ops/autoscale.py;
    # a grow waiting for capacity whose asker did: ops/queue.py).
    RIGHTS = "rights"
    OTHER = "other"


@dataclass(frozen=True)
class SiteEvent:
    """One site event, as ``Client.watch_events`` (and the workspace's and cluster's
    event watches) give them; the fields of admin.proto's ``SiteEvent``.

    ``at``: when, in epoch seconds. ``kind``: a ``Kind`` value (``workspace.state``,
    ``node.state``, ``trust.decision``, ...). ``who``: the caller that caused it
    (``user:alice``, ``node:n1``) or ``system``. ``workspace_id``, ``workspace_name``,
    ``node``, ``cluster`` (an id): what it is about, "" where none. ``subject``: another
    thing it names (an image, a key, a project). ``state`` and ``previous``: the new state
    (or verdict) and the one before, where there is one. ``reason``: why. ``id``:
    increasing in the order of commits; give the last one seen as ``after_id`` to resume
    a watch after it."""

    at: float
    kind: str
    who: str
    workspace_id: str = ""
    workspace_name: str = ""
    node: str = ""
    cluster: str = ""
    subject: str = ""
    state: str = ""
    previous: str = ""
    reason: str = ""
    id: int = 0
    # Not stored: seconds since the workspace was created, on its first RUNNING and on a
    # placement from the queue (metrics: create → running, queue wait).
    elapsed_s: float = 0.0


@dataclass(frozen=True)
class EventFilter:
    """The site events a reader wants: each filter given must match (none: all).

    ``kinds``: a kind (``workspace.state``) or a family, the first word of kinds
    (``image``: ``image.added``, ``image.deleted``, ...); any of them. ``workspace``: a
    workspace's id or name. ``node``: a node's name. ``cluster``: a cluster's id (its
    members' events and its own; a reader may name it, and the service finds its id as
    GetCluster does for that reader: ``ops/site_events.of_site``)."""

    kinds: tuple[str, ...] = ()
    workspace: str = ""
    node: str = ""
    cluster: str = ""

    def unknown_kinds(self) -> str:
        """What is wrong with its kinds ("": nothing): those neither a kind nor a family."""
        unknown = [k for k in self.kinds if k not in KNOWN_KINDS]
        if not unknown:
            return ""
        return (
            f"unknown event kind(s) {', '.join(map(repr, unknown))}; kinds and families: "
            f"{', '.join(sorted(KNOWN_KINDS))}"
        )

    def admits(self, e: SiteEvent) -> bool:
        """Whether ``e`` may be one the filter gives (ops/site_events.py ``_filtered``):
        of its kinds, workspace (id or name) and node. Of a cluster given by name only
        its id is stored: an event of no cluster is outside, one of a cluster may not be."""
        return (
            (not self.kinds or any(e.kind == k or e.kind.startswith(k + ".") for k in self.kinds))
            and (not self.workspace or self.workspace in (e.workspace_id, e.workspace_name))
            and (not self.node or e.node == self.node)
            and (not self.cluster or bool(e.cluster))
        )


# Every kind, and every family (a kind's first word), as ``EventFilter.kinds`` takes them.
KNOWN_KINDS = frozenset(k.value for k in Kind) | frozenset(k.value.split(".")[0] for k in Kind)
