//! Properties of the parser, the writer and the stored layout over generated input: no bytes
//! make the parser or the stored layout's reader panic, and every valid event survives a trip
//! through the writer and the parser, and through the stored layout.

use std::borrow::Cow;
use std::collections::HashSet;

use nublar_model::line_protocol::{TIMESTAMP_NS_MAX, TIMESTAMP_NS_MIN};
use nublar_model::{
    Event, Field, FieldValue, ParseLimits, ParsedLine, Precision, Tag, parse_lines, stored,
    write_line,
};
use proptest::prelude::*;

/// Bytes that steer the parser into its interesting paths far more often than uniform bytes.
fn line_protocol_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => prop::sample::select(b" ,=\\\"\n\r\t#_-.0123456789eEiutfTF".to_vec()),
        2 => prop::sample::select(b"abmsxyz".to_vec()),
        1 => any::<u8>(),
    ]
}

/// Checks what must hold for any body, valid or not.
fn check_any_body(body: &[u8], limits: ParseLimits) {
    let mut previous_line_number = 0;
    for (line_number, result) in parse_lines(body, Precision::S, limits) {
        assert!(line_number > previous_line_number);
        previous_line_number = line_number;
        match result {
            Ok(line) => {
                assert!(!line.fields.is_empty());
                assert!(line.fields.len() <= limits.fields_per_line_max);
                assert!(line.tags.len() <= limits.tags_per_line_max);
                // Whatever was accepted is written and read back unchanged.
                let mut written = Vec::new();
                write_line(&line, &mut written);
                let reparsed: Vec<_> =
                    parse_lines(&written, Precision::Ns, ParseLimits::default()).collect();
                assert_eq!(reparsed.len(), 1, "{:?}", String::from_utf8_lossy(&written));
                assert_eq!(reparsed[0].1.as_ref(), Ok(&line));
            }
            Err(error) => {
                let range = error.line_range();
                assert!(range.end <= body.len());
                assert!(error.column() >= 1 && error.column() <= range.len() + 1);
                assert!(!error.message().is_empty());
                let _ = error.original_line(body);
            }
        }
    }
    let newlines = body.iter().filter(|&&byte| byte == b'\n').count();
    assert!(previous_line_number <= newlines + 1);
}

/// Names the parser accepts: no control characters, no leading `_`, not ending with a
/// backslash, and everything that needs escaping well represented.
fn name() -> impl Strategy<Value = String> {
    "[a-z0-9 ,=\\\\\"'#_🍭é.-]{1,10}".prop_filter("a name the parser accepts", |name| {
        !name.starts_with('_') && !name.ends_with('\\')
    })
}

fn key() -> impl Strategy<Value = String> {
    name().prop_filter("not the timestamp column", |key| key != "time")
}

fn measurement() -> impl Strategy<Value = String> {
    // A leading `#` would turn the line into a comment, which no escape can prevent.
    name().prop_filter("not a comment", |name| !name.starts_with('#'))
}

fn field_value() -> impl Strategy<Value = FieldValue<'static>> {
    prop_oneof![
        any::<f64>()
            .prop_filter("finite", |value| value.is_finite())
            .prop_map(FieldValue::F64),
        prop::num::f64::NORMAL.prop_map(FieldValue::F64),
        any::<i64>().prop_map(FieldValue::I64),
        any::<u64>().prop_map(FieldValue::U64),
        any::<bool>().prop_map(FieldValue::Bool),
        // Anything but a newline, control characters, quotes and backslashes included.
        "[^\n]{0,16}".prop_map(|text| FieldValue::Str(Cow::Owned(text))),
        "[\"\\\\a ]{0,8}".prop_map(|text| FieldValue::Str(Cow::Owned(text))),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    (
        measurement(),
        prop::collection::vec((key(), name()), 0..5),
        prop::collection::vec((key(), field_value()), 1..6),
        prop::option::of(TIMESTAMP_NS_MIN..=TIMESTAMP_NS_MAX),
    )
        .prop_map(|(measurement, tags, fields, timestamp_ns)| {
            let mut seen = HashSet::new();
            let tags: Vec<Tag<'static>> = tags
                .into_iter()
                .filter(|(key, _)| seen.insert(key.clone()))
                .map(|(key, value)| Tag {
                    key: key.into(),
                    value: value.into(),
                })
                .collect();
            let fields: Vec<Field<'static>> = fields
                .into_iter()
                .filter(|(key, _)| seen.insert(key.clone()))
                .map(|(key, value)| Field {
                    key: key.into(),
                    value,
                })
                .collect();
            ParsedLine {
                measurement: measurement.into(),
                tags,
                fields,
                timestamp_ns,
            }
        })
        .prop_filter("at least one field with a key unlike every tag", |event| {
            !event.fields.is_empty()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..300)) {
        check_any_body(&body, ParseLimits::default());
    }

    #[test]
    fn line_protocol_like_bytes_never_panic(
        body in prop::collection::vec(line_protocol_byte(), 0..300),
        line_bytes_max in 1usize..64,
        count_max in 1usize..4,
        name_bytes_max in 1usize..8,
    ) {
        check_any_body(&body, ParseLimits::default());
        let tight = ParseLimits {
            line_bytes_max,
            tags_per_line_max: count_max,
            fields_per_line_max: count_max,
            name_bytes_max,
            string_value_bytes_max: name_bytes_max,
        };
        check_any_body(&body, tight);
    }

    #[test]
    fn written_events_parse_back_to_the_same_event(events in prop::collection::vec(event(), 1..8)) {
        let mut body = Vec::new();
        for event in &events {
            write_line(event, &mut body);
        }
        let parsed: Vec<_> = parse_lines(&body, Precision::Ns, ParseLimits::default())
            .map(|(_, result)| result.map(ParsedLine::into_owned))
            .collect();
        let expected: Vec<_> = events.iter().cloned().map(Ok).collect();
        prop_assert_eq!(parsed, expected, "body: {:?}", String::from_utf8_lossy(&body));
        // Canonical: writing what was parsed gives the same bytes again.
        let mut rewritten = Vec::new();
        for (_, result) in parse_lines(&body, Precision::Ns, ParseLimits::default()) {
            write_line(&result.unwrap(), &mut rewritten);
        }
        prop_assert_eq!(rewritten, body);
    }

    #[test]
    fn stored_events_read_back_to_the_same_event(event in event(), nan in any::<bool>()) {
        let mut event = event;
        // The stored layout keeps any float bit for bit, NaN too, which text cannot.
        if nan {
            event.fields[0].value = FieldValue::F64(f64::from_bits(0x7ff8_0000_dead_beef));
        }
        let mut value = Vec::new();
        stored::encode(&event, &mut value);
        let decoded = stored::decode(&value).unwrap();
        prop_assert_eq!(decoded.measurement.as_ref(), event.measurement.as_ref());
        prop_assert_eq!(&decoded.tags, &event.tags);
        prop_assert_eq!(decoded.timestamp_ns, event.timestamp_ns);
        prop_assert_eq!(decoded.fields.len(), event.fields.len());
        for (decoded, sent) in decoded.fields.iter().zip(&event.fields) {
            prop_assert_eq!(&decoded.key, &sent.key);
            match (&decoded.value, &sent.value) {
                (FieldValue::F64(a), FieldValue::F64(b)) => prop_assert_eq!(a.to_bits(), b.to_bits()),
                (a, b) => prop_assert_eq!(a, b),
            }
        }
        // Every shorter prefix is refused, never read as a smaller event.
        for end in 0..value.len() {
            prop_assert!(stored::decode(&value[..end]).is_err(), "prefix of {} bytes", end);
        }
    }

    #[test]
    fn arbitrary_stored_values_never_panic(
        mut value in prop::collection::vec(any::<u8>(), 0..200),
        flip in any::<prop::sample::Index>(),
        event in event(),
    ) {
        value.insert(0, stored::FORMAT);
        let _ = stored::decode(&value);
        // A valid value with one byte changed: every field of the layout gets hit.
        let mut valid = Vec::new();
        stored::encode(&event, &mut valid);
        let at = flip.index(valid.len());
        valid[at] = valid[at].wrapping_add(1 + value.len() as u8 % 250);
        if let Ok(decoded) = stored::decode(&valid) {
            prop_assert!(!decoded.fields.is_empty());
        }
    }

    #[test]
    fn decimal_floats_convert_like_the_standard_library(
        negative in any::<bool>(),
        integer in "[0-9]{0,12}",
        fraction in prop::option::of("[0-9]{0,12}"),
        exponent in prop::option::of(-30i32..30),
    ) {
        prop_assume!(!integer.is_empty() || fraction.as_deref().is_some_and(|f| !f.is_empty()));
        let mut text = String::new();
        if negative {
            text.push('-');
        }
        text.push_str(&integer);
        if let Some(fraction) = &fraction {
            text.push('.');
            text.push_str(fraction);
        }
        if let Some(exponent) = exponent {
            text.push_str(&format!("e{exponent}"));
        }
        let expected: f64 = text.parse().unwrap();
        let line = format!("m f={text}");
        let (_, result) = parse_lines(line.as_bytes(), Precision::Ns, ParseLimits::default())
            .next()
            .unwrap();
        let parsed = result.unwrap();
        let FieldValue::F64(actual) = parsed.fields[0].value else {
            panic!("not a float: {:?}", parsed.fields[0].value);
        };
        prop_assert_eq!(actual.to_bits(), expected.to_bits(), "{}", text);
    }
}
