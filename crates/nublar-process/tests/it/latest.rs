//! The latest readings: the newest event time wins per field, whatever the arrival order, and
//! queries pick series by measurement and tags.

use nublar_model::{Field, FieldValue, ParsedLine, Tag};
use nublar_process::latest::Latest;
use proptest::prelude::*;

fn event(
    paddock: &str,
    segment: &str,
    fields: &[(&str, FieldValue<'static>)],
) -> ParsedLine<'static> {
    ParsedLine {
        measurement: "fence".into(),
        tags: vec![
            Tag {
                key: "segment".into(),
                value: segment.to_owned().into(),
            },
            Tag {
                key: "paddock".into(),
                value: paddock.to_owned().into(),
            },
        ],
        fields: fields
            .iter()
            .map(|(key, value)| Field {
                key: key.to_string().into(),
                value: value.clone(),
            })
            .collect(),
        timestamp_ns: None,
    }
}

#[test]
fn each_field_keeps_its_newest_reading_and_queries_filter_by_tags() {
    let mut latest = Latest::new(100);
    latest.observe(
        "park",
        &event("p1", "s1", &[("voltage_kv", FieldValue::F64(8.0))]),
        10,
    );
    latest.observe(
        "park",
        &event("p1", "s1", &[("voltage_kv", FieldValue::F64(2.0))]),
        30,
    );
    // Older, arriving later: kept out of voltage_kv, but a new field is still taken.
    latest.observe(
        "park",
        &event(
            "p1",
            "s1",
            &[
                ("voltage_kv", FieldValue::F64(7.0)),
                ("ok", FieldValue::Bool(true)),
            ],
        ),
        20,
    );
    latest.observe(
        "park",
        &event("p2", "s1", &[("voltage_kv", FieldValue::F64(9.0))]),
        5,
    );
    latest.observe(
        "zoo",
        &event("p1", "s1", &[("voltage_kv", FieldValue::F64(1.0))]),
        5,
    );

    let p1 = latest.query("park", Some("fence"), &[("paddock", "p1")]);
    assert_eq!(p1.len(), 1);
    assert_eq!(p1[0].series, "paddock=p1,segment=s1");
    assert_eq!(
        p1[0].field("voltage_kv").unwrap().value,
        FieldValue::F64(2.0)
    );
    assert_eq!(p1[0].field("voltage_kv").unwrap().time_ns, 30);
    assert_eq!(p1[0].field("ok").unwrap().value, FieldValue::Bool(true));
    assert_eq!(p1[0].time_ns(), 30);
    let all = latest.query("park", None, &[]);
    let names: Vec<&str> = all.iter().map(|state| state.series.as_str()).collect();
    assert_eq!(names, ["paddock=p1,segment=s1", "paddock=p2,segment=s1"]);
    assert!(latest.query("park", Some("gate"), &[]).is_empty());
    assert!(latest.query("park", None, &[("paddock", "p3")]).is_empty());
    assert_eq!(latest.query("zoo", None, &[]).len(), 1);
}

#[test]
fn series_past_the_bound_are_counted_not_kept() {
    let mut latest = Latest::new(1);
    latest.observe("park", &event("p1", "s1", &[("v", FieldValue::I64(1))]), 1);
    latest.observe("park", &event("p1", "s2", &[("v", FieldValue::I64(1))]), 1);
    latest.observe("park", &event("p1", "s1", &[("v", FieldValue::I64(2))]), 2);
    assert_eq!(latest.len(), 1);
    assert_eq!(latest.series_dropped(), 1);
}

proptest! {
    /// Whatever the arrival order, a field shows the value of its latest time; of equal times,
    /// the one that arrived last.
    #[test]
    fn the_newest_time_wins_in_any_order(readings in prop::collection::vec((0i64..20, any::<i64>()), 1..60)) {
        let mut latest = Latest::new(10);
        for (time_ns, value) in &readings {
            latest.observe("park", &event("p", "s", &[("v", FieldValue::I64(*value))]), *time_ns);
        }
        let newest = readings.iter().map(|(time, _)| *time).max().unwrap();
        let expected = readings.iter().rev().find(|(time, _)| *time == newest).unwrap().1;
        let state = latest.query("park", Some("fence"), &[]);
        prop_assert_eq!(&state[0].field("v").unwrap().value, &FieldValue::I64(expected));
        prop_assert_eq!(state[0].field("v").unwrap().time_ns, newest);
    }
}
