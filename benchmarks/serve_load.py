"""Requests per second and latency of ``deeplab serve`` under 1, 4 and 16 concurrent clients (loopback only).

    python benchmarks/serve_load.py --checkpoint runs/demo/best.pt [--clients 1 4 16] [--requests 96]
                                    [--max-seconds 60] [--rounds 3] [--size 128] [--format png] [--max-batch 8]

Starts ``deeplab serve`` as a separate process on 127.0.0.1 (a free port), sends demo-set images
(``--size`` px PNGs) from ``N`` concurrent clients that each post one image after another, and stops at
``--requests`` answers or ``--max-seconds`` per level, whichever comes first; then stops the server.
The levels run ``--rounds`` times in turn (1, 4, 16, 1, 4, 16, ...) so that noise from other work on
the machine hits them alike. Prints one markdown table row per level: the median requests/s of the
rounds (with the lowest and highest) and latency percentiles over all of its requests. Without a checkpoint, train one:
``deeplab train --config configs/demo.yaml`` (or ``--set train.iterations=20`` for the same architecture).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch
from PIL import Image

from deeplab.data.demo import DemoDataset

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _demo_pngs(count: int, size: int) -> list[bytes]:
    data = DemoDataset(split="val", image_size=size)
    pngs = []
    for index in range(count):
        buffer = io.BytesIO()
        Image.fromarray(data.render(index)[0]).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return pngs


def _start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "deeplab.cli", "serve", "--checkpoint", str(args.checkpoint), "--host",
               "127.0.0.1", "--port", str(port), "--device", "cpu", "--max-batch", str(args.max_batch)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


async def _wait_until_up(url: str, server: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=url) as client:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited: {server.stderr.read() if server.stderr else ''}")
            try:
                if (await client.get("/health", timeout=2)).status_code == 200:
                    return
            except httpx.TransportError:
                await asyncio.sleep(0.2)
    raise RuntimeError(f"the server did not answer within {timeout:.0f} s")


async def _level(url: str, clients: int, images: list[bytes], args: argparse.Namespace) -> dict[str, float]:
    """Runs ``clients`` concurrent clients until ``args.requests`` answers or ``args.max_seconds`` pass."""
    latencies: list[float] = []
    errors = 0
    issued = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        before = (await client.get("/health")).json()
        start = time.perf_counter()
        deadline = start + args.max_seconds

        async def one_client() -> None:
            nonlocal issued, errors
            while issued < args.requests and time.perf_counter() < deadline:
                data = images[issued % len(images)]
                issued += 1
                sent = time.perf_counter()
                response = await client.post("/predict", params={"format": args.format}, content=data,
                                             headers={"content-type": "image/png"})
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - sent)
                else:
                    errors += 1

        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.perf_counter() - start
        after = (await client.get("/health")).json()
    batches = max(after["batches"] - before["batches"], 1)
    return {"clients": clients, "requests": len(latencies), "errors": errors, "wall": wall,
            "rps": len(latencies) / wall, "latencies": latencies, "images": after["images"] - before["images"],
            "batches": batches}


def _summary(rounds: list[dict]) -> dict[str, float]:
    """One level's rounds: median, lowest and highest requests/s; percentiles over every latency."""
    latencies = [latency for one in rounds for latency in one["latencies"]]
    cuts = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    rates = [one["rps"] for one in rounds]
    return {"clients": rounds[0]["clients"], "requests": len(latencies),
            "errors": sum(one["errors"] for one in rounds), "rps": statistics.median(rates), "low": min(rates),
            "high": max(rates), "p50": cuts[49] * 1e3, "p90": cuts[89] * 1e3, "p99": cuts[98] * 1e3,
            "batch": sum(one["images"] for one in rounds) / sum(one["batches"] for one in rounds)}


async def _run(args: argparse.Namespace) -> list[dict[str, float]]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    images = _demo_pngs(16, args.size)
    server = _start_server(args, port)
    try:
        await _wait_until_up(url, server)
        await _level(url, 1, images, argparse.Namespace(**{**vars(args), "requests": args.warmup}))
        rounds: dict[int, list[dict]] = {clients: [] for clients in args.clients}
        for _ in range(args.rounds):
            for clients in args.clients:
                rounds[clients].append(await _level(url, clients, images, args))
        return [_summary(results) for results in rounds.values()]
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/demo/best.pt"))
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=96, help="answers per level (at most)")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="time per level (at most)")
    parser.add_argument("--rounds", type=int, default=3, help="times each level runs (in turn)")
    parser.add_argument("--warmup", type=int, default=4, help="requests before measuring")
    parser.add_argument("--size", type=int, default=128, help="side of the demo images sent")
    parser.add_argument("--format", default="png", choices=["png", "json", "overlay"])
    parser.add_argument("--max-batch", type=int, default=8, help="the server's --max-batch")
    args = parser.parse_args()
    if not args.checkpoint.is_file():
        sys.exit(f"no checkpoint at {args.checkpoint}: train one with `deeplab train --config configs/demo.yaml`")
    rows = asyncio.run(_run(args))
    print(f"deeplab serve --checkpoint {args.checkpoint} --max-batch {args.max_batch} on CPU "
          f"({os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads); "
          f"{args.size}x{args.size} PNG uploads, ?format={args.format}, loopback, {args.rounds} rounds")
    print("| clients | requests | errors | requests/s median (min-max) | p50 latency (ms) | p90 (ms) | p99 (ms) "
          "| mean batch |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['clients']} | {row['requests']} | {row['errors']} | {row['rps']:.1f} ({row['low']:.1f}-"
              f"{row['high']:.1f}) | {row['p50']:.0f} | {row['p90']:.0f} | {row['p99']:.0f} | {row['batch']:.2f} |")


if __name__ == "__main__":
    main()
