"""`imgclf serve` under hostile load, on the loopback interface: what normal clients keep while
attackers send decode-heavy PNGs, EPS/PostScript, slowloris bodies and headers, 20 MB bodies,
floods of /explain and requests without the token.

    python benchmarks/serve_hostile.py [--seconds 25] [--clients 4] [--phases …]

The server is `imgclf serve` with an EfficientNet-Lite0 model (the PyTorch backend, so that /explain
answers), bound to 127.0.0.1 with a token and its default limits, in its own process. Each phase
runs for `--seconds`, each attack right after a phase without one (its reference): `--clients`
normal clients, each on one keep-alive connection, post one real
flower photo per request with the token; the attackers of the phase run beside them. A sampler
reads the server's resident memory every 50 ms and a poller asks /health every 250 ms. Every loop
is bounded in time and in count. Nothing leaves this machine. Every attacker but slowloris (200
slow headers, 50 slow bodies) waits `--attack-pause` between its requests: four for the PNG, EPS/PS,
20 MB and token phases, sixteen for the /explain flood. With no pause, a flood of any request at
loopback speed on the same two cores measures the cores (the script's own clients take a share of
them: the "client CPU" column), not the server.

For each phase the script prints the server's peak RSS, the normal clients' requests per second,
p50 and p99 latency and error rate against the phase without attackers, the answers the server gave
by status (415, 503, 401 …), and what /health said. The targets: RSS under 2 GB; normal clients keep
90% of their unattacked throughput, or are turned away with a clean 503 (never a hang, never another
5xx); no traceback in the server's log.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_images, describe_machine, make_bench_artifact
from serve_load import BOUNDARY, free_port, wait_until_healthy

TOKEN = "bench-token-0123456789"
EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n"
    b"newpath 0 0 moveto 64 64 lineto stroke showpage\n%%EOF\n"
)
PS = b"%!PS-Adobe-3.0\n%%Pages: 1\n%%Page: 1 1\n/Helvetica findfont 12 scalefont setfont\nshowpage\n%%EOF\n"


# --------------------------------------------------------------------------------------------------
# requests
# --------------------------------------------------------------------------------------------------
def multipart(files: list[tuple[str, bytes]]) -> bytes:
    parts = b"".join(
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + b"\r\n"
        for name, data in files
    )
    return parts + f"--{BOUNDARY}--\r\n".encode()


def request(port: int, path: str, body: bytes, token: bool = True) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n"
        + (f"Authorization: Bearer {TOKEN}\r\n" if token else "")
        + "\r\n"
    ).encode()
    return head + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = 0
    for line in lines[1:]:
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    return int(lines[0].split()[1]), await reader.readexactly(length)


def heavy_png() -> bytes:
    """A PNG within every limit that costs the most to decode: 5000×5000 RGBA (24 M pixels, 95 MiB
    decoded, under --max-pixels 40 M and --max-decode-mb 100) with translucent alpha, so that the
    decoder must composite it."""
    rgba = np.zeros((5000, 5000, 4), np.uint8)
    rgba[..., 3] = 128
    rgba[::7, ::5, 0] = 255
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------
# clients
# --------------------------------------------------------------------------------------------------
class Tally:
    def __init__(self) -> None:
        self.statuses: collections.Counter[str] = collections.Counter()
        self.latencies: list[float] = []


async def normal_client(port: int, requests: list[bytes], deadline: float, tally: Tally, index: int) -> None:
    issued = 0
    while time.perf_counter() < deadline and issued < 10_000:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as error:
            tally.statuses[f"connect {type(error).__name__}"] += 1
            await asyncio.sleep(0.1)
            continue
        try:
            while time.perf_counter() < deadline and issued < 10_000:
                started = time.perf_counter()
                writer.write(requests[(index + issued) % len(requests)])
                issued += 1
                await writer.drain()
                status, body = await asyncio.wait_for(read_response(reader), 90)
                tally.latencies.append(time.perf_counter() - started)
                ok = status == 200 and b'"predictions"' in body
                tally.statuses["200" if ok else str(status)] += 1
                if status == 503:
                    await asyncio.sleep(0.2)  # as told by Retry-After, in part
        except TimeoutError:
            tally.statuses["hang (no answer in 90 s)"] += 1
        except (OSError, asyncio.IncompleteReadError) as error:
            tally.statuses[f"dropped {type(error).__name__}"] += 1
        finally:
            writer.close()


async def one_shot(port: int, data: bytes, deadline: float, tally: Tally, pause: float = 0.0) -> None:
    """Send `data` on a new connection, read the answer, repeat until the deadline."""
    for _ in range(100_000):
        if time.perf_counter() >= deadline:
            return
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(data)
                await writer.drain()
                status, _ = await asyncio.wait_for(
                    read_response(reader), max(1.0, deadline - time.perf_counter())
                )
                tally.statuses[str(status)] += 1
            finally:
                writer.close()
        except TimeoutError:
            tally.statuses["no answer by the end"] += 1
        except (OSError, asyncio.IncompleteReadError):
            tally.statuses["closed by the server"] += 1
        await asyncio.sleep(pause)


async def slow_headers(port: int, deadline: float, tally: Tally) -> None:
    """Open, send a request line and then one header byte every second, never the blank line."""
    for _ in range(10_000):
        if time.perf_counter() >= deadline:
            return
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            tally.statuses["connect refused"] += 1
            await asyncio.sleep(0.5)
            continue
        try:
            writer.write(f"GET /model HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())
            while time.perf_counter() < deadline:
                writer.write(b"X")
                await writer.drain()
                try:
                    if await asyncio.wait_for(reader.read(100), 1.0) == b"":
                        tally.statuses["headers cut off"] += 1
                        break
                except TimeoutError:
                    continue
        except (OSError, asyncio.IncompleteReadError):
            tally.statuses["headers cut off"] += 1
        finally:
            writer.close()


async def slow_body(port: int, image: bytes, deadline: float, tally: Tally) -> None:
    """Send the headers of a real upload, then its body ten bytes a second."""
    data = request(port, "/predict", multipart([("slow.jpg", image)]))
    split = data.index(b"\r\n\r\n") + 4
    for _ in range(10_000):
        if time.perf_counter() >= deadline:
            return
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(data[:split])
            position = split
            answer = None
            while time.perf_counter() < deadline and answer is None and position < len(data):
                writer.write(data[position : position + 10])
                position += 10
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    answer = await asyncio.wait_for(read_response(reader), 1.0)
            if answer is not None:
                tally.statuses[str(answer[0])] += 1
            writer.close()
        except (OSError, asyncio.IncompleteReadError):
            tally.statuses["closed by the server"] += 1


# --------------------------------------------------------------------------------------------------
# the server and what watches it
# --------------------------------------------------------------------------------------------------
def start_server(artifact: Path, port: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "imgclf", "serve", str(artifact), "--port", str(port)]
    command += ["--backend", "torch", "--token", TOKEN]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    wait_until_healthy(process, port, 120, log.read_text)
    return process


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Watch:
    """Peak RSS (every 50 ms) and /health answers (every 250 ms) while a phase runs."""

    def __init__(self, pid: int, port: int) -> None:
        self.pid, self.port = pid, port
        self.peak = 0.0
        self.health: list[tuple[float, dict | None]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._memory), threading.Thread(target=self._health)]

    def __enter__(self) -> Watch:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def _memory(self) -> None:
        while not self.stop.wait(0.05):
            self.peak = max(self.peak, rss_mb(self.pid))

    def _health(self) -> None:
        while not self.stop.wait(0.25):
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as answer:
                    body = json.load(answer)
            except OSError:
                body = None
            self.health.append((time.perf_counter() - started, body))


# --------------------------------------------------------------------------------------------------
# phases
# --------------------------------------------------------------------------------------------------
def attackers(name: str, port: int, assets: dict, deadline: float, tally: Tally, pause: float) -> list:
    photo = assets["photos"][0]
    if name == "decode-heavy PNGs":  # 8 × 24 M pixels a request: within the request's 200 M
        data = request(port, "/predict", multipart([(f"{i}.png", assets["png"]) for i in range(8)]))
        return [one_shot(port, data, deadline, tally, pause) for _ in range(4)]
    if name == "EPS and PS":
        eps = request(port, "/predict", multipart([("a.eps", EPS)]))
        ps = request(port, "/predict", multipart([("a.ps", PS)]))
        return [one_shot(port, d, deadline, tally, pause) for d in (eps, ps, eps, ps)]
    if name == "slowloris":
        return [slow_headers(port, deadline, tally) for _ in range(200)] + [
            slow_body(port, photo, deadline, tally) for _ in range(50)
        ]
    if name == "20 MB bodies":
        junk = np.random.default_rng(0).integers(0, 256, 19_900_000, dtype=np.uint8).tobytes()
        under = request(port, "/predict", multipart([("junk.jpg", junk)]))  # under --max-body-mb 20
        over = request(port, "/predict", multipart([("junk.jpg", junk + junk[:5_000_000])]))  # over it
        return [one_shot(port, d, deadline, tally, pause) for d in (under, over, under, over)]
    if name == "/explain flood":
        data = request(port, "/explain", multipart([("x.jpg", photo)]))
        return [one_shot(port, data, deadline, tally, pause) for _ in range(16)]
    if name == "no token":
        data = request(port, "/predict", multipart([("x.jpg", photo)]), token=False)
        return [one_shot(port, data, deadline, tally, pause) for _ in range(4)]
    if name == "all at once":
        return [c for part in PHASES[1:-1] for c in attackers(part, port, assets, deadline, tally, pause)]
    return []


async def run_phase(
    name: str, port: int, assets: dict, seconds: float, clients: int, pause: float
) -> tuple[Tally, Tally]:
    deadline = time.perf_counter() + seconds
    normal, hostile = Tally(), Tally()
    normal_requests = [request(port, "/predict?top_k=3", multipart([("p.jpg", p)])) for p in assets["photos"]]
    tasks = [normal_client(port, normal_requests, deadline, normal, i) for i in range(clients)]
    tasks += attackers(name, port, assets, deadline, hostile, pause)
    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*tasks)
    normal.seconds = time.perf_counter() - started  # type: ignore[attr-defined]
    normal.client_cpu = time.process_time() - cpu  # type: ignore[attr-defined]
    return normal, hostile


PHASES = [
    "no attack",
    "decode-heavy PNGs",
    "EPS and PS",
    "slowloris",
    "20 MB bodies",
    "/explain flood",
    "no token",
    "all at once",
]


def health_summary(answers: list[tuple[float, dict | None]]) -> tuple[str, int, int]:
    lost = sum(1 for _, body in answers if body is None)
    overloaded = sum(1 for _, body in answers if body and body["status"] != "ok")
    slowest = max((s for s, _ in answers), default=0.0)
    return (
        f"{len(answers) - lost}/{len(answers)} answered (slowest {slowest:.2f} s), {overloaded} overloaded",
        lost,
        overloaded,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=25.0, help="length of each phase")
    parser.add_argument("--clients", type=int, default=4, help="normal clients")
    parser.add_argument(
        "--attack-pause",
        type=float,
        default=0.05,
        help="seconds each attacker but slowloris waits between requests (0: as fast as the loopback "
        "allows, a volumetric flood that takes the cores from the server)",
    )
    parser.add_argument("--log", type=Path, help="also write the server's log to this file")
    parser.add_argument("--phases", nargs="+", default=PHASES, choices=PHASES)
    args = parser.parse_args()
    print(f"machine: {describe_machine()}")
    assets = {"photos": bench_images("efficientnet_lite0", 50), "png": heavy_png()}
    print(
        f"load: {args.clients} normal clients (one flower photo per request, keep-alive) for "
        f"{args.seconds:.0f} s per phase; decode-heavy PNG {len(assets['png']) / 1e3:.0f} KB (5000x5000 RGBA)"
    )
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        artifact = make_bench_artifact("efficientnet_lite0", Path(folder))
        port = free_port()
        log = Path(folder) / "serve.log"
        process = start_server(artifact, port, log)
        try:
            print(f"server: pid {process.pid}, {rss_mb(process.pid):.0f} MB resident after start")
            attacks = [p for p in args.phases if p != "no attack"]
            # each attack right after a phase without one: the machine's own drift (other tenants,
            # thermal) moves both alike, and each attack is measured against its own reference
            for name in [phase for attack in attacks for phase in ("no attack", attack)] or ["no attack"]:
                with Watch(process.pid, port) as watch:
                    normal, hostile = asyncio.run(
                        run_phase(name, port, assets, args.seconds, args.clients, args.attack_pause)
                    )
                    time.sleep(0.3)
                health, lost, overloaded = health_summary(watch.health)
                rows.append((name, normal, hostile, watch.peak, health, lost, overloaded))
                print(
                    f"  {name}: normal {dict(normal.statuses)}; hostile {dict(hostile.statuses)}; "
                    f"peak RSS {watch.peak:.0f} MB; /health {health}",
                    flush=True,
                )
                time.sleep(2)  # let the server drain before the next phase
        finally:
            process.terminate()
            process.wait(timeout=30)
        server_log = log.read_text(errors="replace")
        if args.log is not None:
            args.log.write_text(server_log)
    print()
    header = (
        f"{'phase':<18} {'peak RSS':>9} {'ok req/s':>8} {'vs none':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'errors':>6} {'503':>4} {'client CPU':>10}  hostile answers"
    )
    print(header)
    print("-" * (len(header) + 30))
    verdicts = []
    base_rps = float("nan")
    for name, normal, hostile, peak, _health, lost, overloaded in rows:
        if name == "no attack":
            base_rps = normal.statuses["200"] / normal.seconds  # the reference of the attack after it
        values = np.asarray(normal.latencies) * 1000
        ok = normal.statuses["200"]
        total = sum(normal.statuses.values())
        turned = normal.statuses["503"]
        errors = total - ok
        rps = ok / normal.seconds
        ratio = rps / base_rps if base_rps else float("nan")
        p50 = float(np.percentile(values, 50)) if len(values) else float("nan")
        p99 = float(np.percentile(values, 99)) if len(values) else float("nan")
        others = sorted(hostile.statuses.items())
        print(
            f"{name:<18} {peak:>7.0f}MB {rps:>8.1f} {ratio:>6.0%} {p50:>7.0f} {p99:>7.0f} "
            f"{errors / max(total, 1):>6.1%} {turned:>4} {normal.client_cpu:>9.1f}s  "
            f"{', '.join(f'{k}: {v}' for k, v in others) or '-'}"
        )
        unclean = {k: v for k, v in normal.statuses.items() if k not in ("200", "503")}
        unclean |= {
            f"hostile {k}": v for k, v in hostile.statuses.items() if k.startswith("5") and k != "503"
        }
        held = ratio >= 0.9 or (turned > 0 and not unclean)
        truthful = lost == 0 and (overloaded > 0 if turned or hostile.statuses["503"] else True)
        verdicts.append((name, peak < 2048, held and not unclean, truthful, unclean))
    print()
    for name, memory, held, truthful, unclean in verdicts:
        print(
            f"{name:<18} RSS < 2 GB: {'yes' if memory else 'NO'}; normal clients >= 90% or clean 503: "
            f"{'yes' if held else 'NO'}{f' {unclean}' if unclean else ''}; /health truthful: "
            f"{'yes' if truthful else 'NO'}"
        )
    tracebacks = server_log.count("Traceback")
    print(f"server log: {len(server_log.splitlines())} lines, {tracebacks} tracebacks")
    if tracebacks:  # the exceptions, by their last line: the first unindented one after "Traceback"
        ends: collections.Counter[str] = collections.Counter()
        inside = False
        for line in server_log.splitlines():
            if line.startswith("Traceback"):
                inside = True
            elif inside and line and not line.startswith(" "):
                ends[line] += 1
                inside = False
        for line, count in ends.most_common(10):
            print(f"  {count} × {line[:200]}")
    print(
        f"cores: {os.cpu_count()} (clients and server share them: 'client CPU' is what this script's "
        "own clients, normal and hostile, took of them in each phase)"
    )


if __name__ == "__main__":
    main()
