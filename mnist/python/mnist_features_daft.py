"""A lancer task under the run contract, on the Daft dataframe engine: per-image features.

Many pipelines run their steps on Daft, so this is the Daft twin of
mnist_features.py. Unlike that one (which adds columns in place), it reads the cleaned MNIST
dataset with daft.read_lance, at the version the platform pinned (LANCER_INPUT_VERSION), and
writes a new dataset at output_path (overwrite): label, split, ink_mass (sum of the pixels,
in [0, 1] units, so it expects mnist-clean's normalize=true) and ink_pixels (pixels above 0.1).
Needs `daft[lance]` beside pylance (`pip install "daft[lance]==0.7.26"`).
"""
import os
import time

from lancer import task

os.environ.setdefault("DO_NOT_TRACK", "1")  # daft pings analytics on import unless told not to

import daft  # noqa: E402
import pyarrow as pa  # noqa: E402
from daft import col, element  # noqa: E402
from daft.functions import list_count, list_filter, list_sum  # noqa: E402
from daft.io import IOConfig, S3Config  # noqa: E402

# Lance/object_store option names (with and without the aws_ prefix) -> Daft's S3Config.
S3_KEYS = {
    "endpoint": "endpoint_url", "endpoint_url": "endpoint_url",
    "region": "region_name",
    "access_key_id": "key_id",
    "secret_access_key": "access_key",
    "session_token": "session_token", "token": "session_token",
}


def io_config(options):
    """daft.read_lance takes an IOConfig, not Lance storage options: translate the S3 ones."""
    if not options:
        return None
    s3 = {}
    for key, value in options.items():
        name = key.lower().removeprefix("aws_")
        if name in S3_KEYS:
            s3[S3_KEYS[name]] = value
        elif name == "allow_http":
            s3["use_ssl"] = str(value).lower() != "true"
        elif name in ("virtual_hosted_style_request", "skip_signature"):
            flag = "force_virtual_addressing" if name.startswith("virtual") else "anonymous"
            s3[flag] = str(value).lower() == "true"
    return IOConfig(s3=S3Config(**s3))


def run(input_path, output_path, params):
    options = task.storage_options or None
    version = task.input_version
    task.report(0.0, f"daft {daft.__version__}: reading {input_path} version {version or 'latest'}")
    started = time.monotonic()

    df = daft.read_lance(input_path, version=version, io_config=io_config(options))
    pixels = col("image").cast(daft.DataType.list(daft.DataType.float32()))  # list_filter: no fixed-size lists
    df = df.select(
        col("label"),
        col("split"),
        list_sum(col("image")).cast(daft.DataType.float32()).alias("ink_mass"),
        list_count(list_filter(pixels, element() > 0.1)).cast(daft.DataType.int32()).alias("ink_pixels"),
    )
    # Daft has one string type (Arrow large_string); the lake's Rust readers want Utf8.
    schema = pa.schema([pa.field(f.name, pa.string() if pa.types.is_large_string(f.type) else f.type)
                        for f in df.schema().to_pyarrow_schema()])
    written = df.write_lance(output_path, mode="overwrite", schema=schema, storage_options=options).to_pydict()

    out = daft.read_lance(output_path, io_config=io_config(options))
    rows, columns = out.count_rows(), out.column_names
    seconds = round(time.monotonic() - started, 2)
    task.report(1.0, f"wrote {rows} rows to {output_path} in {seconds}s")
    print(f"daft wrote {columns} ({rows} rows) to {output_path}, version {written['version'][0]}", flush=True)
    return {"rows": rows, "columns": columns, "version": written["version"][0],
            "input_version": version, "seconds": seconds}
