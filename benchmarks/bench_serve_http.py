"""HTTP serving benchmark: `edgeft serve BUNDLE --http` on loopback, hammered by a bounded number of requests.

    python benchmarks/bench_serve_http.py BUNDLE [--requests 10000] [--concurrency 4] [--max-seconds 120]

The server runs as its own process (so its RSS is measured alone). Reports throughput, client-side p50/p99,
server RSS growth between warm-up and the end (goal < 5%), status counts (503 only past the queue bound:
with concurrency <= --max-queue there should be none) and the server's mean batch size from /metrics.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from edgeft.serve.bench import rss_bytes
from edgeft.serve.schema import PredictResponse
from edgeft.serve.server import free_port


def make_images(n: int, size: tuple[int, int], seed: int = 0) -> list[bytes]:
    """A few distinct JPEGs (what a drone would send)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for i in range(n):
        colour = rng.uniform(40, 255, 3).astype(np.float32)
        img = colour[None, None, :] * (0.5 + 0.5 * np.sin(xx * 0.05 + yy * 0.03 + i))[..., None]
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        try:
            r = httpx.get(f"{url}/health", timeout=2.0)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise SystemExit("the server did not become healthy in time")


def scrape(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10.0).text
    return {
        s.name + str(sorted(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-seconds", type=float, default=120.0, help="stop firing after this long")
    ap.add_argument("--warmup", type=int, default=200, help="requests before the baseline RSS is taken")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--image-size", default="320x240")
    args = ap.parse_args()
    w, h = (int(v) for v in args.image_size.lower().split("x"))
    images = make_images(8, (w, h))

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "edgeft.cli",
        "serve",
        str(args.bundle),
        "--http",
        f"127.0.0.1:{port}",
        "--backend",
        args.backend,
        "--precision",
        args.precision,
        "--batch-size",
        str(args.batch_size),
        "--max-queue",
        str(args.max_queue),
        "--status-every",
        "0",
    ]
    log = open(os.devnull, "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        health = wait_healthy(url, proc)
        first = httpx.post(f"{url}/predict", content=images[0], headers={"content-type": "image/jpeg"}, timeout=30.0)
        PredictResponse.model_validate(first.json())  # the server answers in THE Prediction schema
        statuses: Counter[int] = Counter()
        latencies: list[float] = []
        lock = threading.Lock()
        counter = {"next": 0, "done": 0}
        rss_warm = {"value": 0}
        deadline = time.monotonic() + args.max_seconds

        def worker() -> None:
            with httpx.Client(base_url=url, timeout=30.0) as client:
                while time.monotonic() < deadline:
                    with lock:
                        i = counter["next"]
                        if i >= args.requests:
                            return
                        counter["next"] += 1
                    t0 = time.perf_counter()
                    try:
                        r = client.post(
                            "/predict", content=images[i % len(images)], headers={"content-type": "image/jpeg"}
                        )
                        code = r.status_code
                    except httpx.HTTPError:
                        code = -1
                    ms = (time.perf_counter() - t0) * 1000.0
                    with lock:
                        statuses[code] += 1
                        if code == 200:
                            latencies.append(ms)
                        counter["done"] += 1
                        if counter["done"] == args.warmup:
                            rss_warm["value"] = rss_bytes(proc.pid) or 0

        threads = [threading.Thread(target=worker) for _ in range(max(1, args.concurrency))]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        rss_end = rss_bytes(proc.pid) or 0
        metrics = scrape(url)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()

    done = sum(statuses.values())
    lat = np.asarray(latencies)
    batches = metrics.get("edgeft_batch_size_count[]", 0.0)
    mean_batch = metrics.get("edgeft_batch_size_sum[]", 0.0) / batches if batches else 0.0
    warm = rss_warm["value"]
    growth = (rss_end - warm) / warm * 100.0 if warm else float("nan")
    print(f"server:        {health['model']} on {health['backend']} (bundle sha256 {health['bundle_sha256'][:12]})")
    print(f"load:          {done} requests ({w}x{h} JPEG), concurrency {args.concurrency}, {wall:.1f} s")
    print(f"throughput:    {done / wall:.1f} req/s")
    if lat.size:
        print(f"latency:       p50 {np.percentile(lat, 50):.2f} ms, p99 {np.percentile(lat, 99):.2f} ms (client side)")
    print(f"statuses:      {dict(sorted(statuses.items()))}")
    print(
        f"503s:          {statuses.get(503, 0)} (max queue {args.max_queue}; "
        f"{'expected none' if args.concurrency <= args.max_queue else 'expected: concurrency exceeds the queue'})"
    )
    print(f"batching:      {int(batches)} model calls, mean batch {mean_batch:.2f} (max {args.batch_size})")
    print(
        f"server RSS:    {warm / 2**20:.1f} MiB after {args.warmup} requests -> {rss_end / 2**20:.1f} MiB at the end "
        f"({growth:+.2f}%, goal < 5%)"
    )
    print(f"machine load:  {os.getloadavg()[0]:.2f} (1-min load average, {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
