//! Every bound the line protocol parser enforces, in one place, with the unit last in each name.
//!
//! The parser reads bodies sent by anyone on the network, so nothing it builds may grow with
//! the input beyond these bounds: a hostile line is rejected as soon as it crosses one.

/// InfluxDB 3 accepts names, tag keys, tag values and field keys of up to 64 KB; we accept the
/// same so that anything InfluxDB takes, nublar takes too.
pub const NAME_BYTES_MAX: usize = 64 * 1024;
/// InfluxDB 3 accepts string field values of up to 1 MB.
pub const STRING_VALUE_BYTES_MAX: usize = 1024 * 1024;
/// One line must be able to hold the largest string value next to a handful of other fields,
/// but a body of many such lines still fits the 10 MiB request bound of the gateway.
pub const LINE_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Tags become dictionary-encoded columns of a lake table: a few dozen is already a lot.
pub const TAGS_PER_LINE_MAX: usize = 128;
/// Fields become typed columns of a lake table.
pub const FIELDS_PER_LINE_MAX: usize = 256;
/// InfluxDB 3 Core's default column limit per table; one line must fit in one table.
pub const TABLE_COLUMNS_MAX: usize = 500;

const _: () = assert!(STRING_VALUE_BYTES_MAX < LINE_BYTES_MAX);
const _: () = assert!(NAME_BYTES_MAX < LINE_BYTES_MAX);
// Tags, fields and the `time` column of one line must fit in one table.
const _: () = assert!(TAGS_PER_LINE_MAX + FIELDS_PER_LINE_MAX < TABLE_COLUMNS_MAX);

/// The bounds one parse applies; a deployment may lower them (an edge gateway with little
/// memory) or raise them, and tests use small values to reach every limit cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseLimits {
    /// Bytes of one line, its line ending excluded.
    pub line_bytes_max: usize,
    pub tags_per_line_max: usize,
    pub fields_per_line_max: usize,
    /// Bytes of a measurement, tag key, tag value or field key after unescaping.
    pub name_bytes_max: usize,
    /// Bytes of a string field value after unescaping.
    pub string_value_bytes_max: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        Self {
            line_bytes_max: LINE_BYTES_MAX,
            tags_per_line_max: TAGS_PER_LINE_MAX,
            fields_per_line_max: FIELDS_PER_LINE_MAX,
            name_bytes_max: NAME_BYTES_MAX,
            string_value_bytes_max: STRING_VALUE_BYTES_MAX,
        }
    }
}
