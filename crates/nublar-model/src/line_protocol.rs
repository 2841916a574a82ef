//! InfluxDB line protocol: a parser that validates everything once, at the edge, and a writer
//! of canonical lines.
//!
//! The grammar is the one of the InfluxDB v2 and v3 line protocol references:
//!
//! ```text
//! <measurement>[,<tag_key>=<tag_value>...] <field_key>=<field_value>[,...] [<timestamp>]
//! ```
//!
//! Where the references leave a case open, this parser decides as follows, each time siding
//! with what InfluxDB 3 (the Rust `influxdb_line_protocol` crate and its write validator) or
//! the Go parser of InfluxDB 1 and 2 does, and otherwise with the stricter reading:
//!
//! - Lines end at every `\n`, optionally preceded by `\r`. A newline inside a quoted string is
//!   not supported (the references say so), so such a string is reported as unterminated.
//! - Spaces and tabs before a line and after it are ignored, as the Go parser trims them; a line
//!   whose first other byte is `#` is a comment. Blank and comment lines yield nothing, but they
//!   count in line numbers, which are the 1-based physical lines of the body.
//! - One or more spaces separate the series from the fields and the fields from the timestamp.
//!   Only the space separates: any other ASCII control byte (tab included) inside a name, key or
//!   tag value is rejected, as InfluxDB 3 rejects tabs there. String values may hold them.
//! - Escapes: a backslash followed by one of the characters the element requires to be escaped
//!   (comma and space in a measurement; comma, `=` and space in tag keys, tag values and field
//!   keys), or by a second backslash, stands for that character; any other backslash is
//!   literal. In string values `\"` and `\\` are escapes and any other backslash is literal.
//! - An unescaped `=` in a tag value is rejected (the references require it to be escaped).
//! - A measurement, key or tag value that ends with a backslash once unescaped is rejected, as
//!   InfluxDB 3 does for compatibility with the Go parser, which cannot read it back.
//! - Numbers: `-?digits` with a trailing `i` is a signed and `digits` with a trailing `u` an
//!   unsigned 64-bit integer, overflow being an error. Anything else numeric is a float:
//!   `-?digits[.digits][(e|E)[+|-]digits]`, where `1.` and `.5` are accepted (InfluxDB 3's
//!   Rust parser rejects both, but what the sender means is clear). A leading `+`,
//!   `NaN`, `inf`, hexadecimal and underscores are not numbers, and a float whose magnitude
//!   exceeds `f64::MAX` is rejected as out of range rather than stored as infinity.
//! - Booleans are exactly `t T true True TRUE f F false False FALSE`; any other unquoted word is
//!   an error that reminds the sender to quote strings.
//! - Timestamps are `-?digits`, multiplied by the precision (checked), and must lie within
//!   [`TIMESTAMP_NS_MIN`, `TIMESTAMP_NS_MAX`], the range the references give.
//! - Measurements, tag keys and field keys may not start with `_` (reserved for nublar's own
//!   tables and columns, as InfluxDB reserves it), and no tag or field may be called `time`,
//!   the timestamp column of every lake table.
//! - A tag key repeated in one line is rejected, and so is a key used as a tag and as a field,
//!   as InfluxDB 3 does. A field key repeated in one line is treated as InfluxDB treats it
//!   (influxdb_iox pull request 4398, kept for parity with the TSM engine of InfluxDB 1 and 2):
//!   if both values have the same type the last one wins (the field keeps its first position),
//!   and if the types differ the line is rejected.
//! - Every line, comment lines included, is bounded by `ParseLimits::line_bytes_max` (line
//!   ending excluded), so that no input is read without a bound. The name and string limits
//!   apply to the text once unescaped, which is what is stored.
//! - Invalid UTF-8 anywhere in a non-comment line rejects the line.
//! - The naming rule of the references ("alphanumeric, dashes and underscores") is advice that
//!   their own examples break (spaces, emoji); it is not enforced.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::ops::Range;

use crate::event::{Field, FieldValue, ParsedLine, Precision, Tag};
use crate::limits::ParseLimits;

/// The smallest timestamp the line protocol references allow.
pub const TIMESTAMP_NS_MIN: i64 = -9_223_372_036_854_775_806;
/// The largest timestamp the line protocol references allow.
pub const TIMESTAMP_NS_MAX: i64 = 9_223_372_036_854_775_806;

/// Parses a request body lazily, one line per step, so that a gateway can stop at the first
/// error (InfluxDB's `accept_partial=false`) or collect every error and keep the good lines.
pub fn parse_lines(body: &[u8], precision: Precision, limits: ParseLimits) -> Lines<'_> {
    Lines {
        body,
        position: 0,
        line_number: 0,
        precision,
        limits,
    }
}

/// Appends `line` as canonical line protocol, terminated by `\n`: escapes only where needed
/// (every backslash is doubled so that no escape is ambiguous), floats in the shortest form
/// that reads back to the same value, integers with `i`, unsigned with `u`, booleans as
/// `true`/`false`, the timestamp in nanoseconds, tags and fields in the order given.
///
/// Only a line the parser would accept is written so that it reads back the same: the writer
/// does not check, so a finite float, no `\n` in a string, no leading `#` in the measurement and
/// the naming rules of [`parse_lines`] are the caller's to keep (every parsed line keeps them).
pub fn write_line(line: &ParsedLine<'_>, out: &mut Vec<u8>) {
    write_escaped(out, &line.measurement, NameKind::Measurement);
    for tag in &line.tags {
        out.push(b',');
        write_escaped(out, &tag.key, NameKind::TagKey);
        out.push(b'=');
        write_escaped(out, &tag.value, NameKind::TagValue);
    }
    out.push(b' ');
    for (index, field) in line.fields.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_escaped(out, &field.key, NameKind::FieldKey);
        out.push(b'=');
        write_field_value(out, &field.value);
    }
    if let Some(timestamp_ns) = line.timestamp_ns {
        out.push(b' ');
        write_display(out, timestamp_ns);
    }
    out.push(b'\n');
}

/// The lines of one body; each item is the 1-based line number and the line or the reason it
/// was rejected. Blank and comment lines are skipped.
#[derive(Debug, Clone)]
pub struct Lines<'a> {
    body: &'a [u8],
    position: usize,
    line_number: usize,
    precision: Precision,
    limits: ParseLimits,
}

/// Why one line was rejected: a stable kind for metrics and a message for the sender that
/// names the byte column (1-based, counted from the start of the line) where parsing stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at byte column {column})")]
pub struct ParseError {
    kind: ParseErrorKind,
    column: usize,
    message: String,
    line: Range<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParseErrorKind {
    InvalidUtf8,
    LineTooLong,
    ControlCharacter,
    MissingMeasurement,
    EmptyTagKey,
    TagMissingEquals,
    EmptyTagValue,
    UnescapedEquals,
    MissingFields,
    EmptyFieldKey,
    FieldMissingEquals,
    MissingFieldValue,
    InvalidFieldValue,
    InvalidNumber,
    IntegerOutOfRange,
    UnsignedOutOfRange,
    FloatOutOfRange,
    UnterminatedString,
    TrailingContent,
    TrailingBackslash,
    InvalidTimestamp,
    TimestampOutOfRange,
    ReservedName,
    ReservedTimeKey,
    DuplicateTag,
    FieldTypeConflict,
    TagFieldKeyClash,
    TooManyTags,
    TooManyFields,
    NameTooLong,
    StringTooLong,
}

impl<'a> Iterator for Lines<'a> {
    type Item = (usize, Result<ParsedLine<'a>, ParseError>);

    fn next(&mut self) -> Option<Self::Item> {
        while self.position < self.body.len() {
            let start = self.position;
            let line_end = match memchr::memchr(b'\n', &self.body[start..]) {
                Some(offset) => start + offset,
                None => self.body.len(),
            };
            self.position = line_end + 1;
            self.line_number += 1;
            let mut end = line_end;
            if end > start && self.body[end - 1] == b'\r' {
                end -= 1;
            }
            match parse_raw_line(&self.body[start..end], self.precision, &self.limits) {
                Ok(None) => continue,
                Ok(Some(line)) => return Some((self.line_number, Ok(line))),
                Err(failure) => {
                    let error = ParseError {
                        kind: failure.kind,
                        column: failure.position + 1,
                        message: failure.message,
                        line: start..end,
                    };
                    return Some((self.line_number, Err(error)));
                }
            }
        }
        None
    }
}

impl ParseError {
    pub fn kind(&self) -> ParseErrorKind {
        self.kind
    }

    /// 1-based byte offset within the line.
    pub fn column(&self) -> usize {
        self.column
    }

    /// The reason without the column.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Where the rejected line lies in the body, its line ending excluded.
    pub fn line_range(&self) -> Range<usize> {
        self.line.clone()
    }

    /// The rejected line as sent, for error responses and dead letters; `body` must be the
    /// body this error came from. Invalid UTF-8 is replaced, since responses are JSON text.
    pub fn original_line<'b>(&self, body: &'b [u8]) -> Cow<'b, str> {
        String::from_utf8_lossy(body.get(self.line.clone()).unwrap_or_default())
    }
}

impl ParseErrorKind {
    pub const ALL: [ParseErrorKind; 31] = [
        ParseErrorKind::InvalidUtf8,
        ParseErrorKind::LineTooLong,
        ParseErrorKind::ControlCharacter,
        ParseErrorKind::MissingMeasurement,
        ParseErrorKind::EmptyTagKey,
        ParseErrorKind::TagMissingEquals,
        ParseErrorKind::EmptyTagValue,
        ParseErrorKind::UnescapedEquals,
        ParseErrorKind::MissingFields,
        ParseErrorKind::EmptyFieldKey,
        ParseErrorKind::FieldMissingEquals,
        ParseErrorKind::MissingFieldValue,
        ParseErrorKind::InvalidFieldValue,
        ParseErrorKind::InvalidNumber,
        ParseErrorKind::IntegerOutOfRange,
        ParseErrorKind::UnsignedOutOfRange,
        ParseErrorKind::FloatOutOfRange,
        ParseErrorKind::UnterminatedString,
        ParseErrorKind::TrailingContent,
        ParseErrorKind::TrailingBackslash,
        ParseErrorKind::InvalidTimestamp,
        ParseErrorKind::TimestampOutOfRange,
        ParseErrorKind::ReservedName,
        ParseErrorKind::ReservedTimeKey,
        ParseErrorKind::DuplicateTag,
        ParseErrorKind::FieldTypeConflict,
        ParseErrorKind::TagFieldKeyClash,
        ParseErrorKind::TooManyTags,
        ParseErrorKind::TooManyFields,
        ParseErrorKind::NameTooLong,
        ParseErrorKind::StringTooLong,
    ];

    /// A stable snake_case name, used as a metric label and in dead letters: renaming one is
    /// a breaking change for dashboards.
    pub fn name(self) -> &'static str {
        match self {
            ParseErrorKind::InvalidUtf8 => "invalid_utf8",
            ParseErrorKind::LineTooLong => "line_too_long",
            ParseErrorKind::ControlCharacter => "control_character",
            ParseErrorKind::MissingMeasurement => "missing_measurement",
            ParseErrorKind::EmptyTagKey => "empty_tag_key",
            ParseErrorKind::TagMissingEquals => "tag_missing_equals",
            ParseErrorKind::EmptyTagValue => "empty_tag_value",
            ParseErrorKind::UnescapedEquals => "unescaped_equals",
            ParseErrorKind::MissingFields => "missing_fields",
            ParseErrorKind::EmptyFieldKey => "empty_field_key",
            ParseErrorKind::FieldMissingEquals => "field_missing_equals",
            ParseErrorKind::MissingFieldValue => "missing_field_value",
            ParseErrorKind::InvalidFieldValue => "invalid_field_value",
            ParseErrorKind::InvalidNumber => "invalid_number",
            ParseErrorKind::IntegerOutOfRange => "integer_out_of_range",
            ParseErrorKind::UnsignedOutOfRange => "unsigned_out_of_range",
            ParseErrorKind::FloatOutOfRange => "float_out_of_range",
            ParseErrorKind::UnterminatedString => "unterminated_string",
            ParseErrorKind::TrailingContent => "trailing_content",
            ParseErrorKind::TrailingBackslash => "trailing_backslash",
            ParseErrorKind::InvalidTimestamp => "invalid_timestamp",
            ParseErrorKind::TimestampOutOfRange => "timestamp_out_of_range",
            ParseErrorKind::ReservedName => "reserved_name",
            ParseErrorKind::ReservedTimeKey => "reserved_time_key",
            ParseErrorKind::DuplicateTag => "duplicate_tag",
            ParseErrorKind::FieldTypeConflict => "field_type_conflict",
            ParseErrorKind::TagFieldKeyClash => "tag_field_key_clash",
            ParseErrorKind::TooManyTags => "too_many_tags",
            ParseErrorKind::TooManyFields => "too_many_fields",
            ParseErrorKind::NameTooLong => "name_too_long",
            ParseErrorKind::StringTooLong => "string_too_long",
        }
    }
}

impl fmt::Display for ParseErrorKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// A rejection before it knows where its line lies in the body.
struct Failure {
    kind: ParseErrorKind,
    /// 0-based byte offset within the line.
    position: usize,
    message: String,
}

type Parsed<T> = Result<T, Failure>;

fn fail<T>(kind: ParseErrorKind, position: usize, message: String) -> Parsed<T> {
    Err(Failure {
        kind,
        position,
        message,
    })
}

/// The four kinds of unquoted text, which differ in what ends them and what may be escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NameKind {
    Measurement,
    TagKey,
    TagValue,
    FieldKey,
}

impl NameKind {
    fn label(self) -> &'static str {
        match self {
            NameKind::Measurement => "measurement",
            NameKind::TagKey => "tag key",
            NameKind::TagValue => "tag value",
            NameKind::FieldKey => "field key",
        }
    }

    /// The byte classes that stop the fast scan; `=` is ordinary text in a measurement.
    fn stop_classes(self) -> u8 {
        match self {
            NameKind::Measurement => CONTROL | BACKSLASH | COMMA | SPACE,
            NameKind::TagKey | NameKind::TagValue | NameKind::FieldKey => {
                CONTROL | BACKSLASH | COMMA | SPACE | EQUALS
            }
        }
    }

    fn is_escapable(self, byte: u8) -> bool {
        match self {
            NameKind::Measurement => matches!(byte, b',' | b' ' | b'\\'),
            NameKind::TagKey | NameKind::TagValue | NameKind::FieldKey => {
                matches!(byte, b',' | b'=' | b' ' | b'\\')
            }
        }
    }
}

const CONTROL: u8 = 1;
const BACKSLASH: u8 = 2;
const COMMA: u8 = 4;
const SPACE: u8 = 8;
const EQUALS: u8 = 16;

/// One table lookup per byte tells the scanner whether the byte needs a closer look, which
/// keeps the loop over ordinary text (nearly all of a line) to a load, a test and a branch.
static BYTE_CLASSES: [u8; 256] = byte_classes();

const fn byte_classes() -> [u8; 256] {
    let mut classes = [0u8; 256];
    let mut byte = 0;
    while byte < 0x20 {
        classes[byte] = CONTROL;
        byte += 1;
    }
    classes[0x7f] = CONTROL;
    classes[b'\\' as usize] = BACKSLASH;
    classes[b',' as usize] = COMMA;
    classes[b' ' as usize] = SPACE;
    classes[b'=' as usize] = EQUALS;
    classes
}

/// Beyond this many keys in one line, repeated keys are found with a hash map instead of a
/// scan of the keys seen so far, so that a hostile line of many keys costs linear time.
const KEYS_SCANNED_MAX: usize = 32;

/// Tags and fields reserved at the first push: enough for the park's sensors.
const VEC_CAPACITY_INITIAL: usize = 8;

/// Longest piece of a sender's text quoted back in an error message.
const EXCERPT_CHARS_MAX: usize = 64;

fn parse_raw_line<'a>(
    bytes: &'a [u8],
    precision: Precision,
    limits: &ParseLimits,
) -> Parsed<Option<ParsedLine<'a>>> {
    if bytes.len() > limits.line_bytes_max {
        return fail(
            ParseErrorKind::LineTooLong,
            limits.line_bytes_max,
            format!(
                "line is {} bytes long, more than the limit of {} bytes",
                bytes.len(),
                limits.line_bytes_max
            ),
        );
    }
    let mut start = 0;
    while start < bytes.len() && matches!(bytes[start], b' ' | b'\t') {
        start += 1;
    }
    if start == bytes.len() || bytes[start] == b'#' {
        return Ok(None);
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(error) => {
            return fail(
                ParseErrorKind::InvalidUtf8,
                error.valid_up_to(),
                "line is not valid UTF-8".to_string(),
            );
        }
    };
    let mut end = bytes.len();
    while end > start && matches!(bytes[end - 1], b' ' | b'\t') {
        end -= 1;
    }
    let parser = LineParser {
        text,
        bytes,
        end,
        limits,
    };
    parser.parse(start, precision).map(Some)
}

struct LineParser<'a, 'l> {
    text: &'a str,
    bytes: &'a [u8],
    /// End of the line's content: trailing spaces and tabs are not part of it.
    end: usize,
    limits: &'l ParseLimits,
}

impl<'a> LineParser<'a, '_> {
    fn parse(&self, start: usize, precision: Precision) -> Parsed<ParsedLine<'a>> {
        let (measurement, mut position) = self.name(start, NameKind::Measurement)?;
        let mut keys = Keys { index: None };
        let mut tags: Vec<Tag<'a>> = Vec::new();
        let mut fields: Vec<Field<'a>> = Vec::new();

        if self.byte_at(position) == Some(b',') {
            loop {
                let key_start = position + 1;
                let (key, equals) = self.name(key_start, NameKind::TagKey)?;
                if self.byte_at(equals) != Some(b'=') {
                    return fail(
                        ParseErrorKind::TagMissingEquals,
                        equals,
                        format!("tag key `{}` is not followed by `=`", excerpt(&key)),
                    );
                }
                let (value, after) = self.name(equals + 1, NameKind::TagValue)?;
                if tags.len() == self.limits.tags_per_line_max {
                    return fail(
                        ParseErrorKind::TooManyTags,
                        key_start,
                        format!("line has more than {} tags", self.limits.tags_per_line_max),
                    );
                }
                if keys.find(&key, &tags, &fields).is_some() {
                    return fail(
                        ParseErrorKind::DuplicateTag,
                        key_start,
                        format!("tag key `{}` appears more than once", excerpt(&key)),
                    );
                }
                keys.insert(&key, Seen::Tag, &tags, &fields);
                if tags.is_empty() {
                    // One allocation for a typical line instead of growing 0, 4, 8.
                    tags.reserve(VEC_CAPACITY_INITIAL);
                }
                tags.push(Tag { key, value });
                position = after;
                match self.byte_at(position) {
                    Some(b',') => continue,
                    Some(_) => break,
                    None => {
                        return fail(
                            ParseErrorKind::MissingFields,
                            position,
                            "line ends after the tag set; a line needs at least one field"
                                .to_string(),
                        );
                    }
                }
            }
        }

        if position >= self.end {
            return fail(
                ParseErrorKind::MissingFields,
                position,
                "line ends after the measurement; a line needs at least one field".to_string(),
            );
        }
        // The name scan stops only at a comma, a space or the end; the comma was handled
        // above, so this is the space that ends the series.
        position = self.skip_spaces(position);

        let mut timestamp_ns = None;
        loop {
            let key_start = position;
            let (key, equals) = self.name(key_start, NameKind::FieldKey)?;
            if self.byte_at(equals) != Some(b'=') {
                return fail(
                    ParseErrorKind::FieldMissingEquals,
                    equals,
                    format!("field key `{}` is not followed by `=`", excerpt(&key)),
                );
            }
            let (value, after) = self.field_value(equals + 1, &key)?;
            match keys.find(&key, &tags, &fields) {
                Some(Seen::Tag) => {
                    return fail(
                        ParseErrorKind::TagFieldKeyClash,
                        key_start,
                        format!(
                            "`{}` is used as a tag key and as a field key",
                            excerpt(&key)
                        ),
                    );
                }
                Some(Seen::Field(index)) => {
                    let earlier = fields[index].value.field_type();
                    let later = value.field_type();
                    if earlier != later {
                        return fail(
                            ParseErrorKind::FieldTypeConflict,
                            key_start,
                            format!(
                                "field `{}` appears twice with different types ({earlier} and \
                                 {later})",
                                excerpt(&key)
                            ),
                        );
                    }
                    fields[index].value = value;
                }
                None => {
                    if fields.len() == self.limits.fields_per_line_max {
                        return fail(
                            ParseErrorKind::TooManyFields,
                            key_start,
                            format!(
                                "line has more than {} fields",
                                self.limits.fields_per_line_max
                            ),
                        );
                    }
                    keys.insert(&key, Seen::Field(fields.len()), &tags, &fields);
                    if fields.is_empty() {
                        fields.reserve(VEC_CAPACITY_INITIAL);
                    }
                    fields.push(Field { key, value });
                }
            }
            match self.byte_at(after) {
                None => break,
                Some(b',') => position = after + 1,
                Some(b' ') => {
                    timestamp_ns = Some(self.timestamp(self.skip_spaces(after), precision)?);
                    break;
                }
                Some(other) => {
                    return fail(
                        ParseErrorKind::TrailingContent,
                        after,
                        format!(
                            "unexpected `{}` after a field value; expected `,`, a space or the \
                             end of the line",
                            char::from(other).escape_default()
                        ),
                    );
                }
            }
        }

        Ok(ParsedLine {
            measurement,
            tags,
            fields,
            timestamp_ns,
        })
    }

    fn byte_at(&self, position: usize) -> Option<u8> {
        if position < self.end {
            Some(self.bytes[position])
        } else {
            None
        }
    }

    fn skip_spaces(&self, mut position: usize) -> usize {
        while self.byte_at(position) == Some(b' ') {
            position += 1;
        }
        position
    }

    /// Scans a measurement, key or tag value from `start` to the first unescaped byte that
    /// ends it, which it returns without consuming; the caller checks that it is the one
    /// expected there. Borrows from the line unless an escape had to be removed.
    fn name(&self, start: usize, kind: NameKind) -> Parsed<(Cow<'a, str>, usize)> {
        let stop_classes = kind.stop_classes();
        let mut position = start;
        let mut has_escape = false;
        loop {
            while position < self.end
                && BYTE_CLASSES[usize::from(self.bytes[position])] & stop_classes == 0
            {
                position += 1;
            }
            let Some(byte) = self.byte_at(position) else {
                break;
            };
            if byte == b'\\' {
                match self.byte_at(position + 1) {
                    Some(next) if kind.is_escapable(next) => {
                        has_escape = true;
                        position += 2;
                    }
                    _ => position += 1,
                }
                continue;
            }
            if BYTE_CLASSES[usize::from(byte)] & CONTROL != 0 {
                return fail(
                    ParseErrorKind::ControlCharacter,
                    position,
                    format!(
                        "{} contains the control character `{}`; only a space separates the \
                         parts of a line",
                        kind.label(),
                        char::from(byte).escape_default()
                    ),
                );
            }
            if kind == NameKind::TagValue && byte == b'=' {
                return fail(
                    ParseErrorKind::UnescapedEquals,
                    position,
                    "unescaped `=` in a tag value; write it as `\\=`".to_string(),
                );
            }
            break;
        }
        let raw = &self.text[start..position];
        let name = if has_escape {
            Cow::Owned(unescape_name(raw, kind))
        } else {
            Cow::Borrowed(raw)
        };
        self.check_name(&name, start, kind)?;
        Ok((name, position))
    }

    fn check_name(&self, name: &str, start: usize, kind: NameKind) -> Parsed<()> {
        if name.is_empty() {
            let (error_kind, message) = match kind {
                NameKind::Measurement => (
                    ParseErrorKind::MissingMeasurement,
                    "line has no measurement",
                ),
                NameKind::TagKey => (ParseErrorKind::EmptyTagKey, "tag key is empty"),
                NameKind::TagValue => (
                    ParseErrorKind::EmptyTagValue,
                    "tag value is empty; leave the tag out instead",
                ),
                NameKind::FieldKey => (ParseErrorKind::EmptyFieldKey, "field key is empty"),
            };
            return fail(error_kind, start, message.to_string());
        }
        if name.len() > self.limits.name_bytes_max {
            return fail(
                ParseErrorKind::NameTooLong,
                start,
                format!(
                    "{} is {} bytes long, more than the limit of {} bytes",
                    kind.label(),
                    name.len(),
                    self.limits.name_bytes_max
                ),
            );
        }
        if name.ends_with('\\') {
            return fail(
                ParseErrorKind::TrailingBackslash,
                start,
                format!("{} `{}` ends with a backslash", kind.label(), excerpt(name)),
            );
        }
        if kind != NameKind::TagValue && name.starts_with('_') {
            return fail(
                ParseErrorKind::ReservedName,
                start,
                format!(
                    "{} `{}` starts with `_`, which is reserved for system use",
                    kind.label(),
                    excerpt(name)
                ),
            );
        }
        if matches!(kind, NameKind::TagKey | NameKind::FieldKey) && name == "time" {
            return fail(
                ParseErrorKind::ReservedTimeKey,
                start,
                format!("{} `time` is reserved for the timestamp", kind.label()),
            );
        }
        Ok(())
    }

    /// Returns the value and the position just after it.
    fn field_value(&self, start: usize, key: &str) -> Parsed<(FieldValue<'a>, usize)> {
        match self.byte_at(start) {
            Some(b'"') => self.string_value(start),
            Some(b't' | b'T' | b'f' | b'F') => {
                let end = self.token_end(start);
                let value = match &self.bytes[start..end] {
                    b"t" | b"T" | b"true" | b"True" | b"TRUE" => true,
                    b"f" | b"F" | b"false" | b"False" | b"FALSE" => false,
                    _ => return self.unquoted_word(start, end, key),
                };
                Ok((FieldValue::Bool(value), end))
            }
            Some(b'-' | b'.' | b'0'..=b'9') => self.number_value(start),
            None | Some(b',' | b' ') => fail(
                ParseErrorKind::MissingFieldValue,
                start,
                format!("field `{}` has no value", excerpt(key)),
            ),
            Some(_) => {
                let end = self.token_end(start);
                self.unquoted_word(start, end, key)
            }
        }
    }

    fn unquoted_word<T>(&self, start: usize, end: usize, key: &str) -> Parsed<T> {
        fail(
            ParseErrorKind::InvalidFieldValue,
            start,
            format!(
                "value `{}` of field `{}` is not a number, a boolean (t, T, true, True, TRUE, \
                 f, F, false, False, FALSE) or a double-quoted string",
                excerpt(&self.text[start..end]),
                excerpt(key)
            ),
        )
    }

    /// End of an unquoted value: the next comma or space, or the end of the line.
    fn token_end(&self, start: usize) -> usize {
        let mut end = start;
        while end < self.end && BYTE_CLASSES[usize::from(self.bytes[end])] & (COMMA | SPACE) == 0 {
            end += 1;
        }
        end
    }

    fn string_value(&self, quote: usize) -> Parsed<(FieldValue<'a>, usize)> {
        let content_start = quote + 1;
        let mut position = content_start;
        let mut has_escape = false;
        let closing = loop {
            let Some(offset) =
                memchr::memchr2(b'"', b'\\', &self.bytes[position.min(self.end)..self.end])
            else {
                return fail(
                    ParseErrorKind::UnterminatedString,
                    quote,
                    "string value has no closing double quote".to_string(),
                );
            };
            let found = position + offset;
            if self.bytes[found] == b'"' {
                break found;
            }
            match self.byte_at(found + 1) {
                Some(b'"' | b'\\') => {
                    has_escape = true;
                    position = found + 2;
                }
                _ => position = found + 1,
            }
        };
        let raw = &self.text[content_start..closing];
        let value = if has_escape {
            Cow::Owned(unescape_string(raw))
        } else {
            Cow::Borrowed(raw)
        };
        if value.len() > self.limits.string_value_bytes_max {
            return fail(
                ParseErrorKind::StringTooLong,
                quote,
                format!(
                    "string value is {} bytes long, more than the limit of {} bytes",
                    value.len(),
                    self.limits.string_value_bytes_max
                ),
            );
        }
        let after = closing + 1;
        match self.byte_at(after) {
            None | Some(b',' | b' ') => Ok((FieldValue::Str(value), after)),
            Some(other) => fail(
                ParseErrorKind::TrailingContent,
                after,
                format!(
                    "unexpected `{}` after the closing quote of a string value",
                    char::from(other).escape_default()
                ),
            ),
        }
    }

    fn number_value(&self, start: usize) -> Parsed<(FieldValue<'a>, usize)> {
        let end = self.token_end(start);
        let token = &self.bytes[start..end];
        let value = match token.split_last() {
            Some((b'i', digits)) => match parse_signed(digits) {
                Ok(value) => FieldValue::I64(value),
                Err(NumberError::Invalid) => return self.invalid_number(start, end, "integer"),
                Err(NumberError::OutOfRange) => {
                    return fail(
                        ParseErrorKind::IntegerOutOfRange,
                        start,
                        format!(
                            "integer `{}` is outside the 64-bit signed range",
                            excerpt(&self.text[start..end])
                        ),
                    );
                }
            },
            Some((b'u', digits)) => match parse_magnitude(digits) {
                Ok(value) => FieldValue::U64(value),
                Err(NumberError::Invalid) => {
                    return self.invalid_number(start, end, "unsigned integer");
                }
                Err(NumberError::OutOfRange) => {
                    return fail(
                        ParseErrorKind::UnsignedOutOfRange,
                        start,
                        format!(
                            "unsigned integer `{}` is outside the 64-bit unsigned range",
                            excerpt(&self.text[start..end])
                        ),
                    );
                }
            },
            _ => {
                let value = match scan_float(token) {
                    FloatScan::Invalid => return self.invalid_number(start, end, "float"),
                    FloatScan::Exact(value) => value,
                    FloatScan::Valid => match self.text[start..end].parse::<f64>() {
                        Ok(value) => value,
                        Err(_) => return self.invalid_number(start, end, "float"),
                    },
                };
                if !value.is_finite() {
                    return fail(
                        ParseErrorKind::FloatOutOfRange,
                        start,
                        format!(
                            "float `{}` is outside the range of a 64-bit float",
                            excerpt(&self.text[start..end])
                        ),
                    );
                }
                FieldValue::F64(value)
            }
        };
        Ok((value, end))
    }

    fn invalid_number<T>(&self, start: usize, end: usize, expected: &str) -> Parsed<T> {
        fail(
            ParseErrorKind::InvalidNumber,
            start,
            format!(
                "`{}` is not a valid {expected}",
                excerpt(&self.text[start..end])
            ),
        )
    }

    /// The timestamp runs to the end of the line: trailing spaces are already trimmed.
    fn timestamp(&self, start: usize, precision: Precision) -> Parsed<i64> {
        let end = self.end;
        let text = &self.text[start..end];
        let value = match parse_signed(&self.bytes[start..end]) {
            Ok(value) => value,
            Err(NumberError::Invalid) => {
                if let Some(space) = memchr::memchr(b' ', &self.bytes[start..end]) {
                    return fail(
                        ParseErrorKind::TrailingContent,
                        start + space,
                        "unexpected content after the timestamp".to_string(),
                    );
                }
                return fail(
                    ParseErrorKind::InvalidTimestamp,
                    start,
                    format!("timestamp `{}` is not an integer", excerpt(text)),
                );
            }
            Err(NumberError::OutOfRange) => {
                return fail(
                    ParseErrorKind::TimestampOutOfRange,
                    start,
                    format!("timestamp `{}` does not fit in 64 bits", excerpt(text)),
                );
            }
        };
        match precision.to_nanoseconds(value) {
            Ok(nanoseconds) if (TIMESTAMP_NS_MIN..=TIMESTAMP_NS_MAX).contains(&nanoseconds) => {
                Ok(nanoseconds)
            }
            _ => fail(
                ParseErrorKind::TimestampOutOfRange,
                start,
                format!(
                    "timestamp {value} in precision {} is outside the range \
                     {TIMESTAMP_NS_MIN}..={TIMESTAMP_NS_MAX} nanoseconds",
                    precision.name()
                ),
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Tag,
    Field(usize),
}

/// The keys of one line, to find repeats: a plain scan of the vectors while the line is
/// small (no allocation), a map once it has more than [`KEYS_SCANNED_MAX`] keys.
struct Keys<'a> {
    index: Option<HashMap<Cow<'a, str>, Seen>>,
}

impl<'a> Keys<'a> {
    #[inline]
    fn find(&self, key: &str, tags: &[Tag<'a>], fields: &[Field<'a>]) -> Option<Seen> {
        if let Some(index) = &self.index {
            return index.get(key).copied();
        }
        if tags.iter().any(|tag| tag.key == key) {
            return Some(Seen::Tag);
        }
        fields
            .iter()
            .position(|field| field.key == key)
            .map(Seen::Field)
    }

    /// Called before the key is pushed, so the vectors hold only the earlier keys.
    #[inline]
    #[expect(
        clippy::ptr_arg,
        reason = "the map keeps a clone that stays borrowed if the key is"
    )]
    fn insert(&mut self, key: &Cow<'a, str>, seen: Seen, tags: &[Tag<'a>], fields: &[Field<'a>]) {
        if self.index.is_none() && tags.len() + fields.len() >= KEYS_SCANNED_MAX {
            let mut index = HashMap::with_capacity(2 * KEYS_SCANNED_MAX);
            for tag in tags {
                index.insert(tag.key.clone(), Seen::Tag);
            }
            for (position, field) in fields.iter().enumerate() {
                index.insert(field.key.clone(), Seen::Field(position));
            }
            self.index = Some(index);
        }
        if let Some(index) = &mut self.index {
            index.insert(key.clone(), seen);
        }
    }
}

enum NumberError {
    Invalid,
    OutOfRange,
}

/// Digits only, at least one; overflow is reported only for text that is otherwise valid.
fn parse_magnitude(digits: &[u8]) -> Result<u64, NumberError> {
    if digits.is_empty() {
        return Err(NumberError::Invalid);
    }
    // Nineteen digits always fit in a `u64`, so only the digits after them need checked
    // arithmetic; nanosecond timestamps have exactly nineteen.
    let (unchecked, checked) = digits.split_at(digits.len().min(19));
    let mut value: u64 = 0;
    for &byte in unchecked {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            return Err(NumberError::Invalid);
        }
        value = value * 10 + u64::from(digit);
    }
    let mut overflowed = false;
    for &byte in checked {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            return Err(NumberError::Invalid);
        }
        match value
            .checked_mul(10)
            .and_then(|value| value.checked_add(u64::from(digit)))
        {
            Some(next) => value = next,
            None => overflowed = true,
        }
    }
    if overflowed {
        Err(NumberError::OutOfRange)
    } else {
        Ok(value)
    }
}

fn parse_signed(text: &[u8]) -> Result<i64, NumberError> {
    match text.split_first() {
        Some((b'-', digits)) => {
            let magnitude = parse_magnitude(digits)?;
            0i64.checked_sub_unsigned(magnitude)
                .ok_or(NumberError::OutOfRange)
        }
        _ => i64::try_from(parse_magnitude(text)?).map_err(|_| NumberError::OutOfRange),
    }
}

enum FloatScan {
    Invalid,
    /// Valid, and already converted exactly.
    Exact(f64),
    /// Valid, for the standard library to convert.
    Valid,
}

/// Powers of ten that `f64` represents exactly.
const EXACT_POWERS_OF_TEN: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Checks `-?digits[.digits][(e|E)[+|-]digits]` with at least one mantissa digit; the standard
/// library's parser alone would also take `+1`, `inf` and `NaN`, which line protocol does not.
///
/// Sensors send short decimals such as `23.5`, which are converted here: with at most 15
/// digits the mantissa is an exact `f64`, so is a power of ten up to 1e22, and one IEEE
/// division rounds correctly, giving the same value as the standard library (Clinger's fast
/// path) at a fraction of the cost. Everything else goes to the standard library.
fn scan_float(token: &[u8]) -> FloatScan {
    let negative = token.first() == Some(&b'-');
    let mut position = usize::from(negative);
    let mut mantissa: u64 = 0;
    let mut digits = 0usize;
    while let Some(&byte) = token.get(position) {
        if !byte.is_ascii_digit() {
            break;
        }
        mantissa = mantissa
            .wrapping_mul(10)
            .wrapping_add(u64::from(byte - b'0'));
        digits += 1;
        position += 1;
    }
    let mut fraction_digits = 0usize;
    if token.get(position) == Some(&b'.') {
        position += 1;
        while let Some(&byte) = token.get(position) {
            if !byte.is_ascii_digit() {
                break;
            }
            mantissa = mantissa
                .wrapping_mul(10)
                .wrapping_add(u64::from(byte - b'0'));
            fraction_digits += 1;
            position += 1;
        }
    }
    digits += fraction_digits;
    if digits == 0 {
        return FloatScan::Invalid;
    }
    if position == token.len() {
        // The wrapping arithmetic above is exact for up to 15 digits, the only case used.
        if digits <= 15 {
            let magnitude = mantissa as f64 / EXACT_POWERS_OF_TEN[fraction_digits];
            return FloatScan::Exact(if negative { -magnitude } else { magnitude });
        }
        return FloatScan::Valid;
    }
    if !matches!(token[position], b'e' | b'E') {
        return FloatScan::Invalid;
    }
    position += 1;
    if matches!(token.get(position), Some(b'+' | b'-')) {
        position += 1;
    }
    let exponent_start = position;
    while token.get(position).is_some_and(u8::is_ascii_digit) {
        position += 1;
    }
    if position == exponent_start || position != token.len() {
        return FloatScan::Invalid;
    }
    FloatScan::Valid
}

/// Must pair backslashes exactly as [`LineParser::name`] does: from the left, a backslash
/// and an escapable byte form one escape.
fn unescape_name(raw: &str, kind: NameKind) -> String {
    unescape(raw, |byte| kind.is_escapable(byte))
}

/// In a quoted string only `\"` and `\\` are escapes.
fn unescape_string(raw: &str) -> String {
    unescape(raw, |byte| matches!(byte, b'"' | b'\\'))
}

/// Removes the backslash of every escape, pairing from the left.
fn unescape(raw: &str, is_escapable: impl Fn(u8) -> bool) -> String {
    let bytes = raw.as_bytes();
    let mut unescaped = String::with_capacity(raw.len());
    let mut copied = 0;
    let mut position = 0;
    while position < bytes.len() {
        if bytes[position] == b'\\'
            && bytes
                .get(position + 1)
                .is_some_and(|&next| is_escapable(next))
        {
            unescaped.push_str(&raw[copied..position]);
            // The escaped byte starts the next copied run.
            copied = position + 1;
            position += 2;
        } else {
            position += 1;
        }
    }
    unescaped.push_str(&raw[copied..]);
    unescaped
}

fn excerpt(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(EXCERPT_CHARS_MAX) {
        Some((cut, _)) => Cow::Owned(format!("{}…", &text[..cut])),
        None => Cow::Borrowed(text),
    }
}

fn write_escaped(out: &mut Vec<u8>, text: &str, kind: NameKind) {
    for &byte in text.as_bytes() {
        if kind.is_escapable(byte) {
            out.push(b'\\');
        }
        out.push(byte);
    }
}

fn write_field_value(out: &mut Vec<u8>, value: &FieldValue<'_>) {
    match value {
        // Debug, unlike Display, switches to an exponent for very large and very small
        // magnitudes, and both print the shortest digits that read back to the same value.
        FieldValue::F64(value) => write_debug(out, value),
        FieldValue::I64(value) => {
            write_display(out, value);
            out.push(b'i');
        }
        FieldValue::U64(value) => {
            write_display(out, value);
            out.push(b'u');
        }
        FieldValue::Bool(value) => {
            out.extend_from_slice(if *value { b"true" } else { b"false" });
        }
        FieldValue::Str(text) => {
            out.push(b'"');
            for &byte in text.as_bytes() {
                if byte == b'"' || byte == b'\\' {
                    out.push(b'\\');
                }
                out.push(byte);
            }
            out.push(b'"');
        }
    }
}

/// Formats numbers straight into the output, without an intermediate `String`.
struct VecWriter<'v>(&'v mut Vec<u8>);

impl fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.0.extend_from_slice(text.as_bytes());
        Ok(())
    }
}

fn write_display(out: &mut Vec<u8>, value: impl fmt::Display) {
    // The writer never fails and neither do the number formatters, so there is no error to
    // pass on.
    let _ = write!(VecWriter(out), "{value}");
}

fn write_debug(out: &mut Vec<u8>, value: impl fmt::Debug) {
    let _ = write!(VecWriter(out), "{value:?}");
}
