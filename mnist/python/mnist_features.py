"""A lancer task under the run contract: adds feature columns to a cleaned MNIST dataset.

Lance schema evolution writes only the new columns: the images already stored are
read once and never rewritten. Columns: ink_mass (sum of pixel intensities in [0, 1]
units) and the bounding box of the ink (bbox_top, bbox_left, bbox_bottom, bbox_right;
-1 for a blank image).
"""
import lance
import numpy as np
import pyarrow as pa
from lancer import task

FEATURES = pa.schema([
    ("ink_mass", pa.float32()),
    ("bbox_top", pa.int32()),
    ("bbox_left", pa.int32()),
    ("bbox_bottom", pa.int32()),
    ("bbox_right", pa.int32()),
])


def images_of(batch):
    column = batch.column("image")
    while pa.types.is_fixed_size_list(column.type):
        column = column.flatten()
    return column.to_numpy(zero_copy_only=False).reshape(-1, 28, 28)


@lance.batch_udf(output_schema=FEATURES)
def features(batch):
    images = images_of(batch)
    if images.size and images.max() > 1.5:  # cleaned with normalize=false: 0-255
        images = images / 255.0
    ink = images > 0.1
    rows, cols = ink.any(axis=2), ink.any(axis=1)
    blank = ~rows.any(axis=1)

    def first(mask):
        return np.where(blank, -1, mask.argmax(axis=1)).astype(np.int32)

    def last(mask):
        return np.where(blank, -1, 27 - mask[:, ::-1].argmax(axis=1)).astype(np.int32)

    return pa.RecordBatch.from_arrays(
        [
            pa.array(images.sum(axis=(1, 2)).astype(np.float32)),
            pa.array(first(rows)),
            pa.array(first(cols)),
            pa.array(last(rows)),
            pa.array(last(cols)),
        ],
        schema=FEATURES,
    )


def run(input_path, output_path, params):
    options = task.storage_options or None
    dataset = lance.dataset(input_path, storage_options=options)
    task.report(0.0, f"adding {FEATURES.names} to {input_path}")
    present = [name for name in FEATURES.names if name in dataset.schema.names]
    if present:  # a rerun replaces its own columns
        dataset.drop_columns(present)
    dataset.add_columns(features, read_columns=["image"])
    dataset = lance.dataset(input_path, storage_options=options)
    print(f"added {FEATURES.names} to {input_path}, now version {dataset.version}", flush=True)
    task.report(1.0, f"added {len(FEATURES.names)} columns, version {dataset.version}")
    return {"columns_added": FEATURES.names, "version": dataset.version, "rows": dataset.count_rows()}
