"""The human side of a bench result: a fixed-width table, a Markdown table and an SVG plot."""

from __future__ import annotations

from typing import Any


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _lat(d: dict[str, Any] | None) -> str:
    d = d or {}
    return "/".join(_f(d.get(p)) for p in ("p50", "p95", "p99", "max"))


def _exact(run: dict[str, Any]) -> str:
    ex = run["byte_exact"]
    if not ex["agent_to_caller"]:
        return "-"
    bad = sum(ex[k]["false"] for k in ex)
    unchecked = sum(ex[k]["none"] for k in ex)
    return "yes" if bad == 0 and unchecked == 0 else f"{bad} bad, {unchecked} unchecked"


def _role_cpu(run: dict[str, Any], role: str) -> str:
    span = run["window"]["seconds"]
    cpu = run["window"]["cpu_s_by_role"].get(role)
    return "-" if cpu is None else f"{100 * cpu / span:.0f}%"


def rows(result: dict[str, Any]) -> list[list[str]]:
    out = []
    for lvl in result["levels"]:
        for key, label in (("switchboard", "switchboard"), ("direct_relay", "direct relay")):
            run = lvl.get(key)
            if run is None:
                continue
            c = run["calls"]
            w = run["window"]
            added = lvl.get("added_latency_ms") if key == "switchboard" else None
            redis = w["redis"]
            mem = run["memory"]
            kb = " ".join(f"{r} {_f(m['kb_per_call'], 0)}" for r, m in mem.items() if r != "emulator")
            out.append([
                str(lvl["level"]), label,
                f"{c['completed']}/{c['failed']}", _f(w["live_calls"]["mean"], 0), _exact(run),
                _lat(run["caller_to_deepgram_ms"]), _lat(run["deepgram_to_caller_ms"]),
                "-" if not added else f"{_f(added['caller_to_deepgram_ms']['p95'])} / "
                                      f"{_f(added['deepgram_to_caller_ms']['p95'])}",
                _f((run["turn_latency_ms"] or {}).get("p95"), 0),
                _f((run["barge_in_latency_ms"] or {}).get("p95"), 0),
                _f(run["cpu_s_per_call_minute"], 3) + (f" ({_f(lvl['ratios']['cpu_per_call_minute'], 2)}×)"
                                                       if key == "switchboard" and lvl.get("ratios") else ""),
                kb,
                "-" if redis is None else _f(redis["ops_per_s"], 0),
                _role_cpu(run, "simulator"), _role_cpu(run, "emulator"),
                f"{w['machine']['busy_pct']:.0f}% ({w['machine']['other_pct']:.0f}%)",
                ", ".join(w["saturated"]) or "-",
            ])
    return out


HEADER = ["calls", "system", "ok/failed", "live", "byte-exact", "caller→DG ms p50/95/99/max",
          "DG→caller ms p50/95/99/max", "added p95 ms ↑/↓", "turn p95", "barge p95",
          "CPU s/call-min (×relay)", "KB/call", "redis ops/s", "sim CPU", "emu CPU", "machine busy (other)",
          "saturated (process ≥85% core, machine ≥90%)"]


def table(result: dict[str, Any]) -> str:
    body = rows(result)
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(HEADER)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(HEADER), line(["-" * w for w in widths]), *(line(r) for r in body)])


def markdown(result: dict[str, Any]) -> str:
    out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    out += ["| " + " | ".join(r) + " |" for r in rows(result)]
    targets = []
    for lvl in result["levels"]:
        for name, ok in (lvl.get("targets") or {}).items():
            verdict = "met" if ok else "NOT met" if ok is False else "n/a"
            targets.append(f"- {lvl['level']} calls: `{name}`: **{verdict}**")
    return "\n".join([*out, "", *targets])


def svg(result: dict[str, Any], width: int = 640, height: int = 360) -> str:
    """p95 transit per direction vs. concurrency, Switchboard and relay, log-x by level index."""
    levels = [lvl for lvl in result["levels"] if lvl.get("direct_relay")]
    series = [
        ("switchboard caller→DG", "switchboard", "caller_to_deepgram_ms", "#d62728", ""),
        ("switchboard DG→caller", "switchboard", "deepgram_to_caller_ms", "#1f77b4", ""),
        ("relay caller→DG", "direct_relay", "caller_to_deepgram_ms", "#d62728", "4 3"),
        ("relay DG→caller", "direct_relay", "deepgram_to_caller_ms", "#1f77b4", "4 3"),
    ]
    values = [(lvl[s] or {}).get(d, {}) or {} for lvl in levels for _, s, d, _, _ in series]
    top = max([v.get("p95") or 0 for v in values] + [1.0]) * 1.15
    left, right, top_pad, bottom = 60, 20, 30, 50
    pw, ph = width - left - right, height - top_pad - bottom
    x = lambda i: left + (pw * i / max(1, len(levels) - 1) if len(levels) > 1 else pw / 2)  # noqa: E731
    y = lambda v: top_pad + ph - ph * v / top  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="11"><rect width="100%" height="100%" fill="white"/>',
             f'<text x="{left}" y="18" font-size="13">p95 transit (ms) vs concurrent calls</text>',
             f'<line x1="{left}" y1="{top_pad + ph}" x2="{left + pw}" y2="{top_pad + ph}" stroke="black"/>',
             f'<line x1="{left}" y1="{top_pad}" x2="{left}" y2="{top_pad + ph}" stroke="black"/>']
    for k in range(5):
        v = top * k / 4
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.1f}</text>')
        parts.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{left + pw}" y2="{y(v):.1f}" stroke="#eee"/>')
    for i, lvl in enumerate(levels):
        parts.append(f'<text x="{x(i):.1f}" y="{top_pad + ph + 16}" text-anchor="middle">{lvl["level"]}</text>')
    for n, (label, system, direction, colour, dash) in enumerate(series):
        pts = [(x(i), y(((lvl[system] or {}).get(direction) or {}).get("p95") or 0)) for i, lvl in enumerate(levels)]
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py in pts)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2" '
                     f'stroke-dasharray="{dash}"/>')
        parts += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}"/>' for px, py in pts]
        ly = top_pad + 10 + 14 * n
        parts.append(f'<line x1="{left + 10}" y1="{ly}" x2="{left + 34}" y2="{ly}" stroke="{colour}" '
                     f'stroke-width="2" stroke-dasharray="{dash}"/><text x="{left + 40}" y="{ly + 4}">{label}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 12}" text-anchor="middle">concurrent calls</text></svg>')
    return "\n".join(parts)


def overload(run: dict[str, Any]) -> str:
    """The overload run in a few lines."""
    def p(d: dict[str, Any] | None, key: str) -> str:
        value = (d or {}).get(key)
        return "-" if value is None else f"{value}"
    cal, out = run["caller_to_deepgram_ms"], run["deepgram_to_caller_ms"]
    machine = run["window"]["machine"]
    return "\n".join([
        f"offered {run['offered']}: completed {run['completed']}, refused with the busy message "
        f"{run['refused_busy']}, dropped {run['dropped']} {run['dropped_reasons'] or ''}",
        f"live calls at most {run['window']['live_calls']['max']}; byte-exact {run['byte_exact']}",
        f"admitted calls: caller→Deepgram p50/p95 {p(cal, 'p50')}/{p(cal, 'p95')} ms, "
        f"Deepgram→caller p50/p95 {p(out, 'p50')}/{p(out, 'p95')} ms, turn p95 {p(run['turn_latency_ms'], 'p95')} ms, "
        f"barge-in p95 {p(run['barge_in_latency_ms'], 'p95')} ms",
        f"machine busy {machine.get('busy_pct')}% (other {machine.get('other_pct')}%)",
    ])
