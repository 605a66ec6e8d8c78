//! A page of an artifact's rows as JSON: what the console shows as a table, and as
//! pictures for image columns. Bounded in rows, columns and bytes whatever the data.

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use super::Service;
use super::artifacts::resource_of;
use crate::domain::path::Name;
use crate::domain::tenant::Tenant;
use crate::domain::validate::ArtifactKind;
use crate::error::{Error, Result};
use crate::ports::{Field, RowsQuery, SIZES_OF_BINARY};

/// The most rows one page holds, and the page size unless asked.
pub const MAX_ROWS: u64 = 100;
const DEFAULT_ROWS: u64 = 20;

/// The most columns one request may name.
const MAX_COLUMNS: usize = 64;

/// The most bytes of JSON one page's cells add up to (well inside Lambda's 6 MB): a page
/// stops before the row that would pass it.
const MAX_PAGE_BYTES: usize = 4 << 20;

/// The most items of one list cell, and characters of one string cell, shown in full; a
/// bigger cell is summarised (`{"items": n}`, or the text cut with `…`).
const MAX_CELL_ITEMS: usize = 16_384;
const MAX_CELL_CHARS: usize = 16_384;

/// How deep lists and structs are shown; deeper ones are summarised (`{"depth": n}`).
const MAX_DEPTH: usize = 8;

/// The most values (list items, struct fields) one page visits: past it, cells are
/// summarised rather than walked, so a page's work is bounded whatever the nesting.
const MAX_PAGE_VALUES: usize = 1 << 20;

/// What a client asks for, as the query string carries it.
#[derive(Debug, Default, Clone)]
pub struct RowsRequest {
    /// The first row to return, counted from 0 (default 0).
    pub offset: Option<u64>,
    /// 1 to [`MAX_ROWS`], 20 unless asked.
    pub limit: Option<u64>,
    /// Comma-separated column names.
    pub columns: Option<String>,
    /// The version to read (default: the latest).
    pub version: Option<u64>,
}

/// A page of rows of one version.
#[derive(Debug, Serialize, ToSchema)]
pub struct Rows {
    /// The dataset's or model's name.
    pub id: String,
    /// The version the rows were read from.
    pub version: u64,
    /// The first row's position in that version.
    pub offset: u64,
    /// Rows in that version.
    pub total_rows: u64,
    /// The columns returned, with their types (and picture shapes).
    pub fields: Vec<Field>,
    /// One object per row, column name to value. Binary values are given as
    /// `{"bytes": n}`, lists longer than 16,384 items as `{"items": n}`.
    #[schema(value_type = Vec<Object>)]
    pub rows: Vec<Map<String, Value>>,
    /// Where the next page starts; absent after the last row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<u64>,
}

impl RowsRequest {
    fn parse(self) -> Result<RowsQuery> {
        let limit = self.limit.unwrap_or(DEFAULT_ROWS);
        if !(1..=MAX_ROWS).contains(&limit) {
            return Err(Error::invalid(format!(
                "limit must be between 1 and {MAX_ROWS}"
            )));
        }
        let offset = self.offset.unwrap_or(0);
        if offset > i64::MAX as u64 / 2 {
            return Err(Error::invalid("offset is too large"));
        }
        let columns = match self.columns {
            None => None,
            Some(list) => {
                let names: Vec<String> = list.split(',').map(|c| c.trim().to_owned()).collect();
                if names.len() > MAX_COLUMNS || names.iter().any(|n| n.is_empty() || n.len() > 256)
                {
                    return Err(Error::invalid(format!(
                        "columns must be 1 to {MAX_COLUMNS} comma-separated names"
                    )));
                }
                Some(names)
            }
        };
        Ok(RowsQuery {
            offset,
            limit,
            columns,
            version: self.version,
        })
    }
}

impl Service {
    /// A page of a dataset's or model's rows as JSON.
    pub async fn artifact_rows(
        &self,
        tenant: &Tenant,
        kind: ArtifactKind,
        name: &Name,
        request: RowsRequest,
    ) -> Result<Rows> {
        let query = request.parse()?;
        let slice = self
            .lake
            .rows(&tenant.root, kind, name, &query)
            .await?
            .ok_or_else(|| Error::not_found(resource_of(kind), name.as_str()))?;
        let rows = json_rows(&slice.batches, MAX_PAGE_BYTES);
        let end = query.offset + rows.len() as u64;
        Ok(Rows {
            id: name.to_string(),
            version: slice.version,
            offset: query.offset,
            total_rows: slice.total_rows,
            fields: slice.fields,
            next_offset: (end < slice.total_rows && !rows.is_empty()).then_some(end),
            rows,
        })
    }
}

/// The batches' rows as JSON objects, stopping before the row that would take the page
/// past `budget` bytes (the first row is always given, its cells cut to fit).
fn json_rows(batches: &[RecordBatch], budget: usize) -> Vec<Map<String, Value>> {
    let mut rows = Vec::new();
    let mut spent = 0;
    let mut work = Work {
        values_left: MAX_PAGE_VALUES,
    };
    for batch in batches {
        let schema = batch.schema();
        for row in 0..batch.num_rows() {
            let mut object = Map::new();
            let mut size = 0;
            for (field, column) in schema.fields().iter().zip(batch.columns()) {
                let mut value = if field.metadata().contains_key(SIZES_OF_BINARY) {
                    sizes_cell(column, row)
                } else {
                    work.cell(column, row, 0)
                };
                let len = value.to_string().len();
                if spent + size + len > budget {
                    if !rows.is_empty() {
                        return rows;
                    }
                    value = json!({"omitted_bytes": len});
                }
                size += len;
                object.insert(field.name().clone(), value);
            }
            spent += size;
            rows.push(object);
        }
    }
    rows
}

/// A cell of a column the lake gave as a binary column's sizes.
fn sizes_cell(array: &ArrayRef, row: usize) -> Value {
    match array.as_primitive_opt::<Int64Type>() {
        Some(sizes) if !sizes.is_null(row) => json!({"bytes": sizes.value(row)}),
        _ => Value::Null,
    }
}

/// What is left of a page's work.
struct Work {
    values_left: usize,
}

impl Work {
    /// One value as JSON: numbers, text, booleans, lists and structs as themselves, binary as
    /// its size, anything else (dates, decimals) as Arrow writes it.
    fn cell(&mut self, array: &ArrayRef, row: usize, depth: usize) -> Value {
        if array.is_null(row) {
            return Value::Null;
        }
        let nested = matches!(
            array.data_type(),
            DataType::List(_)
                | DataType::LargeList(_)
                | DataType::FixedSizeList(_, _)
                | DataType::Struct(_)
        );
        if nested && depth >= MAX_DEPTH {
            return json!({"depth": depth});
        }
        match array.data_type() {
            DataType::List(_) => self.list(&array.as_list::<i32>().value(row), depth),
            DataType::LargeList(_) => self.list(&array.as_list::<i64>().value(row), depth),
            DataType::FixedSizeList(_, _) => {
                self.list(&array.as_fixed_size_list().value(row), depth)
            }
            DataType::Struct(fields) => {
                if !self.spend(fields.len()) {
                    return json!({"fields": fields.len()});
                }
                let parts = array.as_struct();
                fields
                    .iter()
                    .zip(parts.columns())
                    .map(|(field, column)| {
                        (field.name().clone(), self.cell(column, row, depth + 1))
                    })
                    .collect::<Map<_, _>>()
                    .into()
            }
            _ => scalar(array, row),
        }
    }

    fn list(&mut self, items: &ArrayRef, depth: usize) -> Value {
        if items.len() > MAX_CELL_ITEMS || !self.spend(items.len()) {
            return json!({"items": items.len()});
        }
        Value::Array(
            (0..items.len())
                .map(|i| self.cell(items, i, depth + 1))
                .collect(),
        )
    }

    /// Takes `values` from the page's work; false once it has run out.
    fn spend(&mut self, values: usize) -> bool {
        match self.values_left.checked_sub(values) {
            Some(left) => {
                self.values_left = left;
                true
            }
            None => false,
        }
    }
}

/// A cell that holds no other cells: a number, text, or a binary value's size.
fn scalar(array: &ArrayRef, row: usize) -> Value {
    macro_rules! number {
        ($type:ty) => {
            json!(array.as_primitive::<$type>().value(row))
        };
    }
    match array.data_type() {
        DataType::Boolean => json!(array.as_boolean().value(row)),
        DataType::Int8 => number!(Int8Type),
        DataType::Int16 => number!(Int16Type),
        DataType::Int32 => number!(Int32Type),
        DataType::Int64 => number!(Int64Type),
        DataType::UInt8 => number!(UInt8Type),
        DataType::UInt16 => number!(UInt16Type),
        DataType::UInt32 => number!(UInt32Type),
        DataType::UInt64 => number!(UInt64Type),
        // NaN and infinities have no JSON form: they become null. An f32 is written in
        // its own shortest form (0.1, not 0.10000000149011612).
        DataType::Float32 => {
            let value = array.as_primitive::<Float32Type>().value(row);
            json!(
                value
                    .to_string()
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
            )
        }
        DataType::Float64 => number!(Float64Type),
        DataType::Utf8 => text(array.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => text(array.as_string::<i64>().value(row)),
        DataType::Utf8View => text(array.as_string_view().value(row)),
        DataType::Binary => json!({"bytes": array.as_binary::<i32>().value(row).len()}),
        DataType::LargeBinary => json!({"bytes": array.as_binary::<i64>().value(row).len()}),
        DataType::BinaryView => json!({"bytes": array.as_binary_view().value(row).len()}),
        DataType::FixedSizeBinary(size) => json!({"bytes": size}),
        _ => displayed(array, row),
    }
}

fn text(value: &str) -> Value {
    match value.char_indices().nth(MAX_CELL_CHARS) {
        Some((cut, _)) => Value::String(format!("{}…", &value[..cut])),
        None => Value::String(value.to_owned()),
    }
}

fn displayed(array: &ArrayRef, row: usize) -> Value {
    let options = arrow_cast::display::FormatOptions::default();
    match arrow_cast::display::ArrayFormatter::try_new(array.as_ref(), &options) {
        Ok(formatter) => Value::String(formatter.value(row).to_string()),
        Err(_) => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::builder::{FixedSizeListBuilder, Float32Builder};
    use arrow_array::{BinaryArray, Float64Array, Int64Array, StringArray};
    use arrow_schema::{Field as ArrowField, Schema};

    use super::*;

    fn batch(rows: usize) -> RecordBatch {
        let mut images = FixedSizeListBuilder::new(Float32Builder::new(), 4);
        for row in 0..rows {
            for pixel in 0..4 {
                images
                    .values()
                    .append_value((row * 4 + pixel) as f32 / 10.0);
            }
            images.append(true);
        }
        let images = images.finish();
        let schema = Schema::new(vec![
            ArrowField::new("label", DataType::Int64, false),
            ArrowField::new("image", images.data_type().clone(), false),
            ArrowField::new("weights", DataType::Binary, false),
            ArrowField::new("note", DataType::Utf8, true),
            ArrowField::new("score", DataType::Float64, false),
        ]);
        let label = Int64Array::from_iter_values(0..rows as i64);
        let weights = BinaryArray::from_iter_values((0..rows).map(|_| [7u8; 1000]));
        let note = StringArray::from_iter((0..rows).map(|r| (r % 2 == 0).then_some("<b>hi</b>")));
        let score =
            Float64Array::from_iter_values((0..rows).map(|r| if r == 1 { f64::NAN } else { 0.5 }));
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(label),
                Arc::new(images),
                Arc::new(weights),
                Arc::new(note),
                Arc::new(score),
            ],
        )
        .expect("a batch")
    }

    #[test]
    fn rows_become_objects_with_lists_as_arrays_and_binary_as_its_size() {
        let rows = json_rows(&[batch(2)], MAX_PAGE_BYTES);
        assert_eq!(
            Value::Array(rows.into_iter().map(Value::Object).collect()),
            json!([
                {"label": 0, "image": [0.0, 0.1, 0.2, 0.3], "weights": {"bytes": 1000}, "note": "<b>hi</b>", "score": 0.5},
                {"label": 1, "image": [0.4, 0.5, 0.6, 0.7], "weights": {"bytes": 1000}, "note": null, "score": null},
            ])
        );
    }

    #[test]
    fn a_list_longer_than_a_cell_shows_is_given_as_its_length() {
        use arrow_array::{Float32Array, ListArray};
        use arrow_buffer::OffsetBuffer;
        let lengths = [3, MAX_CELL_ITEMS + 1];
        let total: usize = lengths.iter().sum();
        let values = Float32Array::from_iter_values((0..total).map(|v| v as f32));
        let item = Arc::new(ArrowField::new("item", DataType::Float32, false));
        let list = ListArray::new(
            item,
            OffsetBuffer::from_lengths(lengths),
            Arc::new(values),
            None,
        );
        let schema = Schema::new(vec![ArrowField::new(
            "trace",
            list.data_type().clone(),
            false,
        )]);
        let batch = RecordBatch::try_new(Arc::new(schema), vec![Arc::new(list)]).expect("a batch");
        let rows = json_rows(&[batch], MAX_PAGE_BYTES);
        assert_eq!(rows[0]["trace"], json!([0.0, 1.0, 2.0]));
        assert_eq!(rows[1]["trace"], json!({"items": MAX_CELL_ITEMS + 1}));
    }

    #[test]
    fn a_page_stops_before_the_row_that_passes_the_byte_budget() {
        let one_row = json_rows(&[batch(1)], MAX_PAGE_BYTES);
        let row_bytes: usize = one_row[0].values().map(|v| v.to_string().len()).sum();
        let rows = json_rows(&[batch(5), batch(5)], row_bytes * 3 + 1);
        assert_eq!(rows.len(), 3);
        let tiny = json_rows(&[batch(3)], 10);
        assert_eq!(tiny.len(), 1, "the first row always comes");
        assert!(
            tiny[0]["image"].get("omitted_bytes").is_some(),
            "{:?}",
            tiny[0]
        );
    }

    #[test]
    fn deep_nesting_is_summarised_and_binary_sizes_show_as_bytes() {
        use arrow_array::ListArray;
        use arrow_buffer::OffsetBuffer;
        let mut column: ArrayRef = Arc::new(Int64Array::from(vec![1]));
        for _ in 0..40 {
            let field = Arc::new(ArrowField::new("item", column.data_type().clone(), true));
            column = Arc::new(ListArray::new(
                field,
                OffsetBuffer::from_lengths([1]),
                column,
                None,
            ));
        }
        let sizes = ArrowField::new("weights", DataType::Int64, true)
            .with_metadata([(SIZES_OF_BINARY.to_owned(), "size".to_owned())].into());
        let schema = Schema::new(vec![
            ArrowField::new("deep", column.data_type().clone(), false),
            sizes,
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![column, Arc::new(Int64Array::from(vec![10 << 20]))],
        )
        .expect("a batch");
        let rows = json_rows(&[batch], MAX_PAGE_BYTES);
        let mut deep = &rows[0]["deep"];
        for _ in 0..MAX_DEPTH {
            deep = &deep[0];
        }
        assert_eq!(deep, &json!({"depth": MAX_DEPTH}));
        assert_eq!(rows[0]["weights"], json!({"bytes": 10 << 20}));
    }

    #[test]
    fn requests_past_their_bounds_are_refused() {
        for request in [
            RowsRequest {
                limit: Some(0),
                ..Default::default()
            },
            RowsRequest {
                limit: Some(MAX_ROWS + 1),
                ..Default::default()
            },
            RowsRequest {
                offset: Some(u64::MAX),
                ..Default::default()
            },
            RowsRequest {
                columns: Some(",".into()),
                ..Default::default()
            },
            RowsRequest {
                columns: Some(vec!["c"; MAX_COLUMNS + 1].join(",")),
                ..Default::default()
            },
        ] {
            assert!(
                matches!(request.clone().parse(), Err(Error::InvalidRequest(_))),
                "{request:?}"
            );
        }
        let query = RowsRequest {
            columns: Some("label, image".into()),
            ..Default::default()
        }
        .parse()
        .expect("valid");
        assert_eq!(query.columns, Some(vec!["label".into(), "image".into()]));
        assert_eq!((query.offset, query.limit), (0, DEFAULT_ROWS));
    }
}
