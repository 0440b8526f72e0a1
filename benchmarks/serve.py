"""Load on `geosane serve` against the same requests as CLI runs one after another, on 127.0.0.1 only.

    .venv/bin/python benchmarks/serve.py [--requests 50] [--clients 8] [--distinct 10] [--cli-runs 50]

The requests are small prompts (``test_resnet`` with 4 candidates, no target data) with ``--distinct`` different
seeds, repeated to ``--requests`` in a seeded order, as a team asking for the same few models would. A client posts
its request and polls the job until it is done; latency is from post to done. The baseline runs ``geosane
generate`` for each request, one after another (``--cli-runs`` of them; the total is scaled to all requests when
fewer). Printed and saved to benchmarks/results/serve.json: p50/p95 latency, throughput, cache hits, failures,
the service's peak memory (resident set of this machine's Ray processes, sampled), and the speed-up.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import geosane.serve as service

from measure import free_port, save

PROMPT = "timm:test_resnet?num_classes=10"


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=300) as response:
        return json.loads(response.read())


def one_request(base: str, body: dict) -> tuple[float, bool, bool]:
    """Seconds from post to done, whether it was a cache hit, whether it failed."""
    start = time.perf_counter()
    answer = post(f"{base}/generate", body)
    state = answer
    while state.get("state") not in ("done", "failed"):
        time.sleep(0.05)
        state = get(f"{base}/jobs/{answer['id']}")
    return time.perf_counter() - start, bool(answer.get("cached")), state["state"] != "done"


def ray_rss_bytes() -> int:
    """Resident memory of this machine's Ray worker processes (the replica among them), from /proc."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        if "ray::" in text.splitlines()[0] or "ServeReplica" in text.splitlines()[0]:
            total += next(int(line.split()[1]) for line in text.splitlines() if line.startswith("VmRSS")) * 1024
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--distinct", type=int, default=10)
    parser.add_argument("--cli-runs", type=int, default=50)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve.json"))
    args = parser.parse_args()
    bodies = [{"prompt": PROMPT, "candidates": 4, "seed": i % args.distinct} for i in range(args.requests)]
    random.Random(0).shuffle(bodies)

    from ray import serve as ray_serve

    port, storage = free_port(), tempfile.mkdtemp(prefix="geosane-serve-")
    service.serve(service.ServeConfig(storage=storage, port=port, max_queue=args.requests), blocking=False)
    base = f"http://127.0.0.1:{port}"
    peak, sampling = [0], threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            peak[0] = max(peak[0], ray_rss_bytes())
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        outcomes = list(pool.map(lambda body: one_request(base, body), bodies))
    served_seconds = time.perf_counter() - start
    sampling.set()
    health = get(f"{base}/healthz")
    ray_serve.shutdown()

    cli = str(Path(sys.executable).with_name("geosane"))
    cli_seconds = []
    for body in bodies[: args.cli_runs]:
        with tempfile.TemporaryDirectory() as out:
            begin = time.perf_counter()
            command = [cli, "-q", "generate", "--prompt", PROMPT, "--candidates", "4", "--seed", str(body["seed"])]
            subprocess.run([*command, "--out", out], check=True, capture_output=True)
            cli_seconds.append(time.perf_counter() - begin)
    cli_total = statistics.mean(cli_seconds) * args.requests
    latencies = sorted(seconds for seconds, _, _ in outcomes)
    result = {
        "requests": args.requests,
        "clients": args.clients,
        "distinct": args.distinct,
        "served_total_s": served_seconds,
        "throughput_per_s": args.requests / served_seconds,
        "latency_p50_s": latencies[len(latencies) // 2],
        "latency_p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
        "cache_hits": sum(cached for _, cached, _ in outcomes),
        "failed": sum(failed for _, _, failed in outcomes),
        "jobs_run": health["jobs_started"],
        "peak_ray_rss_bytes": peak[0],
        "cli_runs_timed": len(cli_seconds),
        "cli_mean_s": statistics.mean(cli_seconds),
        "cli_total_s": cli_total,
        "speedup": cli_total / served_seconds,
    }
    for key, value in result.items():
        print(f"{key:22} {value:.3f}" if isinstance(value, float) else f"{key:22} {value}")
    save(result, args.out)


if __name__ == "__main__":
    main()
