//! The event model shared by every part of nublar: the InfluxDB data model of a measurement,
//! a tag set, a typed field set and a nanosecond timestamp.
//!
//! A parsed line borrows its strings from the request body wherever the text needed no
//! unescaping, so that the common case of parsing costs no copy of any name or value. An
//! [`Event`] is the same type with every string owned, for when the body is gone.

use std::borrow::Cow;
use std::fmt;

/// One point: what a line of line protocol or one JSON event says.
///
/// Tags and fields keep the order in which the sender wrote them; the parser has already
/// rejected duplicate tags and made duplicate fields collapse (see the parser's module
/// documentation), so each key appears once.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedLine<'a> {
    pub measurement: Cow<'a, str>,
    pub tags: Vec<Tag<'a>>,
    pub fields: Vec<Field<'a>>,
    /// Nanoseconds since the Unix epoch, the sender's precision already applied; `None` when
    /// the line had no timestamp and the receiver's clock must supply one.
    pub timestamp_ns: Option<i64>,
}

/// A point that owns all its strings, so it can outlive the body it was parsed from.
pub type Event = ParsedLine<'static>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tag<'a> {
    pub key: Cow<'a, str>,
    pub value: Cow<'a, str>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Field<'a> {
    pub key: Cow<'a, str>,
    pub value: FieldValue<'a>,
}

/// The five value types of line protocol; each maps to one lake column type.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum FieldValue<'a> {
    F64(f64),
    I64(i64),
    U64(u64),
    Bool(bool),
    Str(Cow<'a, str>),
}

/// The type of a field without its value: what a schema records for a column, and what two
/// values must share to be written to the same column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldType {
    F64,
    I64,
    U64,
    Bool,
    Str,
}

/// What a column of a table is: a tag (text), or a field of one type. The schema registry
/// records it for every column, and the lake keeps it in each column's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnKind {
    Tag,
    Field(FieldType),
}

impl ColumnKind {
    /// The name the lake stores it by: `tag`, or the field type's stored name.
    pub fn stored_name(self) -> &'static str {
        match self {
            ColumnKind::Tag => "tag",
            ColumnKind::Field(field_type) => field_type.stored_name(),
        }
    }

    /// The kind a [`ColumnKind::stored_name`] names.
    pub fn from_stored_name(name: &str) -> Option<ColumnKind> {
        match name {
            "tag" => Some(ColumnKind::Tag),
            name => FieldType::from_stored_name(name).map(ColumnKind::Field),
        }
    }
}

/// The unit of the timestamps in a body, chosen by the sender per request as InfluxDB's
/// `precision` parameter does; nublar stores nanoseconds only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    #[default]
    Ns,
    Us,
    Ms,
    S,
}

/// A timestamp that does not fit in `i64` nanoseconds once its precision is applied, for
/// example a seconds timestamp beyond the year 2262.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timestamp {value} in {} does not fit in 64-bit nanoseconds", precision.name())]
pub struct TimestampOverflow {
    pub value: i64,
    pub precision: Precision,
}

impl<'a> ParsedLine<'a> {
    /// Copies every borrowed string, so that the event no longer refers to the body.
    pub fn into_owned(self) -> Event {
        ParsedLine {
            measurement: Cow::Owned(self.measurement.into_owned()),
            tags: self
                .tags
                .into_iter()
                .map(|tag| Tag {
                    key: Cow::Owned(tag.key.into_owned()),
                    value: Cow::Owned(tag.value.into_owned()),
                })
                .collect(),
            fields: self
                .fields
                .into_iter()
                .map(|field| Field {
                    key: Cow::Owned(field.key.into_owned()),
                    value: field.value.into_owned(),
                })
                .collect(),
            timestamp_ns: self.timestamp_ns,
        }
    }

    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|tag| tag.key == key)
            .map(|tag| tag.value.as_ref())
    }

    pub fn field(&self, key: &str) -> Option<&FieldValue<'a>> {
        self.fields
            .iter()
            .find(|field| field.key == key)
            .map(|field| &field.value)
    }
}

impl<'a> FieldValue<'a> {
    pub fn field_type(&self) -> FieldType {
        match self {
            FieldValue::F64(_) => FieldType::F64,
            FieldValue::I64(_) => FieldType::I64,
            FieldValue::U64(_) => FieldType::U64,
            FieldValue::Bool(_) => FieldType::Bool,
            FieldValue::Str(_) => FieldType::Str,
        }
    }

    pub fn into_owned(self) -> FieldValue<'static> {
        match self {
            FieldValue::F64(value) => FieldValue::F64(value),
            FieldValue::I64(value) => FieldValue::I64(value),
            FieldValue::U64(value) => FieldValue::U64(value),
            FieldValue::Bool(value) => FieldValue::Bool(value),
            FieldValue::Str(value) => FieldValue::Str(Cow::Owned(value.into_owned())),
        }
    }
}

impl FieldType {
    /// The name InfluxDB's documentation uses for the type, for error messages a user of
    /// InfluxDB will recognise.
    pub fn name(self) -> &'static str {
        match self {
            FieldType::F64 => "float",
            FieldType::I64 => "integer",
            FieldType::U64 => "unsigned integer",
            FieldType::Bool => "boolean",
            FieldType::Str => "string",
        }
    }
}

impl FieldType {
    /// The type's name where nublar stores it (the schema registry, the lake's column
    /// metadata): stable, unlike [`FieldType::name`], which is worded for messages.
    pub fn stored_name(self) -> &'static str {
        match self {
            FieldType::F64 => "float",
            FieldType::I64 => "integer",
            FieldType::U64 => "unsigned",
            FieldType::Bool => "boolean",
            FieldType::Str => "string",
        }
    }

    /// The type a [`FieldType::stored_name`] names.
    pub fn from_stored_name(name: &str) -> Option<FieldType> {
        Some(match name {
            "float" => FieldType::F64,
            "integer" => FieldType::I64,
            "unsigned" => FieldType::U64,
            "boolean" => FieldType::Bool,
            "string" => FieldType::Str,
            _ => return None,
        })
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

impl Precision {
    pub const ALL: [Precision; 4] = [Precision::Ns, Precision::Us, Precision::Ms, Precision::S];

    pub fn nanoseconds_per_unit(self) -> i64 {
        match self {
            Precision::Ns => 1,
            Precision::Us => 1_000,
            Precision::Ms => 1_000_000,
            Precision::S => 1_000_000_000,
        }
    }

    /// Checked, because a sender's timestamp in seconds or milliseconds can be far outside the
    /// range that nanoseconds can express, and a wrapped timestamp would silently file the
    /// event under the wrong day.
    pub fn to_nanoseconds(self, value: i64) -> Result<i64, TimestampOverflow> {
        value
            .checked_mul(self.nanoseconds_per_unit())
            .ok_or(TimestampOverflow {
                value,
                precision: self,
            })
    }

    /// The short name InfluxDB's write APIs take in their `precision` parameter.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Ns => "ns",
            Precision::Us => "us",
            Precision::Ms => "ms",
            Precision::S => "s",
        }
    }

    /// Accepts the short names of all InfluxDB write APIs and the long names of the v3 API,
    /// so that clients written for any of them work unchanged.
    pub fn from_name(name: &str) -> Option<Precision> {
        match name {
            "ns" | "n" | "nanosecond" => Some(Precision::Ns),
            "us" | "u" | "µ" | "µs" | "microsecond" => Some(Precision::Us),
            "ms" | "millisecond" => Some(Precision::Ms),
            "s" | "second" => Some(Precision::S),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_converts_and_reports_overflow() {
        let cases: [(Precision, i64, Result<i64, ()>); 8] = [
            (
                Precision::Ns,
                1_700_000_000_000_000_000,
                Ok(1_700_000_000_000_000_000),
            ),
            (
                Precision::Us,
                1_700_000_000_000_000,
                Ok(1_700_000_000_000_000_000),
            ),
            (
                Precision::Ms,
                1_700_000_000_000,
                Ok(1_700_000_000_000_000_000),
            ),
            (Precision::S, 1_700_000_000, Ok(1_700_000_000_000_000_000)),
            (Precision::S, -1, Ok(-1_000_000_000)),
            (Precision::S, 9_223_372_037, Err(())),
            (Precision::Ms, i64::MIN / 1_000, Err(())),
            (Precision::Ns, i64::MIN, Ok(i64::MIN)),
        ];
        for (precision, value, expected) in cases {
            let actual = precision.to_nanoseconds(value).map_err(|overflow| {
                assert_eq!(overflow, TimestampOverflow { value, precision });
            });
            assert_eq!(actual, expected, "{value} in {precision:?}");
        }
    }

    #[test]
    fn precision_names_round_trip() {
        for precision in Precision::ALL {
            assert_eq!(Precision::from_name(precision.name()), Some(precision));
        }
        assert_eq!(Precision::from_name("h"), None);
        assert_eq!(Precision::from_name("NS"), None);
    }

    #[test]
    fn into_owned_keeps_every_part() {
        let line = ParsedLine {
            measurement: Cow::Borrowed("m"),
            tags: vec![Tag {
                key: Cow::Borrowed("k"),
                value: Cow::Borrowed("v"),
            }],
            fields: vec![Field {
                key: Cow::Borrowed("f"),
                value: FieldValue::Str("s".into()),
            }],
            timestamp_ns: Some(-5),
        };
        let owned: Event = line.clone().into_owned();
        assert_eq!(owned, line);
        assert!(matches!(owned.measurement, Cow::Owned(_)));
        assert_eq!(owned.tag("k"), Some("v"));
        assert_eq!(owned.field("f"), Some(&FieldValue::Str("s".into())));
        assert_eq!(owned.field("g"), None);
    }

    #[test]
    fn kinds_have_names_that_read_back() {
        for kind in [
            ColumnKind::Tag,
            ColumnKind::Field(FieldType::F64),
            ColumnKind::Field(FieldType::I64),
            ColumnKind::Field(FieldType::U64),
            ColumnKind::Field(FieldType::Bool),
            ColumnKind::Field(FieldType::Str),
        ] {
            assert_eq!(ColumnKind::from_stored_name(kind.stored_name()), Some(kind));
        }
    }
}
