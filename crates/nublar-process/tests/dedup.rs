//! Duplicate removal against a model that remembers every event it let through.

use std::collections::HashSet;

use nublar_model::{Field, FieldValue, ParsedLine, Tag};
use nublar_process::dedup::{Dedup, DedupConfig, Seen};
use proptest::prelude::*;

const SECOND: i64 = 1_000_000_000;
const WINDOW: i64 = 30 * SECOND;

#[derive(Clone, Debug)]
struct Sent {
    time_ns: i64,
    station: u8,
    value: u8,
    tags_reversed: bool,
}

fn event(sent: &Sent) -> ParsedLine<'static> {
    let mut tags = vec![
        Tag {
            key: "habitat".into(),
            value: "dry".into(),
        },
        Tag {
            key: "station".into(),
            value: format!("ws-{}", sent.station).into(),
        },
    ];
    if sent.tags_reversed {
        tags.reverse();
    }
    ParsedLine {
        measurement: "weather".into(),
        tags,
        fields: vec![Field {
            key: "temp_c".into(),
            value: FieldValue::F64(f64::from(sent.value)),
        }],
        timestamp_ns: None,
    }
}

fn sends() -> impl Strategy<Value = Vec<Sent>> {
    prop::collection::vec((0i64..8, -60i64..3, 0u8..2, 0u8..2, any::<bool>()), 1..300).prop_map(
        |steps| {
            let mut time_ns = 0i64;
            steps
                .into_iter()
                .map(|(forward, back, station, value, tags_reversed)| {
                    time_ns += forward * SECOND;
                    Sent {
                        time_ns: if back < 0 {
                            time_ns + back * SECOND
                        } else {
                            time_ns
                        },
                        station,
                        value,
                        tags_reversed,
                    }
                })
                .collect()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn decisions_equal_the_model(sends in sends()) {
        let mut dedup = Dedup::new(DedupConfig { window_ns: WINDOW, keys_max: usize::MAX });
        let mut passed: HashSet<(i64, u8, u8)> = HashSet::new();
        let mut watermark: Option<i64> = None;
        let mut duplicates = 0;
        for sent in &sends {
            let expected = if watermark.is_some_and(|w| sent.time_ns < w - WINDOW) {
                Seen::TooOldToCheck
            } else if passed.contains(&(sent.time_ns, sent.station, sent.value)) {
                duplicates += 1;
                Seen::Duplicate
            } else {
                passed.insert((sent.time_ns, sent.station, sent.value));
                watermark = Some(watermark.map_or(sent.time_ns, |w| w.max(sent.time_ns)));
                Seen::New
            };
            prop_assert_eq!(dedup.check("park", &event(sent), sent.time_ns), expected, "{:?}", sent);
        }
        prop_assert_eq!(dedup.counters().duplicates, duplicates);
        // Only what the window still covers is remembered.
        let horizon = watermark.unwrap() - WINDOW;
        let covered = passed.iter().filter(|(time, _, _)| *time >= horizon).count();
        prop_assert_eq!(dedup.keys(), covered);
    }

    #[test]
    fn memory_stays_within_the_bound(sends in sends(), keys_max in 0usize..8) {
        let mut dedup = Dedup::new(DedupConfig { window_ns: WINDOW, keys_max });
        for sent in &sends {
            dedup.check("park", &event(sent), sent.time_ns);
            prop_assert!(dedup.keys() <= keys_max);
        }
    }
}

#[test]
fn databases_fields_and_values_tell_events_apart() {
    let mut dedup = Dedup::new(DedupConfig::default());
    let sent = Sent {
        time_ns: 5 * SECOND,
        station: 1,
        value: 1,
        tags_reversed: false,
    };
    assert_eq!(dedup.check("park", &event(&sent), sent.time_ns), Seen::New);
    assert_eq!(dedup.check("zoo", &event(&sent), sent.time_ns), Seen::New);
    let mut integer = event(&sent);
    integer.fields[0].value = FieldValue::I64(1);
    assert_eq!(dedup.check("park", &integer, sent.time_ns), Seen::New);
    let mut renamed = event(&sent);
    renamed.fields[0].key = "temp_f".into();
    assert_eq!(dedup.check("park", &renamed, sent.time_ns), Seen::New);
    assert_eq!(
        dedup.check("park", &event(&sent), sent.time_ns + 1),
        Seen::New
    );
    let reversed = Sent {
        tags_reversed: true,
        ..sent
    };
    assert_eq!(
        dedup.check("park", &event(&reversed), sent.time_ns),
        Seen::Duplicate
    );
    assert_eq!(dedup.counters().duplicates, 1);
}
