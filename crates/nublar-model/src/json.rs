//! JSON events onto the line protocol model.
//!
//! A body is a JSON array of events or NDJSON (one event per line). An event:
//!
//! ```json
//! {"measurement": "weather", "tags": {"station": "ws-1"},
//!  "fields": {"temp_c": 23.5, "ok": true, "note": "dry"}, "time": "2026-11-26T05:00:00Z"}
//! ```
//!
//! `time` is an RFC 3339 string or integer nanoseconds, and may be left out
//! (the receiver's clock then decides). A JSON number is a float unless the
//! field's known type (from the caller, who keeps the schema) is integer or
//! unsigned and the number is an integer that fits it. The same rules as for
//! line protocol apply: no names starting with `_`, no key named `time`, no
//! key both tag and field, at least one field, the parse limits. Names and
//! tag values may not hold control characters, nor string values a newline,
//! since neither can be written as line protocol.

use std::borrow::Cow;

use crate::event::{Event, Field, FieldType, FieldValue, Tag};
use crate::limits::ParseLimits;

/// Why one event was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    /// A stable snake_case name for metrics.
    pub reason: &'static str,
    pub message: String,
}

/// One event of a body: its number (from 1), its JSON text, and the event
/// or why it was rejected.
pub type DecodedEvent = (usize, String, Result<Event, JsonError>);

/// Why a body's events could not be gone through: the body is not JSON (an array of
/// events, or one event per line), or the caller stopped.
#[derive(Debug)]
pub enum EventsError<E> {
    Body(String),
    Stopped(E),
}

/// The events of a body, numbered from 1, each decoded or rejected with its
/// reason and its own JSON text; or an error for a body that is not JSON at
/// all. `known_type(measurement, field)` answers what the schema knows.
pub fn decode_events(
    body: &[u8],
    limits: ParseLimits,
    known_type: impl Fn(&str, &str) -> Option<FieldType>,
) -> Result<Vec<DecodedEvent>, String> {
    let mut events = Vec::new();
    let gone_through = for_each_event(body, limits, known_type, |number, text, event| {
        events.push((number, text.to_owned(), event));
        Ok::<(), std::convert::Infallible>(())
    });
    match gone_through {
        Ok(_) => Ok(events),
        Err(EventsError::Body(message)) => Err(message),
        Err(EventsError::Stopped(never)) => match never {},
    }
}

/// Goes through the events of a body one at a time, handing each (its number from 1, its
/// JSON text as sent, and the event or why it was rejected) to `each`, which may stop the
/// walk. Memory does not grow with the body: an event is read straight from the body's
/// text, its members only as far as the limits allow, and no JSON tree of it is built.
/// Returns how many events there were.
pub fn for_each_event<E>(
    body: &[u8],
    limits: ParseLimits,
    known_type: impl Fn(&str, &str) -> Option<FieldType>,
    mut each: impl FnMut(usize, &str, Result<Event, JsonError>) -> Result<(), E>,
) -> Result<usize, EventsError<E>> {
    use serde::Deserializer;
    let text = std::str::from_utf8(body)
        .map_err(|error| EventsError::Body(format!("the body is not UTF-8: {error}")))?;
    let trimmed = text.trim_start();
    let mut number = 0usize;
    let mut stopped = None;
    let mut one = |raw: &str| -> bool {
        number += 1;
        let event = decode_event(raw, limits, &known_type);
        match each(number, raw, event) {
            Ok(()) => true,
            Err(error) => {
                stopped = Some(error);
                false
            }
        }
    };
    if trimmed.starts_with('[') {
        let mut deserializer = serde_json::Deserializer::from_str(trimmed);
        let walked = deserializer
            .deserialize_seq(EachElement { each: &mut one })
            .and_then(|()| deserializer.end());
        if let Some(error) = stopped {
            return Err(EventsError::Stopped(error));
        }
        walked
            .map_err(|error| EventsError::Body(format!("the body is not a JSON array: {error}")))?;
    } else {
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            serde_json::from_str::<&RawValue>(line).map_err(|error| {
                EventsError::Body(format!("line {} is not JSON: {error}", index + 1))
            })?;
            if !one(line) {
                break;
            }
        }
        if let Some(error) = stopped {
            return Err(EventsError::Stopped(error));
        }
    }
    Ok(number)
}

use serde::de::{self, Deserialize, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Hands each element of a JSON array, as its raw text, to `each`; stops when it says so.
struct EachElement<'a, F> {
    each: &'a mut F,
}

impl<'de, F: FnMut(&str) -> bool> Visitor<'de> for EachElement<'_, F> {
    type Value = ();

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("an array of events")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            if !(self.each)(raw.get()) {
                return Err(de::Error::custom("stopped"));
            }
        }
        Ok(())
    }
}

/// A member name, borrowed from the text unless it holds an escape.
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = Name<'de>;
            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(text)))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(text.to_owned())))
            }
            fn visit_string<E: de::Error>(self, text: String) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

/// An event's members as raw text, each read only as far as needed to find its end.
#[derive(Default)]
struct Members<'a> {
    measurement: Option<&'a RawValue>,
    tags: Option<&'a RawValue>,
    fields: Option<&'a RawValue>,
    time: Option<&'a RawValue>,
    /// The first member that is none of these.
    unknown: Option<Cow<'a, str>>,
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Members::default();
                while let Some(Name(key)) = map.next_key::<Name<'de>>()? {
                    let value = map.next_value::<&'de RawValue>()?;
                    match key.as_ref() {
                        "measurement" => members.measurement = Some(value),
                        "tags" => members.tags = Some(value),
                        "fields" => members.fields = Some(value),
                        "time" => members.time = Some(value),
                        _ => {
                            members.unknown.get_or_insert(key);
                        }
                    }
                }
                Ok(members)
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

/// An object's entries: each name with its value's raw text.
type Entries<'a> = Vec<(Cow<'a, str>, &'a RawValue)>;

/// The entries of an object as (name, raw value), at most `max` of them: past it the read
/// stops with `None`, before anything more is kept.
fn entries(raw: &RawValue, max: usize) -> Result<Option<Entries<'_>>, ()> {
    struct EntriesVisitor {
        max: usize,
    }
    impl<'de> Visitor<'de> for EntriesVisitor {
        type Value = Option<Entries<'de>>;
        fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut entries = Vec::new();
            while let Some(Name(key)) = map.next_key::<Name<'de>>()? {
                let value = map.next_value::<&'de RawValue>()?;
                // A key given twice keeps its last value, as a JSON object does.
                entries.retain(|(seen, _): &(Cow<'de, str>, &RawValue)| *seen != key);
                if entries.len() == self.max {
                    return Ok(None);
                }
                entries.push((key, value));
            }
            Ok(Some(entries))
        }
    }
    use serde::Deserializer;
    let mut deserializer = serde_json::Deserializer::from_str(raw.get());
    deserializer
        .deserialize_map(EntriesVisitor { max })
        .map_err(|_| ())
}

/// A member's value, told apart by its first character without reading further.
enum Scalar<'a> {
    Bool(bool),
    Str(&'a RawValue),
    Number(&'a RawValue),
    Null,
    Other,
}

fn scalar(raw: &RawValue) -> Scalar<'_> {
    match raw.get().as_bytes().first() {
        Some(b't') => Scalar::Bool(true),
        Some(b'f') => Scalar::Bool(false),
        Some(b'"') => Scalar::Str(raw),
        Some(b'-' | b'0'..=b'9') => Scalar::Number(raw),
        Some(b'n') => Scalar::Null,
        _ => Scalar::Other,
    }
}

fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str::<Name<'_>>(raw.get())
        .ok()
        .map(|name| name.0)
}

fn reject(reason: &'static str, message: impl Into<String>) -> JsonError {
    JsonError {
        reason,
        message: message.into(),
    }
}

fn decode_event(
    raw: &str,
    limits: ParseLimits,
    known_type: &impl Fn(&str, &str) -> Option<FieldType>,
) -> Result<Event, JsonError> {
    let not_an_object = || reject("not_an_object", "an event must be a JSON object");
    if !raw.starts_with('{') {
        return Err(not_an_object());
    }
    let members: Members<'_> = serde_json::from_str(raw).map_err(|_| not_an_object())?;
    if let Some(key) = &members.unknown {
        return Err(reject(
            "unknown_member",
            format!("unknown member {key:?}: expected measurement, tags, fields, time"),
        ));
    }
    let measurement = members
        .measurement
        .filter(|raw| matches!(scalar(raw), Scalar::Str(_)))
        .and_then(string)
        .ok_or_else(|| reject("missing_measurement", "\"measurement\" must be a string"))?;
    check_name("measurement", &measurement, limits)?;

    let mut tags = Vec::new();
    if let Some(raw) = members.tags {
        let bad_tags = || reject("bad_tags", "\"tags\" must be an object of strings");
        if !raw.get().starts_with('{') {
            return Err(bad_tags());
        }
        let map = entries(raw, limits.tags_per_line_max)
            .map_err(|()| bad_tags())?
            .ok_or_else(|| {
                reject(
                    "too_many_tags",
                    format!("more than {} tags", limits.tags_per_line_max),
                )
            })?;
        for (key, value) in map {
            check_name("tag key", &key, limits)?;
            let value = match scalar(value) {
                Scalar::Str(raw) => string(raw),
                _ => None,
            }
            .ok_or_else(|| reject("bad_tags", format!("tag {key:?} must be a string")))?;
            check_text("tag value", &value, limits.name_bytes_max)?;
            if value.is_empty() {
                return Err(reject(
                    "empty_tag_value",
                    format!("tag {key:?} has an empty value"),
                ));
            }
            tags.push(Tag {
                key: Cow::Owned(key.into_owned()),
                value: Cow::Owned(value.into_owned()),
            });
        }
    }

    let missing_fields = || {
        reject(
            "missing_fields",
            "\"fields\" must be an object with at least one field",
        )
    };
    let raw = members
        .fields
        .filter(|raw| raw.get().starts_with('{'))
        .ok_or_else(missing_fields)?;
    let map = entries(raw, limits.fields_per_line_max)
        .map_err(|()| missing_fields())?
        .ok_or_else(|| {
            reject(
                "too_many_fields",
                format!("more than {} fields", limits.fields_per_line_max),
            )
        })?;
    if map.is_empty() {
        return Err(reject(
            "missing_fields",
            "an event needs at least one field",
        ));
    }
    let mut fields = Vec::new();
    for (key, value) in map {
        check_name("field key", &key, limits)?;
        if tags.iter().any(|tag| tag.key == key.as_ref()) {
            return Err(reject(
                "tag_field_clash",
                format!("{key:?} is both a tag and a field"),
            ));
        }
        let value = match scalar(value) {
            Scalar::Bool(flag) => FieldValue::Bool(flag),
            Scalar::Str(raw) => {
                // The raw text is at least as long as the value it holds: a text far past
                // the limit is refused before it is unescaped.
                if raw.get().len() > 2 + 6 * limits.string_value_bytes_max {
                    return Err(string_too_long(&key, limits));
                }
                let text = string(raw).ok_or_else(|| {
                    reject(
                        "bad_field_value",
                        format!("field {key:?} is not a valid string"),
                    )
                })?;
                if text.len() > limits.string_value_bytes_max {
                    return Err(string_too_long(&key, limits));
                }
                if text.contains('\n') {
                    return Err(reject(
                        "newline_in_string",
                        format!("field {key:?} holds a newline, which line protocol cannot carry"),
                    ));
                }
                FieldValue::Str(Cow::Owned(text.into_owned()))
            }
            Scalar::Number(raw) => {
                let number: serde_json::Number = serde_json::from_str(raw.get()).map_err(|_| {
                    reject(
                        "bad_number",
                        format!("field {key:?} is not a finite number"),
                    )
                })?;
                match known_type(&measurement, &key) {
                    Some(FieldType::I64) if number.as_i64().is_some() => {
                        FieldValue::I64(number.as_i64().expect("checked"))
                    }
                    Some(FieldType::U64) if number.as_u64().is_some() => {
                        FieldValue::U64(number.as_u64().expect("checked"))
                    }
                    _ => match number.as_f64() {
                        Some(float) if float.is_finite() => FieldValue::F64(float),
                        _ => {
                            return Err(reject(
                                "bad_number",
                                format!("field {key:?} is not a finite number"),
                            ));
                        }
                    },
                }
            }
            Scalar::Null | Scalar::Other => {
                return Err(reject(
                    "bad_field_value",
                    format!("field {key:?} must be a number, boolean or string"),
                ));
            }
        };
        fields.push(Field {
            key: Cow::Owned(key.into_owned()),
            value,
        });
    }

    let bad_time = |message: String| reject("bad_time", message);
    let timestamp_ns = match members.time.map(scalar) {
        None | Some(Scalar::Null) => None,
        Some(Scalar::Number(raw)) => Some(
            serde_json::from_str::<serde_json::Number>(raw.get())
                .ok()
                .and_then(|number| number.as_i64())
                .ok_or_else(|| {
                    bad_time("\"time\" as a number must be integer nanoseconds".into())
                })?,
        ),
        Some(Scalar::Str(raw)) => {
            let text = string(raw).unwrap_or_default();
            Some(parse_rfc3339(&text).ok_or_else(|| {
                bad_time(format!(
                    "\"time\" {text:?} is not an RFC 3339 time such as 2026-11-26T05:00:00Z"
                ))
            })?)
        }
        Some(_) => {
            return Err(bad_time(
                "\"time\" must be an RFC 3339 string or integer nanoseconds".into(),
            ));
        }
    };
    // In name order, whatever the order sent: the same event is always the same record.
    tags.sort_by(|left, right| left.key.cmp(&right.key));
    fields.sort_by(|left, right| left.key.cmp(&right.key));
    Ok(Event {
        measurement: Cow::Owned(measurement.into_owned()),
        tags,
        fields,
        timestamp_ns,
    })
}

fn string_too_long(key: &str, limits: ParseLimits) -> JsonError {
    reject(
        "string_too_long",
        format!(
            "field {key:?} is longer than {} bytes",
            limits.string_value_bytes_max
        ),
    )
}

fn check_name(what: &str, name: &str, limits: ParseLimits) -> Result<(), JsonError> {
    if name.is_empty() {
        return Err(reject("empty_name", format!("an empty {what}")));
    }
    if name.starts_with('_') {
        return Err(reject(
            "reserved_name",
            format!("{what} {name:?}: names starting with '_' are reserved"),
        ));
    }
    if what != "measurement" && name == "time" {
        return Err(reject(
            "reserved_name",
            format!("a {what} may not be named \"time\""),
        ));
    }
    check_text(what, name, limits.name_bytes_max)
}

fn check_text(what: &str, text: &str, bytes_max: usize) -> Result<(), JsonError> {
    if text.len() > bytes_max {
        return Err(reject(
            "name_too_long",
            format!("{what} is longer than {bytes_max} bytes"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(reject(
            "control_character",
            format!("{what} {text:?} holds a control character"),
        ));
    }
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` to nanoseconds since the epoch.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = bytes.get(range)?;
        part.iter().all(u8::is_ascii_digit).then(|| {
            part.iter()
                .fold(0i64, |value, digit| value * 10 + i64::from(digit - b'0'))
        })
    };
    let year = digits(0..4)?;
    let month = digits(5..7)?;
    let day = digits(8..10)?;
    let hour = digits(11..13)?;
    let minute = digits(14..16)?;
    let second = digits(17..19)?;
    if bytes.get(4) != Some(&b'-')
        || bytes.get(7) != Some(&b'-')
        || !matches!(bytes.get(10), Some(b'T' | b't' | b' '))
        || bytes.get(13) != Some(&b':')
        || bytes.get(16) != Some(&b':')
    {
        return None;
    }
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut at = 19;
    let mut nanos = 0i64;
    if bytes.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while bytes.get(at).is_some_and(u8::is_ascii_digit) {
            if at - start < 9 {
                nanos = nanos * 10 + i64::from(bytes[at] - b'0');
            }
            at += 1;
        }
        let count = at - start;
        if count == 0 {
            return None;
        }
        for _ in count..9 {
            nanos *= 10;
        }
    }
    let offset_seconds = match bytes.get(at) {
        Some(b'Z' | b'z') if at + 1 == bytes.len() => 0,
        Some(&sign @ (b'+' | b'-')) if at + 6 == bytes.len() && bytes[at + 3] == b':' => {
            let hours = digits(at + 1..at + 3)?;
            let minutes = digits(at + 4..at + 6)?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 3600 + minutes * 60;
            if sign == b'+' { offset } else { -offset }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    seconds.checked_mul(1_000_000_000)?.checked_add(nanos)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(body: &str, known: Option<FieldType>) -> Vec<Result<Event, JsonError>> {
        decode_events(body.as_bytes(), ParseLimits::default(), |_, _| known)
            .unwrap()
            .into_iter()
            .map(|(_, _, result)| result)
            .collect()
    }

    #[test]
    fn rfc3339_times_become_nanoseconds() {
        let cases = [
            ("1970-01-01T00:00:00Z", Some(0)),
            ("2026-11-26T05:00:00Z", Some(1_795_669_200_000_000_000)),
            ("2026-11-26T05:00:00.5Z", Some(1_795_669_200_500_000_000)),
            ("2026-11-26T06:00:00+01:00", Some(1_795_669_200_000_000_000)),
            (
                "2000-02-29T00:00:00.000000001Z",
                Some(951_782_400_000_000_001),
            ),
            ("1969-12-31T23:59:59Z", Some(-1_000_000_000)),
            ("2026-02-29T00:00:00Z", None),
            ("2026-11-26 05:00:00", None),
            ("2026-13-01T00:00:00Z", None),
            ("26-11-26T05:00:00Z", None),
            ("2026-11-26T05:00:00.Z", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_rfc3339(text), expected, "{text}");
        }
    }

    #[test]
    fn numbers_follow_the_known_type() {
        let body = r#"[{"measurement":"m","fields":{"n":3}}]"#;
        assert_eq!(
            decode(body, None)[0].as_ref().unwrap().fields[0].value,
            FieldValue::F64(3.0)
        );
        assert_eq!(
            decode(body, Some(FieldType::I64))[0]
                .as_ref()
                .unwrap()
                .fields[0]
                .value,
            FieldValue::I64(3)
        );
        assert_eq!(
            decode(body, Some(FieldType::U64))[0]
                .as_ref()
                .unwrap()
                .fields[0]
                .value,
            FieldValue::U64(3)
        );
        let fraction = r#"[{"measurement":"m","fields":{"n":3.5}}]"#;
        assert_eq!(
            decode(fraction, Some(FieldType::I64))[0]
                .as_ref()
                .unwrap()
                .fields[0]
                .value,
            FieldValue::F64(3.5)
        );
    }

    #[test]
    fn bad_events_are_rejected_one_by_one_with_a_reason() {
        let body = "{\"measurement\":\"ok\",\"tags\":{\"a\":\"b\"},\"fields\":{\"x\":true},\"time\":5}\n\
                    {\"measurement\":\"_x\",\"fields\":{\"x\":1}}\n\
                    {\"measurement\":\"m\",\"fields\":{}}\n\
                    {\"measurement\":\"m\",\"tags\":{\"k\":\"v\"},\"fields\":{\"k\":1}}\n\
                    {\"measurement\":\"m\",\"fields\":{\"time\":1}}\n\
                    {\"measurement\":\"m\",\"fields\":{\"s\":\"a\\nb\"}}\n\
                    {\"measurement\":\"m\",\"fields\":{\"x\":1},\"time\":\"yesterday\"}\n\
                    [1]\n";
        let results = decode(body, None);
        let reasons: Vec<&str> = results
            .iter()
            .map(|result| result.as_ref().map_or_else(|error| error.reason, |_| "ok"))
            .collect();
        assert_eq!(
            reasons,
            [
                "ok",
                "reserved_name",
                "missing_fields",
                "tag_field_clash",
                "reserved_name",
                "newline_in_string",
                "bad_time",
                "not_an_object"
            ]
        );
        let first = results[0].as_ref().unwrap();
        assert_eq!(first.timestamp_ns, Some(5));
        assert!(decode_events(b"not json", ParseLimits::default(), |_, _| None).is_err());
    }
}
