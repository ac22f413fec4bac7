"""Hand-packed hot-path commands are exactly what redis-py would send."""

from redis.asyncio.connection import Connection

from switchboard import resp


def _redis_py(*args) -> bytes:
    return b"".join(Connection().pack_command(*args))


def test_xadd_matches_redis_py_encoding():
    out: list[bytes] = []
    packer = resp.XaddPacker()
    packer.pack("sb:call:{MZ1}:in", 3000, b"a", b"\x00\xff\r\n" * 40, 1234567, out)
    packer.pack("sb:call:{MZ1}:in", 3000, b"s", b"", 7, out)
    expected = _redis_py("XADD", "sb:call:{MZ1}:in", "MAXLEN", "~", 3000, "*", "k", "a", "p", b"\x00\xff\r\n" * 40,
                         "t", 1234567) + _redis_py("XADD", "sb:call:{MZ1}:in", "MAXLEN", "~", 3000, "*", "k", "s", "p",
                                                   b"", "t", 7)
    assert b"".join(out) == expected


def test_xread_matches_redis_py_encoding():
    packed = resp.XreadPacker(1000, 2000).pack([("wake", "0-0"), ("sb:call:{MZ1}:out", b"1700000000000-3")])
    assert b"".join(packed) == _redis_py("XREAD", "COUNT", 1000, "BLOCK", 2000, "STREAMS", "wake",
                                         "sb:call:{MZ1}:out", "0-0", "1700000000000-3")


def test_raw_xread_replies_become_field_maps():
    raw = [[b"k1", [[b"1-0", [b"k", b"a", b"p", b"xy"]], [b"2-0", [b"k", b"s"]]]]]
    assert resp.entries_from_xread(raw) == [(b"k1", [(b"1-0", {b"k": b"a", b"p": b"xy"}), (b"2-0", {b"k": b"s"})])]
    assert resp.entries_from_xread(None) == []
    assert resp.entries_from_xread({b"k1": [[b"1-0", [b"k", b"a"]]]}) == [(b"k1", [(b"1-0", {b"k": b"a"})])]
