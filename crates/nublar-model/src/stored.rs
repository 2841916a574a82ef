//! The stored value: how one event is kept as the value of one record of the `telemetry` topic.
//!
//! The gateway has parsed and validated every line before it appends it, so the log keeps the
//! result rather than text to be parsed again: its readers (the lake sink, the processors) then
//! find each name, value and timestamp at a known place, with no number to convert and no escape
//! to undo. A float is its eight bytes, so it reads back bit for bit.
//!
//! ```text
//! value   = format flags [time] text-length text measurement-length tags fields
//! format  = 0x01                  (this layout; line protocol never starts with it; 0x02 to
//!                                 0x08 are kept for the layouts after it)
//! flags   = 0x00 | 0x01           (bit 0: a time follows; other bits are reserved)
//! time    = i64, little-endian    (nanoseconds since the Unix epoch)
//! text    = UTF-8: the measurement, then each tag's key and value, then each field's key and
//!           string value, one after another with nothing between them
//! tags    = count (key-length value-length)*
//! fields  = count (key-length kind)*, at least one
//! kind    = 1 float, f64 LE | 2 integer, i64 LE | 3 unsigned, u64 LE | 4 false | 5 true
//!         | 6 string, value-length
//! ```
//!
//! Every count and length is an unsigned LEB128 of at most five bytes; the lengths cut the text
//! into the measurement, names and strings in order, which must use it up exactly. Nothing may follow the
//! last field. The whole text is checked as UTF-8 in one pass, rather than each name on its
//! own, and the time sits right after the flags, so that a reader that wants only the time of
//! an event finds it without walking the rest.
//!
//! Records written as canonical line protocol (before this layout existed) are still read:
//! [`decode`] parses any value that does not start with [`FORMAT`].

use std::borrow::Cow;

use crate::event::{Field, FieldValue, ParsedLine, Precision, Tag};
use crate::limits::ParseLimits;
use crate::line_protocol::{parse_lines, write_line};

/// The first byte of every value in this layout. Line protocol cannot start with it: the parser
/// rejects control bytes in a measurement.
pub const FORMAT: u8 = 0x01;

/// First bytes kept for the layouts that follow this one. A value starting with one of them was
/// written by a newer nublar; it is refused as such, never read as line protocol.
pub const FORMATS_RESERVED: std::ops::RangeInclusive<u8> = 0x02..=0x08;

const FLAG_TIME: u8 = 0x01;

const KIND_F64: u8 = 1;
const KIND_I64: u8 = 2;
const KIND_U64: u8 = 3;
const KIND_FALSE: u8 = 4;
const KIND_TRUE: u8 = 5;
const KIND_STR: u8 = 6;

/// A length takes at most five LEB128 bytes, which covers every length a record can hold.
const LENGTH_BYTES_MAX: usize = 5;

/// Why a stored value could not be read: the log's checksums make this a sign of a writer of
/// another version or of a bug, never of a sender's mistake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored event unreadable at byte {position}: {reason}")]
pub struct DecodeError {
    pub position: usize,
    pub reason: &'static str,
}

/// Appends `line` in the stored layout.
pub fn encode(line: &ParsedLine<'_>, out: &mut Vec<u8>) {
    out.push(FORMAT);
    match line.timestamp_ns {
        Some(timestamp_ns) => {
            out.push(FLAG_TIME);
            out.extend_from_slice(&timestamp_ns.to_le_bytes());
        }
        None => out.push(0),
    }
    let strings = |field: &Field<'_>| match &field.value {
        FieldValue::Str(value) => value.len(),
        _ => 0,
    };
    let text_length = line.measurement.len()
        + line
            .tags
            .iter()
            .map(|tag| tag.key.len() + tag.value.len())
            .sum::<usize>()
        + line
            .fields
            .iter()
            .map(|field| field.key.len() + strings(field))
            .sum::<usize>();
    put_length(out, text_length);
    out.extend_from_slice(line.measurement.as_bytes());
    for tag in &line.tags {
        out.extend_from_slice(tag.key.as_bytes());
        out.extend_from_slice(tag.value.as_bytes());
    }
    for field in &line.fields {
        out.extend_from_slice(field.key.as_bytes());
        if let FieldValue::Str(value) = &field.value {
            out.extend_from_slice(value.as_bytes());
        }
    }
    put_length(out, line.measurement.len());
    put_length(out, line.tags.len());
    for tag in &line.tags {
        put_length(out, tag.key.len());
        put_length(out, tag.value.len());
    }
    put_length(out, line.fields.len());
    for field in &line.fields {
        put_length(out, field.key.len());
        match &field.value {
            FieldValue::F64(value) => {
                out.push(KIND_F64);
                out.extend_from_slice(&value.to_le_bytes());
            }
            FieldValue::I64(value) => {
                out.push(KIND_I64);
                out.extend_from_slice(&value.to_le_bytes());
            }
            FieldValue::U64(value) => {
                out.push(KIND_U64);
                out.extend_from_slice(&value.to_le_bytes());
            }
            FieldValue::Bool(false) => out.push(KIND_FALSE),
            FieldValue::Bool(true) => out.push(KIND_TRUE),
            FieldValue::Str(value) => {
                out.push(KIND_STR);
                put_length(out, value.len());
            }
        }
    }
}

/// Reads one stored value, borrowing every string from it. A value in canonical line protocol
/// (one line, no line ending needed) is parsed instead.
pub fn decode(value: &[u8]) -> Result<ParsedLine<'_>, DecodeError> {
    let mut line = ParsedLine {
        measurement: Cow::Borrowed(""),
        tags: Vec::new(),
        fields: Vec::new(),
        timestamp_ns: None,
    };
    decode_into(value, &mut line)?;
    Ok(line)
}

/// [`decode`] into `line`, reusing its lists, so that a reader of many records allocates
/// nothing per record. On an error `line` holds no meaningful event.
pub fn decode_into<'a>(value: &'a [u8], line: &mut ParsedLine<'a>) -> Result<(), DecodeError> {
    if value
        .first()
        .is_some_and(|first| FORMATS_RESERVED.contains(first))
    {
        return Err(DecodeError {
            position: 0,
            reason: "a stored layout newer than this nublar reads: upgrade to read this log",
        });
    }
    if value.first() != Some(&FORMAT) {
        *line = decode_line_protocol(value)?;
        return Ok(());
    }
    let mut reader = Reader {
        bytes: value,
        position: 1,
        text: "",
        text_start: 0,
        text_at: 0,
    };
    let flags = reader.byte("no flags")?;
    if flags & !FLAG_TIME != 0 {
        return Err(reader.error_before(1, "unknown flags: written by a newer nublar?"));
    }
    line.timestamp_ns = if flags & FLAG_TIME != 0 {
        Some(i64::from_le_bytes(reader.array("time cut short")?))
    } else {
        None
    };
    reader.text_block()?;
    let at = reader.position;
    let length = reader.length()?;
    line.measurement = Cow::Borrowed(reader.cut(length, at)?);
    let tag_count = reader.count()?;
    line.tags.clear();
    line.tags.reserve(tag_count);
    for _ in 0..tag_count {
        let at = reader.position;
        let key = reader.length()?;
        let value = reader.length()?;
        line.tags.push(Tag {
            key: Cow::Borrowed(reader.cut(key, at)?),
            value: Cow::Borrowed(reader.cut(value, at)?),
        });
    }
    let field_count = reader.count()?;
    if field_count == 0 {
        return Err(reader.error_before(1, "an event has at least one field"));
    }
    line.fields.clear();
    line.fields.reserve(field_count);
    for _ in 0..field_count {
        let at = reader.position;
        let key = reader.length()?;
        let key = Cow::Borrowed(reader.cut(key, at)?);
        let value = match reader.byte("field kind missing")? {
            KIND_F64 => FieldValue::F64(f64::from_le_bytes(reader.array("float cut short")?)),
            KIND_I64 => FieldValue::I64(i64::from_le_bytes(reader.array("integer cut short")?)),
            KIND_U64 => FieldValue::U64(u64::from_le_bytes(reader.array("unsigned cut short")?)),
            KIND_FALSE => FieldValue::Bool(false),
            KIND_TRUE => FieldValue::Bool(true),
            KIND_STR => {
                let at = reader.position;
                let length = reader.length()?;
                FieldValue::Str(Cow::Borrowed(reader.cut(length, at)?))
            }
            _ => return Err(reader.error_before(1, "unknown field kind")),
        };
        line.fields.push(Field { key, value });
    }
    if reader.position != value.len() {
        return Err(reader.error_before(0, "bytes after the last field"));
    }
    if reader.text_at != reader.text.len() {
        return Err(DecodeError {
            position: reader.text_start + reader.text_at,
            reason: "text left over after the last field",
        });
    }
    Ok(())
}

/// Whether `value` is in the stored layout rather than line protocol.
pub fn is_stored_layout(value: &[u8]) -> bool {
    value.first() == Some(&FORMAT)
}

/// A stored value shown as the line protocol line it stands for, for people reading the log
/// (`nublar log tail`); `None` when it is no stored event.
pub fn display(value: &[u8]) -> Option<String> {
    let line = decode(value).ok()?;
    let mut text = Vec::with_capacity(value.len() + 32);
    write_line(&line, &mut text);
    text.pop();
    String::from_utf8(text).ok()
}

fn decode_line_protocol(value: &[u8]) -> Result<ParsedLine<'_>, DecodeError> {
    let mut lines = parse_lines(value, Precision::Ns, ParseLimits::default());
    let line = match lines.next() {
        Some((_, Ok(line))) => line,
        Some((_, Err(_))) | None => {
            return Err(DecodeError {
                position: 0,
                reason: "neither the stored layout nor a line of line protocol",
            });
        }
    };
    if lines.next().is_some() {
        return Err(DecodeError {
            position: 0,
            reason: "more than one line of line protocol",
        });
    }
    Ok(line)
}

fn put_length(out: &mut Vec<u8>, length: usize) {
    let mut rest = u32::try_from(length).expect("a record holds less than 4 GiB");
    loop {
        let low = (rest & 0x7f) as u8;
        rest >>= 7;
        if rest == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
    /// The value's text, checked as UTF-8, and how much of it names already took.
    text: &'a str,
    text_start: usize,
    text_at: usize,
}

impl<'a> Reader<'a> {
    fn error_before(&self, back: usize, reason: &'static str) -> DecodeError {
        DecodeError {
            position: self.position.saturating_sub(back),
            reason,
        }
    }

    #[inline]
    fn byte(&mut self, missing: &'static str) -> Result<u8, DecodeError> {
        let Some(&byte) = self.bytes.get(self.position) else {
            return Err(self.error_before(0, missing));
        };
        self.position += 1;
        Ok(byte)
    }

    #[inline]
    fn array(&mut self, short: &'static str) -> Result<[u8; 8], DecodeError> {
        let Some(array) = self
            .bytes
            .get(self.position..)
            .and_then(|rest| rest.first_chunk::<8>())
        else {
            return Err(self.error_before(0, short));
        };
        self.position += 8;
        Ok(*array)
    }

    /// Names and counts are almost always below 128, one byte; the loop is for the rest.
    #[inline]
    fn length(&mut self) -> Result<usize, DecodeError> {
        match self.bytes.get(self.position) {
            Some(&byte) if byte < 0x80 => {
                self.position += 1;
                Ok(usize::from(byte))
            }
            _ => self.long_length(),
        }
    }

    fn long_length(&mut self) -> Result<usize, DecodeError> {
        let mut length: u64 = 0;
        for index in 0..LENGTH_BYTES_MAX {
            let byte = self.byte("length cut short")?;
            length |= u64::from(byte & 0x7f) << (7 * index);
            if byte & 0x80 == 0 {
                return usize::try_from(length)
                    .map_err(|_| self.error_before(1, "length too large"));
            }
        }
        Err(self.error_before(1, "length longer than five bytes"))
    }

    /// A count of items that each take at least one byte, so a count beyond the bytes left is
    /// refused before anything is allocated for it.
    #[inline]
    fn count(&mut self) -> Result<usize, DecodeError> {
        let count = self.length()?;
        if count > self.bytes.len() - self.position {
            return Err(self.error_before(1, "count beyond the value's end"));
        }
        Ok(count)
    }

    /// Reads the text block, checked as UTF-8 once for all its names.
    fn text_block(&mut self) -> Result<(), DecodeError> {
        let length = self.length()?;
        let start = self.position;
        let Some(bytes) = self.bytes.get(start..).and_then(|rest| rest.get(..length)) else {
            return Err(self.error_before(0, "text beyond the value's end"));
        };
        let Ok(text) = std::str::from_utf8(bytes) else {
            return Err(DecodeError {
                position: start,
                reason: "text is not UTF-8",
            });
        };
        self.text = text;
        self.text_start = start;
        self.position += length;
        Ok(())
    }

    /// The next `length` bytes of the text; `at` is where the length was, for the error.
    #[inline]
    fn cut(&mut self, length: usize, at: usize) -> Result<&'a str, DecodeError> {
        let Some(name) = self
            .text_at
            .checked_add(length)
            .and_then(|end| self.text.get(self.text_at..end))
        else {
            return Err(DecodeError {
                position: at,
                reason: "a name runs past the text or splits a character",
            });
        };
        self.text_at += length;
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> ParsedLine<'static> {
        ParsedLine {
            measurement: "fence".into(),
            tags: vec![Tag {
                key: "segment".into(),
                value: "n-7".into(),
            }],
            fields: vec![
                Field {
                    key: "kv".into(),
                    value: FieldValue::F64(7.5),
                },
                Field {
                    key: "ok".into(),
                    value: FieldValue::Bool(true),
                },
                Field {
                    key: "note".into(),
                    value: FieldValue::Str("é".into()),
                },
            ],
            timestamp_ns: Some(-2),
        }
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let mut value = Vec::new();
        encode(&event(), &mut value);
        let mut expected = vec![FORMAT, FLAG_TIME];
        expected.extend_from_slice(&(-2i64).to_le_bytes());
        expected.push(25);
        expected.extend_from_slice("fencesegmentn-7kvoknoteé".as_bytes());
        expected.extend_from_slice(b"\x05\x01\x07\x03\x03\x02\x01");
        expected.extend_from_slice(&7.5f64.to_le_bytes());
        expected.extend_from_slice(b"\x02\x05\x04\x06\x02");
        assert_eq!(value, expected);
        assert_eq!(decode(&value).unwrap(), event());
        assert!(is_stored_layout(&value));
    }

    #[test]
    fn long_texts_take_longer_lengths() {
        let mut long = event();
        long.fields[2].value = FieldValue::Str("x".repeat(300).into());
        long.timestamp_ns = None;
        let mut value = Vec::new();
        encode(&long, &mut value);
        // 300 = 0b10_0101100: two length bytes, low seven bits first.
        assert_eq!(&value[value.len() - 2..], &[0xac, 0x02]);
        assert_eq!(value[1], 0, "no time flag");
        assert_eq!(decode(&value).unwrap(), long);
    }

    #[test]
    fn line_protocol_values_are_still_read() {
        let line = decode(b"fence,segment=n-7 kv=7.5,ok=true,note=\"\xc3\xa9\" -2").unwrap();
        assert_eq!(line, event());
        assert!(decode(b"fence kv=1\nfence kv=2").is_err());
        assert!(decode(b"not a line").is_err());
        assert!(decode(b"").is_err());
    }

    #[test]
    fn a_newer_layout_is_refused_as_newer() {
        let mut value = Vec::new();
        encode(&event(), &mut value);
        for first in FORMATS_RESERVED {
            value[0] = first;
            let error = decode(&value).unwrap_err();
            assert_eq!(error.position, 0);
            assert!(error.reason.contains("newer"), "{error}");
        }
    }

    #[test]
    fn damaged_values_are_refused_with_their_place() {
        let mut value = Vec::new();
        encode(&event(), &mut value);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                {
                    let mut v = value.clone();
                    v[1] = 0x03;
                    v
                },
                "unknown flags: written by a newer nublar?",
            ),
            (
                {
                    let mut v = value.clone();
                    v.push(0);
                    v
                },
                "bytes after the last field",
            ),
            (
                {
                    let mut v = value.clone();
                    v[10] = 0xff;
                    v
                },
                "text beyond the value's end",
            ),
            (
                {
                    let mut v = value.clone();
                    v[11] = 0xff;
                    v
                },
                "text is not UTF-8",
            ),
            (
                vec![FORMAT, 0, 0, 0, 0, 0],
                "an event has at least one field",
            ),
            (
                b"\x01\x00\x02\xc3\xa9\x01\x00\x01\x00\x04".to_vec(),
                "a name runs past the text or splits a character",
            ),
            (
                b"\x01\x00\x02ab\x01\x00\x01\x00\x04".to_vec(),
                "text left over after the last field",
            ),
            (
                vec![FORMAT, 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0],
                "length longer than five bytes",
            ),
            (vec![FORMAT, 0, 0, 0, 100], "count beyond the value's end"),
        ];
        for (bytes, reason) in cases {
            let error = decode(&bytes).unwrap_err();
            assert_eq!(error.reason, reason, "{bytes:?}");
            assert!(error.position < bytes.len(), "{error}");
        }
    }

    #[test]
    fn decoding_into_one_line_replaces_what_it_held() {
        let mut first = Vec::new();
        encode(&event(), &mut first);
        let mut small = event();
        small.tags.clear();
        small.fields.truncate(1);
        let mut second = Vec::new();
        encode(&small, &mut second);
        let mut line = decode(&first).unwrap();
        decode_into(&second, &mut line).unwrap();
        assert_eq!(line, small);
        decode_into(&first, &mut line).unwrap();
        assert_eq!(line, event());
    }

    #[test]
    fn display_shows_the_line() {
        let mut value = Vec::new();
        encode(&event(), &mut value);
        assert_eq!(
            display(&value).as_deref(),
            Some("fence,segment=n-7 kv=7.5,ok=true,note=\"é\" -2")
        );
        assert_eq!(display(b"{\"json\": 1}"), None);
    }
}
