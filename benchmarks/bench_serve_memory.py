"""Server memory under huge-image uploads: `edgeft serve BUNDLE --http` hit by N concurrent 9000x9000 PNGs.

    python benchmarks/bench_serve_memory.py BUNDLE [--uploads 4] [--side 9000] [--max-pixels-mp 40]

The PNGs are 1-bit greyscale (a few KB on the wire, under any body limit) that decode to side x side RGB.
The server runs as its own process; its RSS is sampled every 20 ms. Reports the RSS before, the peak, the RSS
after, and the status of every upload. `--max-pixels-mp 10000` effectively turns the header check off (the
behaviour before the pixel budget existed).
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter

import httpx

from edgeft.serve.bench import rss_bytes
from edgeft.serve.server import free_port


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png(side: int) -> bytes:
    row = b"\x00" * (1 + (side + 7) // 8)
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(row * side, 9))
        + _chunk(b"IEND", b"")
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--uploads", type=int, default=4)
    ap.add_argument("--side", type=int, default=9000)
    ap.add_argument("--max-pixels-mp", type=float, default=40.0)
    args = ap.parse_args()

    port = free_port()
    cmd = [sys.executable, "-m", "edgeft.cli.app", "serve", args.bundle, "--http", f"127.0.0.1:{port}"]
    cmd += ["--max-pixels-mp", str(args.max_pixels_mp), "--status-every", "0", "--backend", "onnxruntime"]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                sys.exit("the server did not start")
            time.sleep(0.2)
        png = huge_png(args.side)
        before = rss_bytes(server.pid) or 0
        peak, stop = [before], threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], (rss_bytes(server.pid) or 0))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        statuses: list[int] = []

        def upload(i: int) -> None:
            files = {"files": (f"giant{i}.png", png, "image/png")}
            statuses.append(httpx.post(f"{url}/predict", files=files, timeout=120.0).status_code)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=upload, args=(i,)) for i in range(args.uploads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        time.sleep(1.0)
        stop.set()
        sampler.join()
        after = rss_bytes(server.pid) or 0
    finally:
        server.terminate()
        server.wait(timeout=30)
    mb = 2**20
    print(
        f"{args.uploads} uploads of a {len(png)} B PNG of {args.side}x{args.side} px, --max-pixels-mp {args.max_pixels_mp}"
    )
    print(f"statuses {dict(Counter(statuses))} in {elapsed:.2f} s")
    print(f"server RSS: before {before / mb:.0f} MB, peak {peak[0] / mb:.0f} MB, after {after / mb:.0f} MB")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
