"""The benchmark command runs end to end: a real Switchboard and a direct relay, two calls each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from switchboard_bench import latency


def test_pooled_histogram_percentiles_are_nearest_rank_over_every_frame():
    dump = {"pooled": True, "bucket_us": 100, "max_us": 2345, "hist": [[5, 90], [20, 9], [23, 1]],
            "sessions": [{"out_of_order": 0}]}
    stats = latency.from_histogram(dump)
    assert (stats["count"], stats["p50"], stats["p95"], stats["p99"], stats["max"]) == (100, 0.5, 2.0, 2.0, 2.345)


def test_added_latency_is_switchboard_minus_relay_per_percentile():
    assert latency.added({"p50": 3.0, "p95": 5.5, "p99": None, "max": 9.0},
                         {"p50": 1.0, "p95": 2.0, "p99": 4.0, "max": 3.0}) == {
        "p50": 2.0, "p95": 3.5, "p99": None, "max": 6.0}


@pytest.mark.timeout(120)
def test_quick_bench_runs_both_systems_and_writes_json_table_and_plot(tmp_path: Path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "switchboard_bench.main", "--quick", "--json", str(out), "--log-dir",
         str(tmp_path / "logs"), "--svg", str(tmp_path / "plot.svg"), "--markdown", str(tmp_path / "table.md")],
        capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = orjson.loads(out.read_bytes())
    assert result["machine"]["nproc"] >= 1 and result["machine"]["cpu_model"]
    (level,) = result["levels"]
    for key in ("switchboard", "direct_relay", "added_latency_ms", "ratios", "targets"):
        assert key in level
    for system in ("switchboard", "direct_relay"):
        run = level[system]
        assert run["calls"]["completed"] == 2 and run["calls"]["failed"] == 0
        assert run["byte_exact"]["agent_to_caller"]["true"] == 2
        assert run["byte_exact"]["caller_to_agent"]["true"] == 2
        for direction in ("caller_to_deepgram_ms", "deepgram_to_caller_ms"):
            assert run[direction]["count"] > 0 and run[direction]["p95"] is not None
        assert run["cpu_s_per_call_minute"] > 0
        assert run["window"]["live_calls"]["max"] == 2
        assert {"simulator", "emulator"} <= set(run["window"]["cpu_s_by_role"])
    sb = level["switchboard"]
    assert {"redis", "edge", "worker"} <= set(sb["memory"])
    assert sb["window"]["redis"]["ops_per_s"] > 0
    assert sb["barge_in_latency_ms"]["count"] >= 1
    assert level["ratios"]["cpu_per_call_minute"] > 0
    assert "switchboard" in proc.stdout and "direct relay" in proc.stdout
    assert (tmp_path / "plot.svg").read_text().startswith("<svg")
    assert "| calls |" in (tmp_path / "table.md").read_text()
