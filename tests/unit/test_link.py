"""The agent's link decodes each AssignmentSet into domain orders at the edge."""

from __future__ import annotations

from agent.link import decode
from images.model import Mode
from workspace.domain.states import Desired
from workspace.node.v1 import nodes_pb2
from workspace.v1 import common_pb2, trust_pb2

DIGEST = "sha256:" + "a" * 64


def _aset() -> nodes_pb2.AssignmentSet:
    return nodes_pb2.AssignmentSet(
        generation=3,
        assignments=[
            nodes_pb2.Assignment(
                workspace_id="w1",
                name="one",
                desired=common_pb2.DESIRED_STATE_STOPPED,
                disks=[
                    nodes_pb2.DiskAssignment(
                        name="root",
                        digest=DIGEST,
                        format="qcow2",
                        mode=common_pb2.PARTITION_MODE_READONLY,
                        sources=["peer:1"],
                    )
                ],
                nics=[nodes_pb2.NicAssignment(network="default", mac="52:54:00:00:00:01")],
            )
        ],
        prefetch=[DIGEST],
    )


def test_orders_are_domain_objects() -> None:
    orders, _ = decode(_aset())
    (order,) = orders.orders
    assert (orders.generation, orders.prefetch) == (3, (DIGEST,))
    assert (order.workspace_id, order.name, order.desired) == ("w1", "one", Desired.STOPPED)
    (disk,) = order.disks
    assert (disk.partition.mode, disk.partition.format, disk.sources) == (
        Mode.READONLY,
        "qcow2",
        ("peer:1",),
    )
    assert order.nics[0].mac == "52:54:00:00:00:01"
    assert order.digests() == [DIGEST]


def test_no_policy_in_the_set_means_none_is_checked() -> None:
    assert decode(_aset())[1] is None


def test_a_policy_in_the_set_is_decoded() -> None:
    aset = _aset()
    enforce = trust_pb2.TRUST_MODE_ENFORCE
    aset.policy.CopyFrom(
        trust_pb2.TrustPolicy(version=5, mode=enforce, stop_running_on_revoke=True)
    )
    orders, policy = decode(aset)
    assert policy is not None and (policy.version, policy.enforce) == (5, True)
    assert orders.stop_running_on_revoke
