//! Rows of one table, gathered column by column until the sink commits them.
//!
//! Every table has nublar's own columns first, then one column per tag and field in the order
//! they were first seen. Tags and string fields are Arrow `Utf8` (Parquet dictionary-encodes
//! them), floats `Float64`, integers `Int64`, booleans `Boolean`, and unsigned integers
//! `Decimal128(20, 0)`: Delta has no unsigned type, and a decimal of 20 digits holds every
//! `u64` exactly where a `long` would wrap past 2^63.

use std::collections::HashMap;
use std::sync::Arc;

use deltalake::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Decimal128Builder, Float64Builder, Int64Builder,
    StringBuilder, TimestampMicrosecondBuilder, new_null_array,
};
use deltalake::arrow::datatypes::{DataType as ArrowType, SchemaRef};
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::kernel::{DataType, StructField};
use nublar_model::{ColumnKind, FieldType, FieldValue, ParsedLine};

/// The event time, as a Delta `timestamp` (microseconds, UTC).
pub const TIME: &str = "time";
/// The event time in nanoseconds as the sender gave it: a `timestamp` keeps microseconds only.
pub const TIME_NS: &str = "_time_ns";
/// The event's UTC day, the partition column.
pub const DAY: &str = "_day";
/// The address the event came from.
pub const SENDER: &str = "_sender";
/// The batch's idempotency key (database and `Idempotency-Key`), when it had one.
pub const BATCH_KEY: &str = "_batch_key";

/// Columns every table has, in order. Names from senders cannot collide with them: the
/// gateway rejects keys named `time` and names starting with `_`.
pub fn own_columns() -> Vec<StructField> {
    vec![
        StructField::new(TIME, DataType::TIMESTAMP, false),
        StructField::new(TIME_NS, DataType::LONG, false),
        StructField::new(DAY, DataType::DATE, false),
        StructField::new(SENDER, DataType::STRING, true),
        StructField::new(BATCH_KEY, DataType::STRING, true),
    ]
}

/// The Delta type of a sender's column of `kind`.
pub fn delta_type(kind: ColumnKind) -> DataType {
    match kind {
        ColumnKind::Tag | ColumnKind::Field(FieldType::Str) => DataType::STRING,
        ColumnKind::Field(FieldType::F64) => DataType::DOUBLE,
        ColumnKind::Field(FieldType::I64) => DataType::LONG,
        ColumnKind::Field(FieldType::Bool) => DataType::BOOLEAN,
        ColumnKind::Field(FieldType::U64) => {
            DataType::decimal(20, 0).expect("20 digits at scale 0 is a valid decimal")
        }
    }
}

/// The row and where it came from, besides the event itself.
pub struct RowOrigin<'a> {
    pub sender: Option<&'a str>,
    pub batch_key: Option<&'a str>,
}

/// Why a value was left out of its row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub column: String,
    pub known: ColumnKind,
    pub got: ColumnKind,
}

const NANOS_PER_MICRO: i64 = 1_000;
const NANOS_PER_DAY: i64 = 86_400 * 1_000_000_000;

/// The rows of one table not yet committed.
pub struct TableBuffer {
    rows: usize,
    /// Approximate bytes held, for the sink's memory bound.
    bytes: usize,
    time: TimestampMicrosecondBuilder,
    time_ns: Int64Builder,
    day: Date32Builder,
    sender: StringBuilder,
    batch_key: StringBuilder,
    /// By stored (encoded) name; the name as sent is kept beside it.
    columns: Vec<Column>,
    by_name: HashMap<String, usize>,
    /// The column of each tag and field of the previous row, in the row's order: the rows of
    /// a table mostly share one shape, so a name compared with the one at its place usually
    /// finds its column without hashing.
    shape: Vec<usize>,
}

struct Column {
    name: String,
    kind: ColumnKind,
    values: Values,
}

enum Values {
    Str(StringBuilder),
    F64(Float64Builder),
    I64(Int64Builder),
    U64(Decimal128Builder),
    Bool(BooleanBuilder),
}

impl Values {
    fn new(kind: ColumnKind) -> Values {
        match kind {
            ColumnKind::Tag | ColumnKind::Field(FieldType::Str) => {
                Values::Str(StringBuilder::new())
            }
            ColumnKind::Field(FieldType::F64) => Values::F64(Float64Builder::new()),
            ColumnKind::Field(FieldType::I64) => Values::I64(Int64Builder::new()),
            ColumnKind::Field(FieldType::Bool) => Values::Bool(BooleanBuilder::new()),
            ColumnKind::Field(FieldType::U64) => Values::U64(
                Decimal128Builder::new()
                    .with_precision_and_scale(20, 0)
                    .expect("20 digits at scale 0 is a valid decimal"),
            ),
        }
    }

    fn len(&self) -> usize {
        use deltalake::arrow::array::ArrayBuilder;
        match self {
            Values::Str(builder) => builder.len(),
            Values::F64(builder) => builder.len(),
            Values::I64(builder) => builder.len(),
            Values::U64(builder) => builder.len(),
            Values::Bool(builder) => builder.len(),
        }
    }

    fn append_nulls(&mut self, count: usize) {
        match self {
            Values::Str(builder) => builder.append_nulls(count),
            Values::F64(builder) => builder.append_nulls(count),
            Values::I64(builder) => builder.append_nulls(count),
            Values::U64(builder) => builder.append_nulls(count),
            Values::Bool(builder) => builder.append_nulls(count),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Values::Str(builder) => Arc::new(builder.finish()),
            Values::F64(builder) => Arc::new(builder.finish()),
            Values::I64(builder) => Arc::new(builder.finish()),
            Values::U64(builder) => Arc::new(builder.finish()),
            Values::Bool(builder) => Arc::new(builder.finish()),
        }
    }
}

fn kind_of(value: &FieldValue<'_>) -> ColumnKind {
    ColumnKind::Field(match value {
        FieldValue::F64(_) => FieldType::F64,
        FieldValue::I64(_) => FieldType::I64,
        FieldValue::U64(_) => FieldType::U64,
        FieldValue::Bool(_) => FieldType::Bool,
        FieldValue::Str(_) => FieldType::Str,
    })
}

impl Default for TableBuffer {
    fn default() -> TableBuffer {
        TableBuffer {
            rows: 0,
            bytes: 0,
            time: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            time_ns: Int64Builder::new(),
            day: Date32Builder::new(),
            sender: StringBuilder::new(),
            batch_key: StringBuilder::new(),
            columns: Vec::new(),
            by_name: HashMap::new(),
            shape: Vec::new(),
        }
    }
}

impl TableBuffer {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The sender's columns seen in this buffer: name as sent and kind, in order.
    pub fn columns(&self) -> impl Iterator<Item = (&str, ColumnKind)> {
        self.columns
            .iter()
            .map(|column| (column.name.as_str(), column.kind))
    }

    /// Adds one event as a row. `known` says what the table already holds for a name (its
    /// committed schema); a value whose kind differs from what the table or this buffer holds
    /// is left out (null) and reported, never written to a column of another type.
    pub fn push(
        &mut self,
        line: &ParsedLine<'_>,
        timestamp_ns: i64,
        origin: &RowOrigin<'_>,
        known: impl Fn(&str) -> Option<ColumnKind>,
        mismatches: &mut Vec<Mismatch>,
    ) {
        self.time
            .append_value(timestamp_ns.div_euclid(NANOS_PER_MICRO));
        self.time_ns.append_value(timestamp_ns);
        let day = i32::try_from(timestamp_ns.div_euclid(NANOS_PER_DAY))
            .expect("an i64 of nanoseconds spans fewer days than i32 holds");
        self.day.append_value(day);
        self.sender.append_option(origin.sender);
        self.batch_key.append_option(origin.batch_key);
        let mut bytes =
            40 + origin.sender.map_or(0, str::len) + origin.batch_key.map_or(0, str::len);
        let mut place = 0;
        for tag in &line.tags {
            place += 1;
            if let Some(values) =
                self.column(place - 1, &tag.key, ColumnKind::Tag, &known, mismatches)
                && let Values::Str(builder) = values
            {
                builder.append_value(&tag.value);
                bytes += tag.value.len() + 4;
            }
        }
        for field in &line.fields {
            let kind = kind_of(&field.value);
            place += 1;
            let Some(values) = self.column(place - 1, &field.key, kind, &known, mismatches) else {
                continue;
            };
            match (values, &field.value) {
                (Values::F64(builder), FieldValue::F64(value)) => builder.append_value(*value),
                (Values::I64(builder), FieldValue::I64(value)) => builder.append_value(*value),
                (Values::U64(builder), FieldValue::U64(value)) => {
                    builder.append_value(i128::from(*value))
                }
                (Values::Bool(builder), FieldValue::Bool(value)) => builder.append_value(*value),
                (Values::Str(builder), FieldValue::Str(value)) => {
                    builder.append_value(value);
                    bytes += value.len();
                }
                _ => unreachable!("`column` returns values of the field's kind"),
            }
            bytes += 12;
        }
        self.bytes += bytes;
        self.rows += 1;
        // Columns this row did not fill get a null, so every column stays one value per row.
        for column in &mut self.columns {
            if column.values.len() < self.rows {
                column.values.append_nulls(self.rows - column.values.len());
            }
        }
    }

    /// The values of column `name` for a value of `kind`, created (with nulls for the rows
    /// before) if new; `None` (reported) when the table or this buffer has it as another kind.
    fn column(
        &mut self,
        place: usize,
        name: &str,
        kind: ColumnKind,
        known: &impl Fn(&str) -> Option<ColumnKind>,
        mismatches: &mut Vec<Mismatch>,
    ) -> Option<&mut Values> {
        let same_place = self
            .shape
            .get(place)
            .copied()
            .filter(|&index| self.columns[index].name == name);
        let index = match same_place.or_else(|| self.by_name.get(name).copied()) {
            Some(index) => index,
            None => {
                if let Some(known) = known(name)
                    && known != kind
                {
                    mismatches.push(Mismatch {
                        column: name.to_owned(),
                        known,
                        got: kind,
                    });
                    return None;
                }
                let mut values = Values::new(kind);
                values.append_nulls(self.rows);
                self.columns.push(Column {
                    name: name.to_owned(),
                    kind,
                    values,
                });
                self.by_name.insert(name.to_owned(), self.columns.len() - 1);
                self.columns.len() - 1
            }
        };
        if place < self.shape.len() {
            self.shape[place] = index;
        } else if place == self.shape.len() {
            self.shape.push(index);
        }
        let column = &mut self.columns[index];
        if column.kind != kind {
            mismatches.push(Mismatch {
                column: name.to_owned(),
                known: column.kind,
                got: kind,
            });
            return None;
        }
        // A key repeated within one line was collapsed by the parser, so a column is filled
        // at most once per row; this guard keeps the one-value-per-row rule even so.
        if column.values.len() > self.rows {
            return None;
        }
        Some(&mut column.values)
    }

    /// The rows as one Arrow batch in `schema` (the table writer's: stored names, in the
    /// table's order); a column of the table this buffer never saw is all nulls. Empties the
    /// buffer.
    pub fn take_batch(&mut self, schema: &SchemaRef) -> Result<RecordBatch, String> {
        let rows = self.rows;
        let mut own: HashMap<&str, ArrayRef> = HashMap::from([
            (TIME, Arc::new(self.time.finish()) as ArrayRef),
            (TIME_NS, Arc::new(self.time_ns.finish())),
            (DAY, Arc::new(self.day.finish())),
            (SENDER, Arc::new(self.sender.finish())),
            (BATCH_KEY, Arc::new(self.batch_key.finish())),
        ]);
        let mut theirs: HashMap<String, ArrayRef> = self
            .columns
            .iter_mut()
            .map(|column| (crate::names::encode(&column.name), column.values.finish()))
            .collect();
        self.columns.clear();
        self.by_name.clear();
        self.shape.clear();
        self.rows = 0;
        self.bytes = 0;
        let mut arrays = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let array = own
                .remove(field.name().as_str())
                .or_else(|| theirs.remove(field.name()))
                .unwrap_or_else(|| new_null_array(field.data_type(), rows));
            if array.data_type() != field.data_type()
                && !matches!(field.data_type(), ArrowType::Null)
            {
                return Err(format!(
                    "column {:?} holds {} but the table has {}",
                    field.name(),
                    array.data_type(),
                    field.data_type()
                ));
            }
            arrays.push(array);
        }
        if let Some(name) = theirs.keys().next() {
            return Err(format!("column {name:?} is not in the table's schema"));
        }
        RecordBatch::try_new(schema.clone(), arrays).map_err(|error| error.to_string())
    }
}
