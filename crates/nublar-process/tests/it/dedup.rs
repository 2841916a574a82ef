//! Duplicate removal against a model that remembers every event it let through.

use std::collections::{HashMap, HashSet};

use nublar_model::{Field, FieldValue, ParsedLine, Tag};
use nublar_process::dedup::{Dedup, DedupConfig, Seen};
use proptest::prelude::*;

const SECOND: i64 = 1_000_000_000;
// Slices (a 256th of the window) of 125 ms.
const WINDOW: i64 = 32 * SECOND;

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
                    // Off the whole second by a number of slices, so that slices of one
                    // window's length start inside another's, and the oldest slice held
                    // often ends right at the window's edge.
                    time_ns += forward * SECOND + (forward % 4) * (WINDOW / 256);
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
        // Only what the window still covers is remembered, forgotten a slice at a time.
        let horizon = watermark.unwrap() - WINDOW;
        let slice = WINDOW / 256;
        let kept = |time: i64| time - time.rem_euclid(slice) + slice > horizon;
        let covered = passed.iter().filter(|(time, _, _)| kept(*time)).count();
        prop_assert_eq!(dedup.keys(), covered);
    }

    /// A node restarted with another window keeps the slices it made under the old one and
    /// makes new ones of the new length between them. Digests the old window had passed may
    /// be forgotten already when a longer one would cover them again: for those either
    /// answer is right; every other decision is the model's.
    #[test]
    fn decisions_stay_right_when_the_window_changes(
        sends in sends(),
        at in 0usize..300,
        seconds in prop::sample::select(vec![1i64, 5, 8, 45, 64]),
    ) {
        let mut dedup = Dedup::new(DedupConfig { window_ns: WINDOW, keys_max: usize::MAX });
        // Each event let through, and whether a horizon has passed it since.
        let mut passed: HashMap<(i64, u8, u8), bool> = HashMap::new();
        let mut watermark: Option<i64> = None;
        let mut window = WINDOW;
        for (index, sent) in sends.iter().enumerate() {
            if index == at {
                window = seconds * SECOND;
                dedup = dedup.with_config(DedupConfig { window_ns: window, keys_max: usize::MAX });
            }
            let key = (sent.time_ns, sent.station, sent.value);
            let got = dedup.check("park", &event(sent), sent.time_ns);
            if watermark.is_some_and(|w| sent.time_ns < w - window) {
                prop_assert_eq!(got, Seen::TooOldToCheck, "{:?}", sent);
                continue;
            }
            match passed.get(&key) {
                Some(false) => prop_assert_eq!(got, Seen::Duplicate, "{:?}", sent),
                Some(true) => prop_assert_ne!(got, Seen::TooOldToCheck, "{:?}", sent),
                None => prop_assert_eq!(got, Seen::New, "{:?}", sent),
            }
            if got == Seen::New {
                watermark = Some(watermark.map_or(sent.time_ns, |w| w.max(sent.time_ns)));
                let horizon = watermark.unwrap() - window;
                for (key, behind) in passed.iter_mut() {
                    *behind |= key.0 < horizon;
                }
            }
            passed.insert(key, false);
        }
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
/// A longer window's slice would start inside one of the old window's: it starts where
/// that one ends, and what that one holds is still found.
#[test]
fn a_longer_window_keeps_what_the_old_slices_hold() {
    let mut dedup = Dedup::new(DedupConfig {
        window_ns: WINDOW,
        keys_max: usize::MAX,
    });
    let at = |time_ns: i64| Sent {
        time_ns,
        station: 0,
        value: 0,
        tags_reversed: false,
    };
    let slice = WINDOW / 256;
    let first = 4 * slice + slice / 2;
    assert_eq!(dedup.check("park", &event(&at(first)), first), Seen::New);
    // Slices twice as long: the one for `later` would start with `first`'s.
    dedup = dedup.with_config(DedupConfig {
        window_ns: 2 * WINDOW,
        keys_max: usize::MAX,
    });
    let later = first + slice;
    assert_eq!(dedup.check("park", &event(&at(later)), later), Seen::New);
    assert_eq!(
        dedup.check("park", &event(&at(first)), first),
        Seen::Duplicate
    );
    assert_eq!(
        dedup.check("park", &event(&at(later)), later),
        Seen::Duplicate
    );
    assert_eq!(dedup.keys(), 2);
}
