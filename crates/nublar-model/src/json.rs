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

use serde_json::Value;

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

/// The events of a body, numbered from 1, each decoded or rejected with its
/// reason and its own JSON text; or an error for a body that is not JSON at
/// all. `known_type(measurement, field)` answers what the schema knows.
pub fn decode_events(
    body: &[u8],
    limits: ParseLimits,
    known_type: impl Fn(&str, &str) -> Option<FieldType>,
) -> Result<Vec<DecodedEvent>, String> {
    let text =
        std::str::from_utf8(body).map_err(|error| format!("the body is not UTF-8: {error}"))?;
    let trimmed = text.trim_start();
    let values: Vec<Value> = if trimmed.starts_with('[') {
        serde_json::from_str(trimmed)
            .map_err(|error| format!("the body is not a JSON array: {error}"))?
    } else {
        let mut values = Vec::new();
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let value = serde_json::from_str(line)
                .map_err(|error| format!("line {} is not JSON: {error}", index + 1))?;
            values.push(value);
        }
        values
    };
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(index, value)| {
            let original = value.to_string();
            (
                index + 1,
                original,
                decode_event(&value, limits, &known_type),
            )
        })
        .collect())
}

fn reject(reason: &'static str, message: impl Into<String>) -> JsonError {
    JsonError {
        reason,
        message: message.into(),
    }
}

fn decode_event(
    value: &Value,
    limits: ParseLimits,
    known_type: &impl Fn(&str, &str) -> Option<FieldType>,
) -> Result<Event, JsonError> {
    let object = value
        .as_object()
        .ok_or_else(|| reject("not_an_object", "an event must be a JSON object"))?;
    for key in object.keys() {
        if !matches!(key.as_str(), "measurement" | "tags" | "fields" | "time") {
            return Err(reject(
                "unknown_member",
                format!("unknown member {key:?}: expected measurement, tags, fields, time"),
            ));
        }
    }
    let measurement = object
        .get("measurement")
        .and_then(Value::as_str)
        .ok_or_else(|| reject("missing_measurement", "\"measurement\" must be a string"))?;
    check_name("measurement", measurement, limits)?;

    let mut tags = Vec::new();
    if let Some(value) = object.get("tags") {
        let map = value
            .as_object()
            .ok_or_else(|| reject("bad_tags", "\"tags\" must be an object of strings"))?;
        if map.len() > limits.tags_per_line_max {
            return Err(reject(
                "too_many_tags",
                format!("more than {} tags", limits.tags_per_line_max),
            ));
        }
        for (key, value) in map {
            check_name("tag key", key, limits)?;
            let value = value
                .as_str()
                .ok_or_else(|| reject("bad_tags", format!("tag {key:?} must be a string")))?;
            check_text("tag value", value, limits.name_bytes_max)?;
            if value.is_empty() {
                return Err(reject(
                    "empty_tag_value",
                    format!("tag {key:?} has an empty value"),
                ));
            }
            tags.push(Tag {
                key: Cow::Owned(key.clone()),
                value: Cow::Owned(value.to_owned()),
            });
        }
    }

    let map = object
        .get("fields")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            reject(
                "missing_fields",
                "\"fields\" must be an object with at least one field",
            )
        })?;
    if map.is_empty() {
        return Err(reject(
            "missing_fields",
            "an event needs at least one field",
        ));
    }
    if map.len() > limits.fields_per_line_max {
        return Err(reject(
            "too_many_fields",
            format!("more than {} fields", limits.fields_per_line_max),
        ));
    }
    let mut fields = Vec::new();
    for (key, value) in map {
        check_name("field key", key, limits)?;
        if tags.iter().any(|tag| tag.key == key.as_str()) {
            return Err(reject(
                "tag_field_clash",
                format!("{key:?} is both a tag and a field"),
            ));
        }
        let value = match value {
            Value::Bool(value) => FieldValue::Bool(*value),
            Value::String(text) => {
                if text.len() > limits.string_value_bytes_max {
                    return Err(reject(
                        "string_too_long",
                        format!(
                            "field {key:?} is longer than {} bytes",
                            limits.string_value_bytes_max
                        ),
                    ));
                }
                if text.contains('\n') {
                    return Err(reject(
                        "newline_in_string",
                        format!("field {key:?} holds a newline, which line protocol cannot carry"),
                    ));
                }
                FieldValue::Str(Cow::Owned(text.clone()))
            }
            Value::Number(number) => match known_type(measurement, key) {
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
            },
            _ => {
                return Err(reject(
                    "bad_field_value",
                    format!("field {key:?} must be a number, boolean or string"),
                ));
            }
        };
        fields.push(Field {
            key: Cow::Owned(key.clone()),
            value,
        });
    }

    let timestamp_ns = match object.get("time") {
        None | Some(Value::Null) => None,
        Some(Value::Number(number)) => Some(number.as_i64().ok_or_else(|| {
            reject(
                "bad_time",
                "\"time\" as a number must be integer nanoseconds",
            )
        })?),
        Some(Value::String(text)) => Some(parse_rfc3339(text).ok_or_else(|| {
            reject(
                "bad_time",
                format!("\"time\" {text:?} is not an RFC 3339 time such as 2026-11-26T05:00:00Z"),
            )
        })?),
        Some(_) => {
            return Err(reject(
                "bad_time",
                "\"time\" must be an RFC 3339 string or integer nanoseconds",
            ));
        }
    };
    Ok(Event {
        measurement: Cow::Owned(measurement.to_owned()),
        tags,
        fields,
        timestamp_ns,
    })
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
