"""The body of scripts/bench-serving: trains two MNIST versions on a running lancer serve,
serves them through an alias, and prints the alias against the replica reached directly."""

import datetime
import gzip
import json
import platform
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import httpx

URL, WORK, SECONDS = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
API = f"{URL}/api/v1"
MODEL = "mnist_cnn"
http = httpx.Client(timeout=120)


def run_task(spec: dict) -> dict:
    task = http.post(f"{API}/tasks", json=spec).raise_for_status().json()
    while task["status"] in ("pending", "running"):
        time.sleep(0.5)
        task = http.get(f"{API}/tasks/{task['id']}").json()
    if task["status"] != "completed":
        sys.exit(f"bench-serving: {spec['name']} {task['status']}: {task.get('error')}")
    return task


def serving() -> dict:
    return http.get(f"{API}/models/{MODEL}/serving").json()


def wait_ready(versions: set) -> list:
    """The replicas once every version in `versions` has one ready and nothing starts."""
    while True:
        replicas = serving()["replicas"]
        ready = {r["version"] for r in replicas if r["state"] == "ready"}
        if ready == versions and all(r["state"] == "ready" for r in replicas):
            return replicas
        time.sleep(0.2)


def digit_body() -> str:
    """One held-out digit, scaled to [0, 1] as the drawing page sends it."""
    images = sorted((WORK / "lake/raw/mnist").glob("t10k-images*"))[0]
    with gzip.open(images) if images.suffix == ".gz" else open(images, "rb") as f:
        _, _, rows, cols = struct.unpack(">IIII", f.read(16))
        pixels = f.read(rows * cols)
    return json.dumps({"image": [p / 255 for p in pixels]})


def wrk(url: str, script: Path) -> tuple:
    """requests/s and p99 (ms) of `url` at concurrency 32, after a second's warm-up."""
    base = ["wrk", "-t1", "-c32", "--latency", "-s", str(script)]
    subprocess.run(base + ["-d1s", url], capture_output=True, check=True)
    out = subprocess.run(base + [f"-d{SECONDS}s", url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()
    p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, p99, int(errors.group(1)) if errors else 0


def main() -> None:
    run_task({"name": "clean", "script": "mnist/bin/mnist-clean", "input": "raw/mnist/", "output": "mnist_clean",
              "params": {"normalize": True, "flatten": True}})
    for seed in (1, 2):
        run_task({"name": "train", "script": "mnist/bin/mnist-train", "input": "mnist_clean",
                  "output": f"models/{MODEL}", "params": {"epochs": 1, "seed": seed}})
    declaration = {"script": "mnist/bin/mnist-serve", "replicas": {"min": 1, "max": 1}, "max_concurrency": 64}
    http.put(f"{API}/models/{MODEL}/serving", json=declaration).raise_for_status()
    http.put(f"{API}/models/{MODEL}/aliases/production", json={"version": 1}).raise_for_status()
    replica = wait_ready({1})[0]
    direct = http.get(f"{API}/tasks/{replica['task_id']}").json()["endpoint"].rstrip("/")
    alias = f"{API}/models/{MODEL}@production/endpoint"
    script = WORK / "predict.lua"
    body = digit_body()
    script.write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [[{body}]]\n')
    (d_rps, d_p99, d_err), (a_rps, a_p99, a_err) = wrk(f"{direct}/predict", script), wrk(f"{alias}/predict", script)

    http.put(f"{API}/models/{MODEL}/serving", json={**declaration, "replicas": {"min": 0, "max": 1},
                                                   "scale_down_after_s": 1}).raise_for_status()
    colds = []
    for _ in range(3):
        while serving()["replicas"]:
            time.sleep(0.2)
        started = time.monotonic()
        answer = http.post(f"{alias}/predict", content=body, headers={"content-type": "application/json"})
        answer.raise_for_status()
        colds.append(time.monotonic() - started)

    http.put(f"{API}/models/{MODEL}/serving", json=declaration).raise_for_status()
    http.put(f"{API}/models/{MODEL}/aliases/production", json={"versions": {"1": 90, "2": 10}}).raise_for_status()
    wait_ready({1, 2})
    answered = {}
    for _ in range(10_000):
        r = http.post(f"{alias}/predict", content=body, headers={"content-type": "application/json"})
        answered[r.headers.get("x-lancer-version")] = answered.get(r.headers.get("x-lancer-version"), 0) + 1

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
    print(f"bench-serving, {datetime.date.today()}, {cpu}, lancer serve (debug build), mnist-serve, wrk -t1 -c32, {SECONDS} s")
    print(f"  /predict direct:  {d_rps:8.0f} req/s  p99 {d_p99:6.2f} ms  non-2xx {d_err}")
    print(f"  /predict alias:   {a_rps:8.0f} req/s  p99 {a_p99:6.2f} ms  non-2xx {a_err}")
    print(f"  alias/direct throughput {a_rps / d_rps:.1%}, p99 {a_p99 - d_p99:+.2f} ms")
    print(f"  cold start from zero to the first answer: {', '.join(f'{c:.2f} s' for c in colds)}")
    share = answered.get("2", 0) / sum(answered.values())
    print(f"  canary 90/10 over 10,000 requests: {answered} -> version 2 answered {share:.2%}")
    # Replicas stop with the declaration; a runner left behind would outlive the server.
    http.delete(f"{API}/models/{MODEL}/serving").raise_for_status()
    while http.get(f"{API}/tasks", params={"status": "running"}).json()["tasks"]:
        time.sleep(0.2)


main()
