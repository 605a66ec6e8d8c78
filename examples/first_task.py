"""A first lancer task: writes `rows` numbers and their squares as a Lance dataset.

    lancer tasks submit --name numbers --script examples/first_task.py --output numbers --param rows=10 --wait
"""
import json
import os

import lance
import pyarrow as pa


def run(input_path, output_path, params):
    rows = int(params.get("rows", 10))
    table = pa.table({"n": list(range(rows)), "square": [n * n for n in range(rows)]})
    # The lake's own storage options (none on disk; endpoint and region on S3).
    options = json.loads(os.environ.get("LANCER_STORAGE_OPTIONS") or "{}") or None
    lance.write_dataset(table, output_path, mode="overwrite", storage_options=options)
    print(f"wrote {rows} rows to {output_path}", flush=True)
    return {"total_records": rows}
