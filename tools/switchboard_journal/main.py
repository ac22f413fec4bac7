"""`switchboard-journal`: export, listen to and replay a recorded call (opt-in: settings `journal`).

    switchboard-journal dump   --call CA… [--out call.jsonl]        the journal as JSON lines
    switchboard-journal wav    --call CA… | --file call.jsonl --out call.wav
    switchboard-journal replay --call CA… | --file call.jsonl [--json] [--check]

--call takes a callSid (its current stream) or a streamSid. Exit status: 0 ok; 1 no such
journal, no audio in it, or (replay --check) the replay differs from the recorded call;
2 bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import orjson
from redis.exceptions import RedisError

from switchboard import wav
from switchboard.journal import JournalError, to_jsonl
from switchboard.keys import Keys

from . import source
from .replay import ReplayResult, load_settings, replay


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="switchboard-journal", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    commands = p.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str, file_ok: bool) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        where = sub.add_mutually_exclusive_group(required=True)
        where.add_argument("--call", help="callSid or streamSid of a call whose journal is in Redis")
        if file_ok:
            where.add_argument("--file", type=Path, help="a journal exported with `dump`")
        sub.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                         help="default: env REDIS_URL")
        sub.add_argument("--redis-cluster", action="store_true",
                         default=os.environ.get("REDIS_CLUSTER", "").lower() in ("1", "true", "yes"))
        sub.add_argument("--key-prefix", default=os.environ.get("KEY_PREFIX", "sb:"), help="default: env KEY_PREFIX")
        sub.add_argument("--redis-cluster-buckets", type=int,
                         default=int(os.environ.get("REDIS_CLUSTER_BUCKETS", "16")),
                         help="with --redis-cluster, as the services' REDIS_CLUSTER_BUCKETS (default: env, or 16)")
        return sub

    dump = add("dump", "write a call's journal as JSON lines (audio base64)", file_ok=False)
    dump.add_argument("--out", type=Path, help="file to write (default: stdout)")
    export = add("wav", "export the caller (left) and agent (right) audio as a stereo 8 kHz WAV", file_ok=True)
    export.add_argument("--out", type=Path, required=True)
    run = add("replay", "replay the call offline through the conversation state machine", file_ok=True)
    run.add_argument("--json", action="store_true", help="print a machine-readable report instead of the timeline")
    run.add_argument("--check", action="store_true", help="exit 1 unless the replay matches the recorded events")
    run.add_argument("--settings", help="agent settings JSON to replay with instead of the recorded ones")
    return p.parse_args(argv)


def _load(args: argparse.Namespace) -> source.Journal:
    if getattr(args, "file", None) is not None:
        return source.read_file(args.file)
    client = source.client(args.redis_url, args.redis_cluster)
    try:
        keys = Keys(args.key_prefix, args.redis_cluster_buckets if args.redis_cluster else 0)
        return source.read_redis(client, keys, args.call)
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        journal = _load(args)
        if args.command == "dump":
            return _dump(journal, args.out)
        if args.command == "wav":
            return _wav(journal, args.out)
        settings = load_settings(args.settings) if args.settings else None
        result = replay(journal.records, settings)
    except (source.NotFound, wav.NoAudio, JournalError, OSError, ValueError) as exc:
        print(f"switchboard-journal: {exc}", file=sys.stderr)
        return 1
    except RedisError as exc:
        print(f"switchboard-journal: redis failed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.buffer.write(orjson.dumps({"call": journal.info, **result.to_dict()}, option=orjson.OPT_INDENT_2))
        sys.stdout.write("\n")
    else:
        print(format_report(journal, result))
    return 1 if args.check and not result.ok else 0


def _dump(journal: source.Journal, out: Path | None) -> int:
    lines = to_jsonl(journal.records, **journal.info)
    if out is None:
        sys.stdout.buffer.writelines(lines)
    else:
        with out.open("wb") as file:
            file.writelines(lines)
        print(f"{len(journal.records)} records of {journal.info.get('stream_sid', '?')} → {out}", file=sys.stderr)
    if journal.info.get("resumed_from"):
        print(f"note: this stream continued stream {journal.info['resumed_from']}, which has its own journal",
              file=sys.stderr)
    return 0


def _wav(journal: source.Journal, out: Path) -> int:
    recording = wav.render(journal.records)
    out.write_bytes(recording.wav())
    print(f"{recording.duration_s:.1f} s, caller left ({recording.caller.chunks} chunks), agent right "
          f"({recording.agent.chunks} chunks) → {out}", file=sys.stderr)
    return 0


def format_report(journal: source.Journal, result: ReplayResult) -> str:
    info = journal.info
    out = [f"call {info.get('call_sid') or '?'}  stream {info.get('stream_sid') or '?'}  "
           f"{len(journal.records)} records, {result.duration_s:.1f} s"]
    out += [f"note: {note}" for note in result.notes]
    out.append("")
    for line in result.timeline:
        out.append(f"{line.t:9.3f}s  {line.who:<8}  {line.what}")
    out.append("")
    out.append(f"replay vs recorded events: {result.matched}/{result.compared} match")
    for m in result.mismatches:
        if m.recorded is None:
            out.append(f"  extra in replay: {m.type} #{m.index + 1} {_brief(m.replayed)}")
        elif m.replayed is None:
            out.append(f"  missing in replay: {m.type} #{m.index + 1} {_brief(m.recorded)}")
        else:
            diffs = ", ".join(f"{f}: recorded {m.recorded.get(f)!r}, replayed {m.replayed.get(f)!r}" for f in m.fields)
            out.append(f"  differs: {m.type} #{m.index + 1}: {diffs}")
    out.append("MATCH" if result.ok else "MISMATCH")
    return "\n".join(out)


def _brief(event: dict | None) -> str:
    if not event:
        return ""
    return orjson.dumps({k: v for k, v in event.items() if k not in ("type", "ts")}).decode()[:200]


if __name__ == "__main__":
    sys.exit(main())
