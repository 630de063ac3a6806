"""Load test of `imgclf serve` on the loopback interface: micro-batching on vs off.

    python benchmarks/serve_load.py [--models efficientnet_lite0 cnn-basic] [--clients 32]
                                    [--requests 2000] [--max-seconds 60]

For each model, the script starts `imgclf serve` twice on 127.0.0.1 (--max-batch 32, then
--max-batch 1: one image per forward pass, one request at a time), and runs the same load against
each: `--clients` concurrent keep-alive connections posting one real image each (multipart), until
`--requests` requests are answered or `--max-seconds` pass. The client is a minimal asyncio HTTP/1.1
client with prebuilt requests, so that it takes little of the processor the server needs. Nothing
leaves this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH_MODELS, bench_images, describe_machine, make_bench_artifact

from imgclf.export.exporter import export_model

BOUNDARY = "imgclfbenchboundary"


def build_request(port: int, image: bytes, name: str) -> bytes:
    body = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    head = (
        f"POST /predict?top_k=3 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    return status, await reader.readexactly(length)


async def load(port: int, requests: list[bytes], clients: int, total: int, max_seconds: float) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    issued = 0
    deadline = time.perf_counter() + max_seconds

    async def client(index: int) -> None:
        nonlocal issued
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while issued < total and time.perf_counter() < deadline:
                request = requests[(issued + index) % len(requests)]
                issued += 1
                start = time.perf_counter()
                writer.write(request)
                await writer.drain()
                status, body = await read_response(reader)
                latencies.append(time.perf_counter() - start)
                if status != 200 or b'"predictions"' not in body:
                    errors.append(f"{status}: {body[:100]!r}")
        finally:
            writer.close()

    start = time.perf_counter()
    outcomes = await asyncio.gather(*[client(i) for i in range(clients)], return_exceptions=True)
    elapsed = time.perf_counter() - start
    errors += [repr(o) for o in outcomes if isinstance(o, BaseException)]
    values = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "p50": float(np.percentile(values, 50)) if len(values) else float("nan"),
        "p99": float(np.percentile(values, 99)) if len(values) else float("nan"),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(process: subprocess.Popen, port: int, seconds: float, log: Callable[[], str]) -> None:
    """Return once the server on `port` answers /health; raise with `log()` if it exits first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(log()) from None
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the server did not start in {seconds:.0f} s")


def serve(artifact: Path, port: int, max_batch: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "imgclf", "serve", str(artifact), "--port", str(port)]
    command += ["--max-batch", str(max_batch)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_until_healthy(process, port, 60, lambda: process.stderr.read().decode())
    return process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["efficientnet_lite0", "cnn-basic"], choices=list(BENCH_MODELS)
    )
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=2000, help="requests per configuration")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="time limit per configuration")
    parser.add_argument("--warmup", type=int, default=64, help="requests before measuring")
    args = parser.parse_args()
    print(f"machine: {describe_machine()}")
    print(
        f"load: {args.clients} concurrent clients, up to {args.requests} requests or "
        f"{args.max_seconds:.0f} s per configuration, one image per request, loopback only"
    )
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            artifact = make_bench_artifact(name, Path(folder))
            export_model(artifact)  # the server runs it with ONNX Runtime, as `imgclf serve` does by default
            images = bench_images(name, 200)
            for max_batch in (32, 1):
                port = free_port()
                requests = [build_request(port, image, f"{i}.img") for i, image in enumerate(images)]
                process = serve(artifact, port, max_batch)
                try:
                    asyncio.run(load(port, requests, args.clients, args.warmup, 30))
                    result = asyncio.run(load(port, requests, args.clients, args.requests, args.max_seconds))
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/model", timeout=5) as response:
                        serving = json.load(response)["serving"]
                finally:
                    process.terminate()
                    process.wait(timeout=30)
                result.update(model=name, max_batch=max_batch, mean_batch=serving["mean_batch"])
                rows.append(result)
                print(
                    f"  {name} max-batch {max_batch}: {result['requests']} requests in "
                    f"{result['seconds']:.1f} s, {result['errors']} errors {result['first_error']}",
                    flush=True,
                )
    print()
    header = (
        f"{'model':<20} {'micro-batching':<16} {'requests':>8} {'errors':>6} {'req/s':>8} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'mean batch':>10}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        mode = "on (max 32)" if row["max_batch"] > 1 else "off"
        print(
            f"{row['model']:<20} {mode:<16} {row['requests']:>8} {row['errors']:>6} {row['rps']:>8.1f} "
            f"{row['p50']:>8.1f} {row['p99']:>8.1f} {row['mean_batch']:>10.2f}"
        )
    print()
    for name in args.models:
        on, off = (
            next(r for r in rows if r["model"] == name and (r["max_batch"] > 1) == flag)
            for flag in (True, False)
        )
        ratio = on["rps"] / off["rps"]
        verdict = "meets" if ratio >= 3 and on["errors"] == off["errors"] == 0 else "misses"
        print(
            f"target: micro-batching >= 3x the req/s of one-at-a-time with zero errors, {name}: "
            f"{ratio:.2f}x, errors {on['errors']}/{off['errors']} ({verdict})"
        )
    print(f"cores: {os.cpu_count()} (client and server share them)")


if __name__ == "__main__":
    main()
