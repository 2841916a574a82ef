//! The line protocol reference, rule by rule: for each rule the lines it accepts and the lines
//! it rejects, as data. `check` parses one line and describes the result in one string: the
//! event (`measurement tags fields time`, strings in Rust debug form) or the error kind and its
//! 1-based byte column.

use std::borrow::Cow;

use nublar_model::line_protocol::{TIMESTAMP_NS_MAX, TIMESTAMP_NS_MIN};
use nublar_model::{
    FieldValue, ParseErrorKind, ParseLimits, ParsedLine, Precision, parse_lines, write_line,
};

fn describe(line: &ParsedLine<'_>) -> String {
    let tags: Vec<String> = line
        .tags
        .iter()
        .map(|tag| format!("{:?}={:?}", tag.key, tag.value))
        .collect();
    let fields: Vec<String> = line
        .fields
        .iter()
        .map(|field| format!("{:?}={:?}", field.key, field.value))
        .collect();
    let time = match line.timestamp_ns {
        Some(timestamp_ns) => timestamp_ns.to_string(),
        None => "now".to_string(),
    };
    format!(
        "{:?} [{}] [{}] {time}",
        line.measurement,
        tags.join(" "),
        fields.join(" ")
    )
}

fn parse_one(input: &str, precision: Precision, limits: ParseLimits) -> String {
    let mut items = parse_lines(input.as_bytes(), precision, limits);
    let described = match items.next() {
        None => "nothing".to_string(),
        Some((line_number, result)) => {
            assert_eq!(line_number, 1, "{input:?}");
            match result {
                Ok(line) => describe(&line),
                Err(error) => format!("error {} @{}", error.kind().name(), error.column()),
            }
        }
    };
    assert!(items.next().is_none(), "{input:?} gave more than one line");
    described
}

#[track_caller]
fn check(input: &str, expected: &str) {
    let actual = parse_one(input, Precision::Ns, ParseLimits::default());
    assert_eq!(actual, expected, "input: {input:?}");
}

#[track_caller]
fn check_all(cases: &[(&str, &str)]) {
    for (input, expected) in cases {
        check(input, expected);
    }
}

#[test]
fn structure_measurement_tags_fields_timestamp() {
    check_all(&[
        ("m f=1", r#""m" [] ["f"=F64(1.0)] now"#),
        ("m f=1 5", r#""m" [] ["f"=F64(1.0)] 5"#),
        ("m,t=a f=1 5", r#""m" ["t"="a"] ["f"=F64(1.0)] 5"#),
        (
            "m,t=a,u=b f=1,g=2 5",
            r#""m" ["t"="a" "u"="b"] ["f"=F64(1.0) "g"=F64(2.0)] 5"#,
        ),
        (
            "weather,habitat=savanna,station=ws-017 temp_c=23.5,humidity=41.2,wind_ms=3.1 \
             1700000000000000000",
            r#""weather" ["habitat"="savanna" "station"="ws-017"] ["temp_c"=F64(23.5) "humidity"=F64(41.2) "wind_ms"=F64(3.1)] 1700000000000000000"#,
        ),
        // A measurement may be called `time`, and `=` needs no escape in a measurement.
        ("time f=1", r#""time" [] ["f"=F64(1.0)] now"#),
        ("a=b f=1", r#""a=b" [] ["f"=F64(1.0)] now"#),
        ("m#x f=1", r#""m#x" [] ["f"=F64(1.0)] now"#),
        // Tag order is kept as sent.
        (
            "m,z=1,a=2 f=1",
            r#""m" ["z"="1" "a"="2"] ["f"=F64(1.0)] now"#,
        ),
        // Quotes outside string values are ordinary characters.
        (
            r#""m",'k'="v" f=1"#,
            r#""\"m\"" ["'k'"="\"v\""] ["f"=F64(1.0)] now"#,
        ),
        (
            "m,k=🍭 f=\"Launch 🚀\"",
            r#""m" ["k"="🍭"] ["f"=Str("Launch 🚀")] now"#,
        ),
    ]);
}

#[test]
fn whitespace_separates_and_surrounds() {
    check_all(&[
        ("m  f=1    5", r#""m" [] ["f"=F64(1.0)] 5"#),
        ("m,t=a   f=1", r#""m" ["t"="a"] ["f"=F64(1.0)] now"#),
        ("   m f=1", r#""m" [] ["f"=F64(1.0)] now"#),
        ("\t m f=1", r#""m" [] ["f"=F64(1.0)] now"#),
        ("m f=1 5   ", r#""m" [] ["f"=F64(1.0)] 5"#),
        ("m f=1\t", r#""m" [] ["f"=F64(1.0)] now"#),
        ("m f=1 ", r#""m" [] ["f"=F64(1.0)] now"#),
        // Only the space separates: a tab in a name or between parts is rejected.
        ("m\tf=1", "error control_character @2"),
        ("m,t=a\tf=1", "error control_character @6"),
        ("m f=1\t5", "error invalid_number @5"),
        ("m\0 f=1", "error control_character @2"),
        ("m,t=a\u{7f} f=1", "error control_character @6"),
        ("m\rx f=1", "error control_character @2"),
    ]);
}

#[test]
fn escaping_in_the_measurement() {
    check_all(&[
        (r"my\ m f=1", r#""my m" [] ["f"=F64(1.0)] now"#),
        (r"my\,m f=1", r#""my,m" [] ["f"=F64(1.0)] now"#),
        (r"\ m f=1", r#"" m" [] ["f"=F64(1.0)] now"#),
        // `=` is not special in a measurement, so its backslash stays.
        (r"a\=b f=1", r#""a\\=b" [] ["f"=F64(1.0)] now"#),
        // The reference's backslash table: \ → \, \\ → \, \\\ → \\, \\\\ → \\.
        (r"a\b f=1", r#""a\\b" [] ["f"=F64(1.0)] now"#),
        (r"a\\b f=1", r#""a\\b" [] ["f"=F64(1.0)] now"#),
        (r"a\\\b f=1", r#""a\\\\b" [] ["f"=F64(1.0)] now"#),
        (r"a\\\\b f=1", r#""a\\\\b" [] ["f"=F64(1.0)] now"#),
        (r"a\\\\\b f=1", r#""a\\\\\\b" [] ["f"=F64(1.0)] now"#),
        (r"a\\\ b f=1", r#""a\\ b" [] ["f"=F64(1.0)] now"#),
        // Unescaped, the space ends the measurement.
        ("my m f=1", "error field_missing_equals @5"),
    ]);
}

#[test]
fn escaping_in_tag_keys_and_values() {
    check_all(&[
        (
            r"m,t\ k=v\ w f=1",
            r#""m" ["t k"="v w"] ["f"=F64(1.0)] now"#,
        ),
        (
            r"m,t\,k=v\,w f=1",
            r#""m" ["t,k"="v,w"] ["f"=F64(1.0)] now"#,
        ),
        (
            r"m,t\=k=v\=w f=1",
            r#""m" ["t=k"="v=w"] ["f"=F64(1.0)] now"#,
        ),
        (r"m,k=a\\b f=1", r#""m" ["k"="a\\b"] ["f"=F64(1.0)] now"#),
        (r"m,k=a\b f=1", r#""m" ["k"="a\\b"] ["f"=F64(1.0)] now"#),
        (r"m,k=\,\=\  f=1", r#""m" ["k"=",= "] ["f"=F64(1.0)] now"#),
        ("m,t=a=b f=1", "error unescaped_equals @6"),
        ("m,t a=b f=1", "error tag_missing_equals @4"),
    ]);
}

#[test]
fn escaping_in_field_keys() {
    check_all(&[
        (r"m f\ k=1", r#""m" [] ["f k"=F64(1.0)] now"#),
        (r"m f\,k=1", r#""m" [] ["f,k"=F64(1.0)] now"#),
        (r"m f\=k=1", r#""m" [] ["f=k"=F64(1.0)] now"#),
        (r"m f\\k=1", r#""m" [] ["f\\k"=F64(1.0)] now"#),
        ("m f,k=1", "error field_missing_equals @4"),
    ]);
}

#[test]
fn string_values_are_quoted_and_escape_quote_and_backslash() {
    check_all(&[
        (r#"m s="a b,c=d""#, r#""m" [] ["s"=Str("a b,c=d")] now"#),
        (
            r#"m s="say \"hi\"""#,
            r#""m" [] ["s"=Str("say \"hi\"")] now"#,
        ),
        (r#"m s="a\\b""#, r#""m" [] ["s"=Str("a\\b")] now"#),
        (r#"m s="a\b""#, r#""m" [] ["s"=Str("a\\b")] now"#),
        (r#"m s="a\\\"b""#, r#""m" [] ["s"=Str("a\\\"b")] now"#),
        (r#"m s="\\""#, r#""m" [] ["s"=Str("\\")] now"#),
        (r#"m s="""#, r#""m" [] ["s"=Str("")] now"#),
        ("m s=\"tab\there\"", r#""m" [] ["s"=Str("tab\there")] now"#),
        (
            r#"m s="a",t=1 5"#,
            r#""m" [] ["s"=Str("a") "t"=F64(1.0)] 5"#,
        ),
        (r#"m s="true""#, r#""m" [] ["s"=Str("true")] now"#),
        (r#"m s="#, "error missing_field_value @5"),
        (r#"m s="abc"#, "error unterminated_string @5"),
        (r#"m s="abc\""#, "error unterminated_string @5"),
        (r#"m s="a"b"#, "error trailing_content @8"),
        (r#"m s="a" x"#, "error invalid_timestamp @9"),
        ("m s=hello", "error invalid_field_value @5"),
        ("m s='single'", "error invalid_field_value @5"),
    ]);
}

#[test]
fn floats_are_the_default_number_type() {
    check_all(&[
        ("m f=1.5", r#""m" [] ["f"=F64(1.5)] now"#),
        ("m f=-1.5", r#""m" [] ["f"=F64(-1.5)] now"#),
        ("m f=1", r#""m" [] ["f"=F64(1.0)] now"#),
        ("m f=1.", r#""m" [] ["f"=F64(1.0)] now"#),
        ("m f=.5", r#""m" [] ["f"=F64(0.5)] now"#),
        ("m f=-.5", r#""m" [] ["f"=F64(-0.5)] now"#),
        ("m f=0", r#""m" [] ["f"=F64(0.0)] now"#),
        ("m f=-0.0", r#""m" [] ["f"=F64(-0.0)] now"#),
        ("m f=1e3", r#""m" [] ["f"=F64(1000.0)] now"#),
        ("m f=-1.5E-2", r#""m" [] ["f"=F64(-0.015)] now"#),
        ("m f=1E+2", r#""m" [] ["f"=F64(100.0)] now"#),
        ("m f=-1.234456e+78", r#""m" [] ["f"=F64(-1.234456e78)] now"#),
        (
            "m f=1.7976931348623157e308",
            r#""m" [] ["f"=F64(1.7976931348623157e308)] now"#,
        ),
        ("m f=4.9e-324", r#""m" [] ["f"=F64(5e-324)] now"#),
        // Underflow rounds to zero, as Go's ParseFloat does; only overflow is out of range.
        ("m f=1e-400", r#""m" [] ["f"=F64(0.0)] now"#),
        ("m f=0.1", r#""m" [] ["f"=F64(0.1)] now"#),
        (
            "m f=123456789012345678901234567890",
            r#""m" [] ["f"=F64(1.2345678901234568e29)] now"#,
        ),
        (
            "m f=0.30000000000000004",
            r#""m" [] ["f"=F64(0.30000000000000004)] now"#,
        ),
        ("m f=1e400", "error float_out_of_range @5"),
        ("m f=-1e400", "error float_out_of_range @5"),
        ("m f=NaN", "error invalid_field_value @5"),
        ("m f=nan", "error invalid_field_value @5"),
        ("m f=inf", "error invalid_field_value @5"),
        ("m f=-inf", "error invalid_number @5"),
        ("m f=+1", "error invalid_field_value @5"),
        ("m f=1.5.5", "error invalid_number @5"),
        ("m f=1e", "error invalid_number @5"),
        ("m f=1e+", "error invalid_number @5"),
        ("m f=1ee3", "error invalid_number @5"),
        ("m f=-", "error invalid_number @5"),
        ("m f=.", "error invalid_number @5"),
        ("m f=-.", "error invalid_number @5"),
        ("m f=1_000", "error invalid_number @5"),
        ("m f=0x10", "error invalid_number @5"),
        ("m f=1.5abc", "error invalid_number @5"),
        ("m f=1.5\"", "error invalid_number @5"),
    ]);
}

#[test]
fn integers_and_unsigned_integers_are_range_checked() {
    check_all(&[
        ("m i=1i", r#""m" [] ["i"=I64(1)] now"#),
        ("m i=-12485903i", r#""m" [] ["i"=I64(-12485903)] now"#),
        ("m i=007i", r#""m" [] ["i"=I64(7)] now"#),
        (
            "m i=9223372036854775807i",
            r#""m" [] ["i"=I64(9223372036854775807)] now"#,
        ),
        (
            "m i=-9223372036854775808i",
            r#""m" [] ["i"=I64(-9223372036854775808)] now"#,
        ),
        ("m i=9223372036854775808i", "error integer_out_of_range @5"),
        ("m i=-9223372036854775809i", "error integer_out_of_range @5"),
        (
            "m i=99999999999999999999999i",
            "error integer_out_of_range @5",
        ),
        ("m i=1.5i", "error invalid_number @5"),
        ("m i=1e3i", "error invalid_number @5"),
        ("m i=-i", "error invalid_number @5"),
        ("m i=i", "error invalid_field_value @5"),
        ("m i=+1i", "error invalid_field_value @5"),
        ("m i=1I", "error invalid_number @5"),
        ("m u=0u", r#""m" [] ["u"=U64(0)] now"#),
        (
            "m u=18446744073709551615u",
            r#""m" [] ["u"=U64(18446744073709551615)] now"#,
        ),
        (
            "m u=18446744073709551616u",
            "error unsigned_out_of_range @5",
        ),
        ("m u=-1u", "error invalid_number @5"),
        ("m u=1.0u", "error invalid_number @5"),
        ("m u=1iu", "error invalid_number @5"),
    ]);
}

#[test]
fn every_boolean_spelling_and_nothing_else() {
    for spelling in ["t", "T", "true", "True", "TRUE"] {
        check(&format!("m b={spelling}"), r#""m" [] ["b"=Bool(true)] now"#);
    }
    for spelling in ["f", "F", "false", "False", "FALSE"] {
        check(
            &format!("m b={spelling}"),
            r#""m" [] ["b"=Bool(false)] now"#,
        );
    }
    for wrong in ["tRUE", "tru", "yes", "fALSE", "falsey", "Tr", "1b", "on"] {
        let expected = if wrong.starts_with('1') {
            "error invalid_number @5"
        } else {
            "error invalid_field_value @5"
        };
        check(&format!("m b={wrong}"), expected);
    }
    check(
        "m b=t,c=F 5",
        r#""m" [] ["b"=Bool(true) "c"=Bool(false)] 5"#,
    );
}

#[test]
fn timestamps_are_signed_integers_within_the_reference_range() {
    check_all(&[
        ("m f=1 0", r#""m" [] ["f"=F64(1.0)] 0"#),
        ("m f=1 -5", r#""m" [] ["f"=F64(1.0)] -5"#),
        (
            "m f=1 9223372036854775806",
            r#""m" [] ["f"=F64(1.0)] 9223372036854775806"#,
        ),
        (
            "m f=1 -9223372036854775806",
            r#""m" [] ["f"=F64(1.0)] -9223372036854775806"#,
        ),
        (
            "m f=1 9223372036854775807",
            "error timestamp_out_of_range @7",
        ),
        (
            "m f=1 -9223372036854775807",
            "error timestamp_out_of_range @7",
        ),
        (
            "m f=1 -9223372036854775808",
            "error timestamp_out_of_range @7",
        ),
        (
            "m f=1 99999999999999999999",
            "error timestamp_out_of_range @7",
        ),
        ("m f=1 1.5", "error invalid_timestamp @7"),
        ("m f=1 12a", "error invalid_timestamp @7"),
        ("m f=1 -", "error invalid_timestamp @7"),
        ("m f=1 +5", "error invalid_timestamp @7"),
        ("m f=1 \"5\"", "error invalid_timestamp @7"),
        ("m f=1 1e9", "error invalid_timestamp @7"),
        ("m f=1 5 6", "error trailing_content @8"),
        ("m f=1 5,6", "error invalid_timestamp @7"),
    ]);
    assert_eq!(TIMESTAMP_NS_MIN, i64::MIN + 2);
    assert_eq!(TIMESTAMP_NS_MAX, i64::MAX - 1);
}

#[test]
fn precision_scales_timestamps_to_nanoseconds() {
    let cases = [
        (
            Precision::Ns,
            "m f=1 1700000000000000000",
            "1700000000000000000",
        ),
        (
            Precision::Us,
            "m f=1 1700000000000000",
            "1700000000000000000",
        ),
        (Precision::Ms, "m f=1 1700000000000", "1700000000000000000"),
        (Precision::S, "m f=1 1700000000", "1700000000000000000"),
        (Precision::S, "m f=1 -1", "-1000000000"),
        (Precision::S, "m f=1 9223372036", "9223372036000000000"),
        (
            Precision::S,
            "m f=1 9223372037",
            "error timestamp_out_of_range @7",
        ),
        (
            Precision::Ms,
            "m f=1 -9223372036855",
            "error timestamp_out_of_range @7",
        ),
        (
            Precision::Us,
            "m f=1 9223372036854776",
            "error timestamp_out_of_range @7",
        ),
        // A line without a timestamp has none, whatever the precision.
        (Precision::S, "m f=1", "now"),
    ];
    for (precision, input, expected_time) in cases {
        let actual = parse_one(input, precision, ParseLimits::default());
        let expected = if expected_time.starts_with("error") {
            expected_time.to_string()
        } else {
            format!(r#""m" [] ["f"=F64(1.0)] {expected_time}"#)
        };
        assert_eq!(actual, expected, "{input} in {precision:?}");
    }
}

#[test]
fn a_line_needs_a_measurement_and_at_least_one_field() {
    check_all(&[
        ("m", "error missing_fields @2"),
        ("m,t=a", "error missing_fields @6"),
        ("m ", "error missing_fields @2"),
        ("m,t=a   ", "error missing_fields @6"),
        (",t=a f=1", "error missing_measurement @1"),
        (" f=1", r#"error missing_fields @5"#),
        ("m, f=1", "error empty_tag_key @3"),
        ("m,=a f=1", "error empty_tag_key @3"),
        ("m,t= f=1", "error empty_tag_value @5"),
        ("m,t=,u=b f=1", "error empty_tag_value @5"),
        ("m,t f=1", "error tag_missing_equals @4"),
        ("m,t=a, f=1", "error empty_tag_key @7"),
        ("m =1", "error empty_field_key @3"),
        ("m f", "error field_missing_equals @4"),
        ("m f=", "error missing_field_value @5"),
        ("m f=,g=1", "error missing_field_value @5"),
        ("m f= 5", "error missing_field_value @5"),
        ("m f=1,", "error empty_field_key @7"),
        ("m f=1,,g=2", "error empty_field_key @7"),
        ("m f g=1", "error field_missing_equals @4"),
    ]);
}

#[test]
fn names_may_not_end_with_a_backslash() {
    check_all(&[
        (r"m\\ f=1", "error trailing_backslash @1"),
        (r"m\", "error trailing_backslash @1"),
        (r"m,t=a\\ f=1", "error trailing_backslash @5"),
        (r"m,t\\=a f=1", "error trailing_backslash @3"),
        (r"m f\\=1", "error trailing_backslash @3"),
    ]);
}

#[test]
fn underscore_names_and_time_keys_are_reserved() {
    check_all(&[
        ("_m f=1", "error reserved_name @1"),
        ("_dead_letters f=1", "error reserved_name @1"),
        ("m,_t=a f=1", "error reserved_name @3"),
        ("m _f=1", "error reserved_name @3"),
        ("m f=1,_g=2", "error reserved_name @7"),
        ("m,t=_v f=1", r#""m" ["t"="_v"] ["f"=F64(1.0)] now"#),
        ("m_ f_=1", r#""m_" [] ["f_"=F64(1.0)] now"#),
        ("m,time=a f=1", "error reserved_time_key @3"),
        ("m time=1", "error reserved_time_key @3"),
        ("m f=1,time=2i", "error reserved_time_key @7"),
        // Names are case-sensitive: only `time` itself is the timestamp column.
        (
            "m,Time=a TIME=1",
            r#""m" ["Time"="a"] ["TIME"=F64(1.0)] now"#,
        ),
        (
            "m,t=time f=\"time\"",
            r#""m" ["t"="time"] ["f"=Str("time")] now"#,
        ),
    ]);
}

#[test]
fn repeated_keys_follow_influxdb() {
    check_all(&[
        ("m,t=a,t=b f=1", "error duplicate_tag @7"),
        ("m,t=a,t=a f=1", "error duplicate_tag @7"),
        ("m,t=a t=1", "error tag_field_key_clash @7"),
        ("m,t=a f=1,t=\"x\"", "error tag_field_key_clash @11"),
        // Same type: the last value wins, at the first position.
        ("m f=1,f=2", r#""m" [] ["f"=F64(2.0)] now"#),
        ("m f=1,g=2i,f=3", r#""m" [] ["f"=F64(3.0) "g"=I64(2)] now"#),
        ("m s=\"a\",s=\"b\"", r#""m" [] ["s"=Str("b")] now"#),
        // Different types: rejected.
        ("m f=1,f=2i", "error field_type_conflict @7"),
        ("m f=1u,f=1i", "error field_type_conflict @8"),
        ("m f=t,f=\"t\"", "error field_type_conflict @7"),
    ]);
}

#[test]
fn repeated_keys_are_found_in_lines_with_many_keys() {
    // Beyond 32 keys the parser switches from scanning to a map; both must agree.
    let many_fields: Vec<String> = (0..40).map(|index| format!("f{index}={index}i")).collect();
    let base = format!("m,t=a {}", many_fields.join(","));
    let parsed = parse_one(
        &format!("{base},f3=99i"),
        Precision::Ns,
        ParseLimits::default(),
    );
    assert!(parsed.contains(r#""f3"=I64(99)"#), "{parsed}");
    assert_eq!(parsed.matches("\"f3\"").count(), 1);
    let column = base.len() + 2;
    check(
        &format!("{base},f3=9"),
        &format!("error field_type_conflict @{column}"),
    );
    check(
        &format!("{base},t=9"),
        &format!("error tag_field_key_clash @{column}"),
    );
    let accepted = parse_one(
        &format!("{base},f40=1"),
        Precision::Ns,
        ParseLimits::default(),
    );
    assert!(
        accepted.ends_with(r#""f39"=I64(39) "f40"=F64(1.0)] now"#),
        "{accepted}"
    );

    let many_tags: Vec<String> = (0..40).map(|index| format!("t{index}=v")).collect();
    let tags = many_tags.join(",");
    check(
        &format!("m,{tags},t39=w f=1"),
        &format!("error duplicate_tag @{}", tags.len() + 4),
    );
    check(
        &format!("m,{tags} t0=1"),
        &format!("error tag_field_key_clash @{}", tags.len() + 4),
    );
    let accepted = parse_one(
        &format!("m,{tags} f=1"),
        Precision::Ns,
        ParseLimits::default(),
    );
    assert!(accepted.starts_with(r#""m" ["t0"="v""#), "{accepted}");
}

#[test]
fn invalid_utf8_is_rejected_with_its_column() {
    let body = b"m,t=a\xff f=1\n# comment \xfe\xff is ignored\nm f=\"\xc3\x28\"\n";
    let results: Vec<(usize, String)> = parse_lines(body, Precision::Ns, ParseLimits::default())
        .map(|(line_number, result)| {
            let error = result.expect_err("invalid UTF-8 must be rejected");
            (
                line_number,
                format!("{} @{}", error.kind().name(), error.column()),
            )
        })
        .collect();
    assert_eq!(
        results,
        [
            (1, "invalid_utf8 @6".to_string()),
            (3, "invalid_utf8 @6".to_string())
        ]
    );
}

#[test]
fn limits_are_enforced() {
    let limits = ParseLimits {
        line_bytes_max: 24,
        tags_per_line_max: 2,
        fields_per_line_max: 2,
        name_bytes_max: 3,
        string_value_bytes_max: 3,
    };
    let cases = [
        (
            "m f=1 123456789012345678",
            r#""m" [] ["f"=F64(1.0)] 123456789012345678"#,
        ),
        ("m f=1 1234567890123456789", "error line_too_long @25"),
        // Blank and comment lines count too: nothing unbounded passes.
        ("#23456789012345678901234567890", "error line_too_long @25"),
        (
            "m,a=1,b=2 f=1",
            r#""m" ["a"="1" "b"="2"] ["f"=F64(1.0)] now"#,
        ),
        ("m,a=1,b=2,c=3 f=1", "error too_many_tags @11"),
        ("m f=1,g=2", r#""m" [] ["f"=F64(1.0) "g"=F64(2.0)] now"#),
        ("m f=1,g=2,h=3", "error too_many_fields @11"),
        // Repeats of one field collapse and do not count twice.
        ("m f=1,g=2,f=3", r#""m" [] ["f"=F64(3.0) "g"=F64(2.0)] now"#),
        ("abc f=1", r#""abc" [] ["f"=F64(1.0)] now"#),
        ("abcd f=1", "error name_too_long @1"),
        ("m,abcd=1 f=1", "error name_too_long @3"),
        ("m,a=abcd f=1", "error name_too_long @5"),
        ("m abcd=1", "error name_too_long @3"),
        // The limit is on the unescaped name.
        (r"a\ b f=1", r#""a b" [] ["f"=F64(1.0)] now"#),
        ("m s=\"abc\"", r#""m" [] ["s"=Str("abc")] now"#),
        ("m s=\"abcd\"", "error string_too_long @5"),
        (r#"m s="a\\b""#, r#""m" [] ["s"=Str("a\\b")] now"#),
        (r#"m s="ab\"c""#, "error string_too_long @5"),
    ];
    for (input, expected) in cases {
        assert_eq!(
            parse_one(input, Precision::Ns, limits),
            expected,
            "{input:?}"
        );
    }
    let defaults = ParseLimits::default();
    assert_eq!(
        defaults.line_bytes_max,
        nublar_model::limits::LINE_BYTES_MAX
    );
    assert_eq!(defaults.name_bytes_max, 64 * 1024);
    assert_eq!(defaults.string_value_bytes_max, 1024 * 1024);
}

/// Parses a whole body and lists each yielded line as `number: description`.
#[track_caller]
fn check_body(body: &[u8], expected: &[&str]) {
    let actual: Vec<String> = parse_lines(body, Precision::Ns, ParseLimits::default())
        .map(|(line_number, result)| match result {
            Ok(line) => format!("{line_number}: {}", describe(&line)),
            Err(error) => {
                format!(
                    "{line_number}: error {} @{}",
                    error.kind().name(),
                    error.column()
                )
            }
        })
        .collect();
    assert_eq!(
        actual,
        expected,
        "body: {:?}",
        String::from_utf8_lossy(body)
    );
}

#[test]
fn bodies_have_comments_blank_lines_and_either_line_ending() {
    check_body(b"", &[]);
    check_body(b"\n\n\r\n  \n\t\n", &[]);
    check_body(b"# only a comment", &[]);
    check_body(b"m f=1", &[r#"1: "m" [] ["f"=F64(1.0)] now"#]);
    check_body(b"m f=1\n", &[r#"1: "m" [] ["f"=F64(1.0)] now"#]);
    check_body(
        b"# header\nm f=1\n\n   # indented comment\r\nm f=2 5\r\nm f=3\r\n",
        &[
            r#"2: "m" [] ["f"=F64(1.0)] now"#,
            r#"5: "m" [] ["f"=F64(2.0)] 5"#,
            r#"6: "m" [] ["f"=F64(3.0)] now"#,
        ],
    );
    // A bad line does not stop the next one; numbers are physical lines of the body.
    check_body(
        b"m f=1\n\nbad\nm f=2",
        &[
            r#"1: "m" [] ["f"=F64(1.0)] now"#,
            "3: error missing_fields @4",
            r#"4: "m" [] ["f"=F64(2.0)] now"#,
        ],
    );
    // A `#` after the start of a line is not a comment.
    check_body(b"m f=1 5 # note", &["1: error trailing_content @8"]);
    // A newline inside a string ends the line, as the reference does not support it.
    check_body(
        b"m s=\"a\nb\"",
        &[
            "1: error unterminated_string @5",
            "2: error missing_fields @3",
        ],
    );
    // Only a `\r` right before the `\n` belongs to the line ending.
    check_body(b"m f=1\r\r\n", &["1: error invalid_number @5"]);
    check_body(
        b"m s=\"a\r\"\r\n",
        &["1: \"m\" [] [\"s\"=Str(\"a\\r\")] now"],
    );
}

#[test]
fn errors_carry_kind_column_message_and_the_original_line() {
    let body = b"m f=1\r\nm,t=a f=oops 5\r\n";
    let mut lines = parse_lines(body, Precision::Ns, ParseLimits::default());
    assert!(lines.next().unwrap().1.is_ok());
    let (line_number, result) = lines.next().unwrap();
    let error = result.unwrap_err();
    assert_eq!(line_number, 2);
    assert_eq!(error.kind(), ParseErrorKind::InvalidFieldValue);
    assert_eq!(error.column(), 9);
    assert_eq!(error.original_line(body), "m,t=a f=oops 5");
    assert_eq!(error.line_range(), 7..21);
    assert!(error.message().contains("`oops`"), "{}", error.message());
    assert!(
        error.message().contains("double-quoted"),
        "{}",
        error.message()
    );
    assert_eq!(
        error.to_string(),
        format!("{} (at byte column 9)", error.message())
    );
    // The original line of a body that is not UTF-8 is still shown.
    let body = b"m\xff f=1";
    let error = parse_lines(body, Precision::Ns, ParseLimits::default())
        .next()
        .unwrap()
        .1
        .unwrap_err();
    assert_eq!(error.original_line(body), "m\u{fffd} f=1");
    // Long offending text is shortened in messages.
    let long_key = "k".repeat(1000);
    let input = format!("m {long_key}");
    let error = parse_lines(input.as_bytes(), Precision::Ns, ParseLimits::default())
        .next()
        .unwrap()
        .1
        .unwrap_err();
    assert_eq!(error.kind(), ParseErrorKind::FieldMissingEquals);
    assert!(error.message().len() < 200, "{}", error.message());
}

#[test]
fn error_kind_names_are_unique_snake_case() {
    let mut names: Vec<&str> = ParseErrorKind::ALL.iter().map(|kind| kind.name()).collect();
    for name in &names {
        assert!(
            name.bytes()
                .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_'),
            "{name}"
        );
        assert!(!name.starts_with('_') && !name.ends_with('_'), "{name}");
    }
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), ParseErrorKind::ALL.len());
    assert_eq!(
        ParseErrorKind::TagFieldKeyClash.to_string(),
        "tag_field_key_clash"
    );
}

#[test]
fn text_without_escapes_is_borrowed_from_the_body() {
    let body = br#"m,t=a f="s",g=1 5"#;
    let line = parse_lines(body, Precision::Ns, ParseLimits::default())
        .next()
        .unwrap()
        .1
        .unwrap();
    assert!(matches!(line.measurement, Cow::Borrowed("m")));
    assert!(matches!(line.tags[0].key, Cow::Borrowed("t")));
    assert!(matches!(line.tags[0].value, Cow::Borrowed("a")));
    assert!(matches!(
        line.fields[0].value,
        FieldValue::Str(Cow::Borrowed("s"))
    ));

    let body = br#"m\ x,t\ k=a\,b f\=k="s\"" 5"#;
    let line = parse_lines(body, Precision::Ns, ParseLimits::default())
        .next()
        .unwrap()
        .1
        .unwrap();
    assert!(matches!(&line.measurement, Cow::Owned(text) if text == "m x"));
    assert!(matches!(&line.tags[0].key, Cow::Owned(text) if text == "t k"));
    assert!(matches!(&line.tags[0].value, Cow::Owned(text) if text == "a,b"));
    assert!(matches!(&line.fields[0].key, Cow::Owned(text) if text == "f=k"));
    assert!(matches!(&line.fields[0].value, FieldValue::Str(Cow::Owned(text)) if text == "s\""));
}

#[test]
fn writer_output_is_canonical() {
    let cases = [
        ("m f=1", "m f=1.0\n"),
        (
            "m,t=a f=1i,u=2u,b=T,s=\"x\" 5",
            "m,t=a f=1i,u=2u,b=true,s=\"x\" 5\n",
        ),
        (
            r"my\ m,t\=k=v\,w f\ k=-1.5E-2",
            "my\\ m,t\\=k=v\\,w f\\ k=-0.015\n",
        ),
        (r"a\b,k=a\\b s=1e300", "a\\\\b,k=a\\\\b s=1e300\n"),
        (r#"m s="a\"b\\c\d""#, "m s=\"a\\\"b\\\\c\\\\d\"\n"),
        ("m f=1e-7,g=0.1,h=-0.0", "m f=1e-7,g=0.1,h=-0.0\n"),
        (
            "m b=FALSE 1700000000000000000",
            "m b=false 1700000000000000000\n",
        ),
    ];
    for (input, expected) in cases {
        let line = parse_lines(input.as_bytes(), Precision::Ns, ParseLimits::default())
            .next()
            .unwrap()
            .1
            .unwrap();
        let mut written = Vec::new();
        write_line(&line, &mut written);
        assert_eq!(
            String::from_utf8(written.clone()).unwrap(),
            expected,
            "{input}"
        );
        let reparsed = parse_lines(&written, Precision::Ns, ParseLimits::default())
            .next()
            .unwrap()
            .1
            .unwrap();
        assert_eq!(reparsed, line, "{input}");
    }
}
