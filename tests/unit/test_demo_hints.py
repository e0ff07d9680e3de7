"""`make demo`'s closing hints (workspace/demo.py): `ws ssh demo` only when the demo could
give the VM the caller's SSH key; without one, how to make a key and a VM that has it."""

from __future__ import annotations

from workspace.demo import next_steps


def test_with_a_key_the_demo_vm_is_reached_over_ssh() -> None:
    text = next_steps(True)
    assert "  ws ssh demo " in text and "ssh-keygen" not in text


def test_without_a_key_no_ssh_into_the_demo_vm_is_suggested() -> None:
    text = next_steps(False)
    assert "ws ssh demo" not in text.replace("no `ws ssh demo`", "")
    steps = text.index("ssh-keygen"), text.index("ws key add"), text.index("ws create")
    assert list(steps) == sorted(steps)  # the key first, then a VM created after it
    assert "ws exec demo" in text  # reaches the demo VM without a key
