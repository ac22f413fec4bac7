"""The conversation state machine on its own: no sockets, no Redis, a clock we move by hand."""

from __future__ import annotations

import orjson

from switchboard import entries
from switchboard.agent_settings import AgentSettings
from switchboard.conversation import (
    SEGMENT_BYTES,
    Conversation,
    ConversationConfig,
    Count,
    Emit,
    GiveUp,
    Hangup,
    Observe,
    Reconnect,
    Record,
    ToAgent,
    ToCaller,
    heard_prefix,
    is_reply_start,
    mark_name,
    parse_mark,
)
from switchboard.entries import Entry, Kind

TEXT = "One two three four five six seven eight nine ten."


def conversation(**blocks) -> Conversation:
    conv = Conversation(ConversationConfig.from_settings(AgentSettings.model_validate(blocks)), 0.0, "s1")
    conv.on_agent_connected(0.0)  # the watchdogs run while a Deepgram session is up
    return conv


def emitted(actions, kind: str) -> list[dict]:
    return [a.data for a in actions if isinstance(a, Emit) and a.type == kind]


def marks(actions) -> list[str]:
    return [a.entry.payload.decode() for a in actions if isinstance(a, ToCaller) and a.entry.kind is Kind.MARK]


def echo(name: str, at_s: float) -> Entry:
    return Entry(Kind.MARK, name.encode(), int(at_s * 1e6))


def cleared(names: list[str], at_s: float) -> Entry:
    return Entry(Kind.CLEARED, orjson.dumps(names), int(at_s * 1e6))


def speak(conv: Conversation, now: float, audio_bytes: int, chunk: int = 1600) -> list:
    """A reply: its text, AgentStartedSpeaking, `audio_bytes` of audio from `now` on (real time)."""
    actions = conv.on_agent_message({"type": "ConversationText", "role": "assistant", "content": TEXT}, now)
    actions += conv.on_agent_message({"type": "AgentStartedSpeaking", "total_latency": 0.5,
                                      "ttt_latency": 0.3, "tts_latency": 0.2}, now)
    for n in range(audio_bytes // chunk):
        actions += conv.on_agent_audio(chunk, now + n * chunk / 8000)
    return actions


def test_mark_names_round_trip_and_foreign_names_are_ignored():
    assert parse_mark(mark_name("ab", 3, 1600)) == ("ab", 3, 1600, False)
    assert parse_mark(mark_name("ab", 3, 1600, end=True)) == ("ab", 3, 1600, True)
    assert is_reply_start("sb:ab:3:0") and not is_reply_start("sb:ab:3:0:end") and not is_reply_start("sb:ab:3:8")
    for name in ("reply-1", "sb:ab:x:1", "sb:ab:1", "sb:ab:1:2:done", "sb-hangup"):
        assert parse_mark(name) is None


def test_a_reply_is_marked_at_its_start_every_segment_and_its_end():
    conv = conversation()
    actions = speak(conv, 0.0, 3 * SEGMENT_BYTES)
    actions += conv.on_agent_message({"type": "AgentAudioDone"}, 1.2)
    assert marks(actions) == ["sb:s1:1:0", f"sb:s1:1:{SEGMENT_BYTES}", f"sb:s1:1:{2 * SEGMENT_BYTES}",
                              f"sb:s1:1:{3 * SEGMENT_BYTES}", f"sb:s1:1:{3 * SEGMENT_BYTES}:end"]
    assert conv.playing and not conv.agent_speaking


def test_a_reply_played_to_its_end_mark_was_heard_in_full():
    conv = conversation()
    speak(conv, 0.0, 8000)
    conv.on_agent_message({"type": "AgentAudioDone"}, 1.0)
    conv.on_caller_entry(echo("sb:s1:1:0", 0.01), 0.01)
    actions = conv.on_caller_entry(echo("sb:s1:1:8000:end", 1.01), 1.01)
    [heard] = emitted(actions, "reply_heard")
    assert heard == {"reply": 1, "text": TEXT, "heard_text": TEXT, "unheard_text": "", "heard_ms": 1000,
                     "audio_ms": 1000, "interrupted": False, "confirmed": True}
    assert Observe("reply", "complete") in actions and not conv.playing


def test_barge_in_clears_and_the_heard_part_comes_from_marks_and_time():
    conv = conversation()
    speak(conv, 0.0, 16000)  # 2 s of audio, all sent
    conv.on_agent_message({"type": "AgentAudioDone"}, 2.0)
    conv.on_caller_entry(echo("sb:s1:1:0", 10.0), 0.0)  # playback began at edge time 10.0
    conv.on_caller_entry(echo(f"sb:s1:1:{SEGMENT_BYTES}", 10.4), 0.4)
    barge = conv.on_agent_message({"type": "UserStartedSpeaking"}, 0.65)
    assert isinstance(barge[0], ToCaller) and barge[0].entry.kind is Kind.CLEAR
    assert emitted(barge, "barge_in") == [{"reply": 1}]
    # The edge cleared at 10.7: 300 ms after the 400 ms mark; later marks were flushed.
    flushed = [f"sb:s1:1:{n * SEGMENT_BYTES}" for n in range(2, 6)] + ["sb:s1:1:16000:end"]
    actions = conv.on_caller_entry(cleared(flushed, 10.7), 0.7)
    [heard] = emitted(actions, "reply_heard")
    assert heard["heard_ms"] == 700 and heard["audio_ms"] == 2000 and heard["interrupted"]
    assert heard["heard_text"] == heard_prefix(TEXT, 0.35) and heard["text"] == f"{heard['heard_text']} {heard['unheard_text']}"
    # The flushed marks still echo back afterwards; they change nothing.
    for name in flushed:
        assert conv.on_caller_entry(echo(name, 10.71), 0.71) == []
    assert not conv.playing


def test_the_heard_estimate_never_passes_the_first_flushed_mark():
    conv = conversation()
    speak(conv, 0.0, 8000)
    conv.on_caller_entry(echo("sb:s1:1:0", 5.0), 0.0)
    conv.on_agent_message({"type": "UserStartedSpeaking"}, 0.1)
    # A late clear (5 s after playback began) may not claim more than up to the flushed mark.
    [heard] = emitted(conv.on_caller_entry(cleared([f"sb:s1:1:{SEGMENT_BYTES}"], 10.0), 0.2), "reply_heard")
    assert heard["heard_ms"] == 400


def test_a_reply_cut_before_its_first_audio_played_was_not_heard_at_all():
    conv = conversation()
    speak(conv, 0.0, 1600)
    conv.on_agent_message({"type": "UserStartedSpeaking"}, 0.05)
    [heard] = emitted(conv.on_caller_entry(cleared(["sb:s1:1:0"], 1.0), 0.1), "reply_heard")
    assert heard["heard_ms"] == 0 and heard["heard_text"] == "" and heard["unheard_text"] == TEXT


def test_another_sessions_marks_are_not_ours():
    conv = conversation()
    speak(conv, 0.0, 1600)
    assert conv.on_caller_entry(echo("sb:other:1:0", 1.0), 1.0) == []
    assert conv.on_caller_entry(echo("sb:other:1:1600:end", 1.0), 1.0) == []
    assert conv.playing


def test_the_agent_is_told_what_was_cut_off_and_the_note_is_dropped_after_a_full_reply():
    conv = conversation(heard={"tell_agent": True}, think={"prompt": "Be brief."})
    speak(conv, 0.0, 8000)
    conv.on_caller_entry(echo("sb:s1:1:0", 1.0), 0.0)
    conv.on_agent_message({"type": "UserStartedSpeaking"}, 0.5)
    actions = conv.on_caller_entry(cleared(["sb:s1:1:3200"], 1.5), 0.5)
    [update] = [orjson.loads(a.message) for a in actions if isinstance(a, ToAgent)]
    assert update["type"] == "UpdateThink"
    assert update["think"]["prompt"].startswith("Be brief.\n\n[Switchboard] The caller interrupted your last reply.")
    assert update["think"]["provider"]["model"] == "claude-3-5-haiku-latest"
    speak(conv, 2.0, 1600)
    conv.on_agent_message({"type": "AgentAudioDone"}, 2.2)
    actions = conv.on_caller_entry(echo("sb:s1:2:1600:end", 3.0), 2.3)
    [update] = [orjson.loads(a.message) for a in actions if isinstance(a, ToAgent)]
    assert update["think"]["prompt"] == "Be brief."
    assert not [a for a in conv.on_caller_entry(echo("sb:s1:2:1600:end", 3.0), 2.3) if isinstance(a, ToAgent)]


def test_turn_latency_combines_switchboard_and_deepgram_stages():
    conv = conversation()
    conv.on_agent_message({"type": "UserStartedSpeaking"}, 0.0)
    conv.on_caller_transit(1500)
    conv.on_caller_transit(900)
    actions = speak(conv, 1.0, 1600)
    assert Observe("turn_stage", "caller_to_deepgram", 0.0015) in actions
    assert Observe("turn_stage", "deepgram_total", 0.5) in actions
    timing = conv.on_caller_entry(entries.timing("sb:s1:1:0", 2200), 1.01)
    assert timing == [Observe("turn_stage", "worker_to_edge", 0.0022)]
    report = conv.on_agent_message({"type": "AgentAudioDone"}, 1.2)
    report += conv.on_agent_message({"type": "LatencyReport", "total_latency": 0.52, "ttt_text_latency": 0.31,
                                     "bogus": "x", "huge_latency": 1e9}, 1.2)
    assert Observe("turn_stage", "deepgram_ttt_text", 0.31) in report
    assert not [a for a in report if isinstance(a, Observe) and a.label == "deepgram_total"]  # counted once
    [turn] = emitted(conv.on_caller_entry(echo("sb:s1:1:1600:end", 3.0), 1.5), "turn_latency")
    assert turn["stages"]["caller_to_deepgram"] == 1.5 and turn["stages"]["worker_to_edge"] == 2.2
    assert turn["stages"]["deepgram_total"] == 520.0 and "deepgram_huge" not in turn["stages"]
    assert turn["switchboard_ms"] == 3.7


def test_a_silent_line_is_reengaged_then_ended_politely():
    conv = conversation(dead_air={"caller_idle_s": 5, "max_reengage": 2, "reengage_message": "Hello?",
                                  "goodbye_message": "Bye."})
    assert conv.tick(4.9) == []
    first = conv.tick(5.0)
    assert emitted(first, "dead_air") == [{"kind": "caller_idle", "silent_s": 5.0, "action": "reengage", "attempt": 1}]
    assert [orjson.loads(a.message) for a in first if isinstance(a, ToAgent)] == [
        {"type": "InjectAgentMessage", "message": "Hello?"}]
    assert conv.tick(9.9) == []
    assert emitted(conv.tick(10.0), "dead_air")[0]["attempt"] == 2
    last = conv.tick(15.0)
    assert emitted(last, "dead_air")[0]["action"] == "end_call"
    assert not any(isinstance(a, Hangup) for a in last)  # after the goodbye, not over it
    # The goodbye was refused (someone was speaking): hang up anyway rather than leave dead air.
    refused = conv.on_agent_message({"type": "InjectionRefused", "message": "busy"}, 15.1)
    assert Hangup("dead_air_caller_idle") in refused


def test_the_caller_speaking_resets_the_reengage_budget_and_playback_is_not_dead_air():
    conv = conversation(dead_air={"caller_idle_s": 5, "max_reengage": 1})
    assert emitted(conv.tick(5.0), "dead_air")[0]["action"] == "reengage"
    conv.on_agent_message({"type": "ConversationText", "role": "user", "content": "yes"}, 6.0)
    assert conv.tick(10.9) == []
    assert emitted(conv.tick(11.0), "dead_air")[0]["action"] == "reengage"
    speak(conv, 12.0, 1600)
    conv.on_agent_message({"type": "AgentAudioDone"}, 12.2)
    assert conv.tick(20.0) == []  # the reply's end mark has not come back: it may still be playing
    conv.on_caller_entry(echo("sb:s1:1:1600:end", 31.0), 21.0)
    conv.on_agent_message({"type": "UserStartedSpeaking"}, 32.0)
    assert conv.tick(40.0) == []  # a long utterance is not silence
    conv.on_agent_message({"type": "ConversationText", "role": "user", "content": "a long story"}, 41.0)
    assert emitted(conv.tick(46.0), "dead_air")


def test_a_client_that_never_echoes_marks_does_not_keep_a_reply_playing_forever():
    conv = conversation()
    speak(conv, 0.0, 8000)
    conv.on_agent_message({"type": "AgentAudioDone"}, 1.0)
    assert conv.tick(10.9) == [] and conv.playing
    [heard] = emitted(conv.tick(11.1), "reply_heard")
    assert heard["confirmed"] is False and not heard["interrupted"] and not conv.playing


def test_a_user_turn_always_clears_even_with_nothing_known_to_be_playing():
    conv = conversation()
    actions = conv.on_agent_message({"type": "UserStartedSpeaking"}, 1.0)
    assert actions[0] == ToCaller(actions[0].entry) and actions[0].entry.kind is Kind.CLEAR
    assert emitted(actions, "user_started_speaking") == [{}]


def test_an_agent_stalled_mid_reply_is_reconnected_once():
    conv = conversation(dead_air={"agent_stall_s": 2})
    speak(conv, 0.0, 1600)
    assert conv.tick(2.1) == []  # its 200 ms of audio played out at 0.2
    actions = conv.tick(2.3)
    assert Reconnect("agent_stall") in actions and emitted(actions, "dead_air")[0]["kind"] == "agent_stall"
    assert conv.tick(10) == []  # reported once
    ended = conv.on_agent_closed(10.0)  # the session aborts the stalled Deepgram socket
    assert marks(ended) == ["sb:s1:1:1600:end"] and not conv.agent_speaking


def test_an_agent_stall_can_end_the_call_instead():
    conv = conversation(dead_air={"agent_stall_s": 1, "action": "end_call"})
    speak(conv, 0.0, 1600)
    assert Hangup("dead_air_agent_stall") in conv.tick(1.5)


def test_heard_prefix_cuts_at_whole_words():
    assert heard_prefix("Hello there world", 0.0) == ""
    assert heard_prefix("Hello there world", 0.4) == "Hello"
    assert heard_prefix("Hello there world", 0.65) == "Hello there"
    assert heard_prefix("Hello there world", 1.0) == "Hello there world"


# --- the Deepgram session and the end of the call ---------------------------------------------------
def hangup_entries(actions) -> list[str]:
    return [a.entry.payload.decode() for a in actions if isinstance(a, ToCaller) and a.entry.kind is Kind.HANGUP]


def test_a_hangup_after_the_reply_waits_for_the_agent_s_audio_and_happens_once():
    conv = conversation()
    assert conv.request_hangup("end_call", after_reply=True) == []  # the goodbye is still to come
    speak(conv, 1.0, 1600)
    done = conv.on_agent_message({"type": "AgentAudioDone"}, 1.5)
    assert hangup_entries(done) == ["end_call"] and Hangup("end_call") in done
    assert Record({"hangup_requested": "end_call"}) in done and emitted(done, "hangup_requested") == [
        {"reason": "end_call"}]
    assert conv.request_hangup("command") == [] and conv.hangup_reason == "end_call"
    assert conv.tick(100.0) == []  # no dead air once the call is ending


def test_a_dropped_session_is_reopened_until_the_budget_is_spent_and_a_stable_one_resets_it():
    conv = conversation()
    conv.config = ConversationConfig(max_reconnects=2)
    assert Reconnect("closed") in conv.on_agent_closed(1.0)
    conv.on_agent_connected(1.5)
    assert Reconnect("closed") in conv.on_agent_closed(2.0)
    conv.on_agent_connected(2.5)
    gave_up = conv.on_agent_closed(3.0)
    assert GiveUp("deepgram_gone") in gave_up and hangup_entries(gave_up) == ["deepgram_gone"]
    fresh = conversation()
    fresh.config = ConversationConfig(max_reconnects=1)
    assert Reconnect("closed") in fresh.on_agent_closed(1.0)
    fresh.on_agent_connected(2.0)
    assert Reconnect("closed") in fresh.on_agent_closed(40.0)  # 38 s of healthy session: budget reset


def test_an_error_deepgram_cannot_recover_from_ends_the_call_and_a_recoverable_one_reconnects():
    conv = conversation()
    conv.on_agent_message({"type": "Error", "code": "FAILED_TO_THINK", "description": "x"}, 1.0)
    assert Reconnect("FAILED_TO_THINK") in conv.on_agent_closed(1.1)
    conv.on_agent_connected(2.0)
    conv.on_agent_message({"type": "Error", "code": "UNPARSABLE_CLIENT_MESSAGE", "description": "x"}, 3.0)
    ended = conv.on_agent_closed(3.1)
    assert GiveUp("deepgram_UNPARSABLE_CLIENT_MESSAGE") in ended
    assert hangup_entries(ended) == ["deepgram_error_UNPARSABLE_CLIENT_MESSAGE"]
    assert conversation().on_agent_closed(1.0, expected=True) == []  # the call was ending anyway


def test_after_a_stall_the_new_session_answers_again_and_an_unanswered_utterance_is_asked_again():
    events = [{"type": "transcript", "role": "user", "content": "Hi"},
              {"type": "transcript", "role": "assistant", "content": "Hello, how can I help?"},
              {"type": "transcript", "role": "user", "content": "Book a car"},
              {"type": "transcript", "role": "assistant", "content": "Sure, which"}]
    conv = conversation(dead_air={"agent_stall_s": 1})
    speak(conv, 0.0, 800)
    assert Reconnect("agent_stall") in conv.tick(1.2)
    context = conv.context(events)
    assert [m["content"] for m in context] == ["Hi", "Hello, how can I help?"]  # "Sure, which" was never heard
    reask = conv.on_agent_connected(2.0)
    assert [orjson.loads(a.message) for a in reask if isinstance(a, ToAgent)] == [
        {"type": "InjectUserMessage", "content": "Book a car"}]
    assert emitted(reask, "reask") == [{"content": "Book a car"}]
    assert conv.on_agent_connected(3.0) == []  # asked once
    # A plain drop: what the agent said stays in the context.
    assert [m["content"] for m in conversation().context(events)][-1] == "Sure, which"


def test_each_utterance_s_start_is_recorded_for_a_takeover_and_marked_answered_by_its_transcript():
    conv = Conversation(ConversationConfig(), 100.0, "s1", wall_offset_s=1_700_000_000.0)
    started = conv.on_agent_message({"type": "UserStartedSpeaking"}, 101.0)
    assert Record({"utt_pos": "1700000100300-0"}) in started
    answered = conv.on_agent_message({"type": "ConversationText", "role": "user", "content": "yes"}, 102.0)
    assert Count("turns") in answered and Record({"utt_answered": "1700000100300-0"}) in answered


def test_nothing_is_watched_before_a_session_is_up_or_after_the_caller_left():
    conv = Conversation(ConversationConfig(caller_idle_s=1), 0.0, "s1")
    assert conv.tick(50.0) == []
    conv.on_agent_connected(50.0)
    assert emitted(conv.tick(52.0), "dead_air")
    conv.on_caller_stop()
    assert conv.tick(100.0) == []
