"""Saturation runs of ``guard_load.py --wrk`` with wrk (Debian's ``wrk``, a well-kept load generator in C).

wrk is closed-loop: ``--connections`` connections each send the next request as soon as the previous answer
arrived, so the server runs flat out and the figure is its saturation throughput (requests/s) with the latency
at that load. Each request carries a fresh benign row drawn in the wrk script (the same distribution as
``guard_load._data``: a client replaying identical rows is what the extraction detector exists to notice) and
the token of one of the benchmark's clients, round robin. Non-2xx answers, socket errors and timeouts are
reported as errors.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

_SCRIPT = r"""
local tokens = {%(tokens)s}
local n_features = %(n_features)d
local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(id * 7919 + os.time())
  counter = id * 1000003
end

local function gauss()
  local u1, u2 = math.random(), math.random()
  if u1 < 1e-12 then u1 = 1e-12 end
  return math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)
end

request = function()
  counter = counter + 1
  local sign = (math.random() < 0.5) and -1 or 1
  local parts = {}
  for j = 0, n_features - 1 do
    parts[j + 1] = string.format("%%.5f", sign * (0.5 + j / (n_features - 1)) + gauss())
  end
  local body = '{"inputs":[[' .. table.concat(parts, ",") .. ']]}'
  local headers = {["Content-Type"] = "application/json"}
  if #tokens > 0 then headers["Authorization"] = "Bearer " .. tokens[counter %% #tokens + 1] end
  return wrk.format("POST", "/v1/models/fraud/predict", headers, body)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"connect":%%d,"read":%%d,"write":%%d,"status":%%d,"timeout":%%d,' ..
    '"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"max_us":%%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def available() -> str | None:
    """The wrk binary, or ``None`` (``make system-deps`` installs Debian's)."""
    return shutil.which("wrk")


def script(path: Path, tokens: list[str], n_features: int) -> Path:
    """Write the request script (tokens are the benchmark's own throw-away clients)."""
    quoted = ",".join(json.dumps(t) for t in tokens)
    path.write_text(_SCRIPT % {"tokens": quoted, "n_features": n_features}, encoding="utf-8")
    return path


def run(url: str, lua: Path, *, duration: float, connections: int, threads: int = 1) -> dict[str, Any]:
    """One wrk run against ``url``; requests/s, latency percentiles (ms) and errors."""
    binary = available()
    if binary is None:
        raise RuntimeError("wrk is not installed")
    argv = [binary, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "5s"]
    out = subprocess.run([*argv, "-s", str(lua), url], capture_output=True, text=True, check=True).stdout
    match = re.search(r"^WRKJSON (\{.*\})$", out, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    raw = json.loads(match.group(1))
    seconds = raw["duration_us"] / 1e6
    errors = raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
    return {
        "requests": raw["requests"],
        "requests_per_s": round(raw["requests"] / seconds, 1),
        "non_2xx": raw["status"],
        "socket_errors": errors,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "connections": connections,
        "threads": threads,
    }
