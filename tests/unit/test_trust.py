"""Which trusted key `ws-admin trust revoke KEYID` names (workspace/ops/trust_admin.py)."""

from __future__ import annotations

import pytest

from workspace.errors import InvalidArgument, NotFound
from workspace.ops.trust_admin import find_key


def test_a_key_is_named_by_its_full_id_or_one_long_prefix_taken_literally() -> None:
    ids = ["0a1b2c3d" + "e" * 56, "0a1b2c3d" + "f" * 56, "9" * 64]
    assert find_key(ids, "9" * 64) == "9" * 64
    assert find_key(ids, " 99999999 ") == "9" * 64
    assert find_key(ids, "0A1B2C3DE") == ids[0]
    with pytest.raises(InvalidArgument, match=f"matches 2 keys \\({ids[0]}, {ids[1]}\\)"):
        find_key(ids, "0a1b2c3d")
    for bad in ("", "e", "0a1b2c3", "%", "_" * 8, "0a1b2c3d%", "9" * 65):
        with pytest.raises(InvalidArgument):
            find_key(ids, bad)
    with pytest.raises(NotFound, match="no trusted key '12345678'"):
        find_key(ids, "12345678")
