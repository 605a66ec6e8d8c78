"""The Python way to do mnist-clean's job: numpy reads the IDX files, pyarrow builds the
same table (index, image as 784 floats in [0, 1], label, split), pylance writes it.

    python pylance_clean.py --raw DIR --output DATASET.lance
"""
import argparse
import gzip
import json
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa


def read_idx(path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def find(raw, prefix, kind):
    return next(p for p in Path(raw).iterdir() if p.name.startswith(prefix) and kind in p.name)


def batches(raw, rows_per_batch=4096):
    start = 0
    for prefix, split in (("train", "train"), ("t10k", "test")):
        images = read_idx(find(raw, prefix, "images"))
        labels = read_idx(find(raw, prefix, "labels"))
        for at in range(0, len(labels), rows_per_batch):
            chunk = images[at : at + rows_per_batch].reshape(-1, 784).astype(np.float32) / 255.0
            n = len(chunk)
            yield pa.record_batch(
                [
                    pa.array(np.arange(start, start + n, dtype=np.int64)),
                    pa.FixedSizeListArray.from_arrays(pa.array(chunk.ravel()), 784),
                    pa.array(labels[at : at + n].astype(np.int64)),
                    pa.array([split] * n),
                ],
                names=["index", "image", "label", "split"],
            )
            start += n


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--raw", required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    schema = pa.schema(
        [
            ("index", pa.int64()),
            ("image", pa.list_(pa.float32(), 784)),
            ("label", pa.int64()),
            ("split", pa.string()),
        ]
    )
    reader = pa.RecordBatchReader.from_batches(schema, batches(args.raw))
    dataset = lance.write_dataset(reader, args.output, mode="overwrite")
    print(json.dumps({"total_records": dataset.count_rows()}))


if __name__ == "__main__":
    main()
