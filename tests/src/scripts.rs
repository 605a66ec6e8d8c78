//! Task scripts the end-to-end tests run, one per behaviour of the run contract, shared
//! by every backend's tests.

/// Writes a Lance dataset with pylance and returns the row count.
pub const INGEST_PY: &str = r#"
import json, os
import lance
import pyarrow as pa

def run(input_path, output_path, params):
    n = params["rows"]
    table = pa.table({"index": list(range(n)), "label": [i % 10 for i in range(n)]})
    options = json.loads(os.environ["LANCER_STORAGE_OPTIONS"]) or None
    lance.write_dataset(table, output_path, mode="overwrite", storage_options=options)
    print(f"wrote {n} rows", flush=True)
    return {"total_records": n, "task": os.environ["LANCER_TASK_ID"]}
"#;

/// Reports progress and prints a line every 0.1 s for `steps` steps.
pub const SLOW_PY: &str = r#"
import json, os, time

def run(input_path, output_path, params):
    steps = params.get("steps", 600)
    with open(os.environ["LANCER_PROGRESS_FILE"], "a") as progress:
        for step in range(steps):
            print(f"step {step}", flush=True)
            line = {"fraction": step / steps, "message": f"step {step}", "metrics": {"step": step}}
            progress.write(json.dumps(line) + "\n")
            progress.flush()
            time.sleep(0.1)
    return {"steps": steps}
"#;

/// Raises, so the task fails with the exception.
pub const FAIL_PY: &str = r#"
def run(input_path, output_path, params):
    print("about to fail")
    raise ValueError(f"bad params: {params}")
"#;

/// An executable (bash) following the flag form of the contract.
pub const CONTRACT_SH: &str = r#"#!/usr/bin/env bash
set -euo pipefail
while [ $# -gt 0 ]; do
  case "$1" in
    --input) input=$2 ;; --output) output=$2 ;;
    --params-file) params=$2 ;; --result-file) result=$2 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
  shift 2
done
echo "executable got params $(cat "$params")"
printf '{"echo": %s, "output": "%s", "input": "%s"}' "$(cat "$params")" "$output" "$input" > "$result"
"#;

/// A service: reports its endpoint, then serves until stopped.
pub const SERVE_PY: &str = r#"
import http.server, json, os, threading

class Hello(http.server.BaseHTTPRequestHandler):
    def answer(self, received=b""):
        body = json.dumps({
            "hello": "lancer", "method": self.command, "path": self.path,
            "body": received.decode(), "authorization": self.headers.get("authorization"),
            "cookie": self.headers.get("cookie"),
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.answer()

    def do_POST(self):
        self.answer(self.rfile.read(int(self.headers.get("content-length", 0))))

def run(input_path, output_path, params):
    host = os.environ["LANCER_SERVE_HOST"]
    server = http.server.ThreadingHTTPServer((host, params.get("port", 0)), Hello)
    url = f"http://{host}:{server.server_address[1]}"
    with open(os.environ["LANCER_PROGRESS_FILE"], "a") as progress:
        progress.write(json.dumps({"endpoint": url, "message": "serving"}) + "\n")
    print(f"serving on {url}", flush=True)
    server.serve_forever()
"#;

/// Says its pid, ignores SIGTERM and runs until it is killed: a script only SIGKILL stops.
pub const STUBBORN_PY: &str = r#"
import os, signal, time

def run(input_path, output_path, params):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(f"script pid {os.getpid()}", flush=True)
    while True:
        time.sleep(0.1)
"#;

/// The first attempt runs until it is killed; a retry completes at once.
pub const FIRST_ATTEMPT_HANGS_PY: &str = r#"
import os, time

def run(input_path, output_path, params):
    attempt = int(os.environ["LANCER_ATTEMPT"])
    print(f"attempt {attempt} starting", flush=True)
    if attempt == 1:
        time.sleep(600)
    return {"attempt": attempt}
"#;
