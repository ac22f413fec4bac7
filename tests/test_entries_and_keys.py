"""Redis entry codec and key naming."""

import pytest

from switchboard import entries, keys


def test_entries_round_trip_through_their_field_maps():
    for entry in (entries.audio(b"\x00\xff" * 80, 123), entries.stop("twilio_stop"), entries.clear(),
                  entries.mark("reply-1"), entries.hangup("end_call"), entries.dtmf("#")):
        fields = entry.fields()
        assert entries.decode(fields) == entry


def test_unknown_entry_kind_is_an_error_not_a_crash():
    with pytest.raises(entries.EntryError):
        entries.decode({b"k": b"?", b"p": b""})
    with pytest.raises(entries.EntryError):
        entries.decode({b"k": b"a", b"t": b"soon"})


def test_every_per_call_key_shares_one_cluster_hash_tag():
    k = keys.Keys("sb:")
    sid = "MZ0123"
    for key in (*k.per_call(sid), k.lease(sid)):
        assert "{MZ0123}" in key and key.startswith("sb:")
    assert k.caller_audio(sid) == "sb:call:{MZ0123}:in"
    assert k.agent_output(sid) == "sb:call:{MZ0123}:out"
