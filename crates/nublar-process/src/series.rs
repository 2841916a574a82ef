//! A series' canonical name: its tag set sorted by key, as line protocol writes a tag set, so
//! that the same tags sent in any order name the same series; and its digest, the same
//! identity in 128 bits, which the processors key their state by so that an event finds its
//! series without building the name.

use nublar_model::Tag;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed, xxh3_128_with_seed};

/// A hasher for keys that are digests already: their low 64 bits are the hash, so a map
/// keyed by digests spends nothing hashing them again.
#[derive(Clone, Copy, Default)]
pub struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached for keys other than u128; fold them in so it still hashes.
        for byte in bytes {
            self.0 = self.0.rotate_left(5) ^ u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u128(&mut self, digest: u128) {
        self.0 = digest as u64;
    }
}

/// Builds [`DigestHasher`]s.
pub type ByDigest = std::hash::BuildHasherDefault<DigestHasher>;

/// The series of `measurement` with `tags` in database `db`, in 128 bits: equal for the same
/// tags in any order, different otherwise but with a chance of about 2^-100 for a park's
/// series. XXH3 is specified, so a snapshot written by one build is read right by the next.
pub fn series_digest(db: &str, measurement: &str, tags: &[Tag<'_>]) -> u128 {
    // Each pair hashed on its own (the value seeded by the key's hash) and the pairs summed:
    // a sum does not depend on the order, and unlike a xor a pair cannot cancel another.
    let pairs = tags.iter().fold(0u128, |sum, tag| {
        let key = xxh3_64(tag.key.as_bytes());
        sum.wrapping_add(xxh3_128_with_seed(tag.value.as_bytes(), key))
    });
    let head = xxh3_64_with_seed(measurement.as_bytes(), xxh3_64(db.as_bytes()));
    xxh3_128_with_seed(&pairs.to_le_bytes(), head)
}

/// `key=value` pairs sorted by key and joined by commas, with `,`, `=`, space and backslash
/// escaped by a backslash in keys and values: two tag sets get the same name exactly when
/// they hold the same pairs. An empty tag set is the empty string.
pub fn canonical_series(tags: &[Tag<'_>]) -> String {
    let mut sorted: Vec<&Tag<'_>> = tags.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    let mut out = String::new();
    for (index, tag) in sorted.into_iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        escape_into(&mut out, &tag.key);
        out.push('=');
        escape_into(&mut out, &tag.value);
    }
    out
}

fn escape_into(out: &mut String, text: &str) {
    for character in text.chars() {
        if matches!(character, ',' | '=' | ' ' | '\\') {
            out.push('\\');
        }
        out.push(character);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(key: &'static str, value: &'static str) -> Tag<'static> {
        Tag {
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn the_order_sent_does_not_matter_and_separators_are_escaped() {
        let one = canonical_series(&[tag("station", "ws-1"), tag("habitat", "dry land")]);
        let two = canonical_series(&[tag("habitat", "dry land"), tag("station", "ws-1")]);
        assert_eq!(one, "habitat=dry\\ land,station=ws-1");
        assert_eq!(one, two);
        // Without escapes these two would read the same.
        assert_ne!(
            canonical_series(&[tag("a", "b,c=d")]),
            canonical_series(&[tag("a", "b"), tag("c", "d")])
        );
        assert_eq!(canonical_series(&[]), "");
    }

    #[test]
    fn a_digest_names_the_same_series_whatever_the_order_and_tells_others_apart() {
        let tags = [tag("station", "ws-1"), tag("habitat", "dry land")];
        let swapped = [tag("habitat", "dry land"), tag("station", "ws-1")];
        let digest = series_digest("park", "weather", &tags);
        assert_eq!(digest, series_digest("park", "weather", &swapped));
        assert_ne!(digest, series_digest("park2", "weather", &tags));
        assert_ne!(digest, series_digest("park", "weather2", &tags));
        assert_ne!(digest, series_digest("park", "weather", &tags[..1]));
        // A key and a value trading places, or a tag repeated, is another series.
        assert_ne!(
            series_digest("park", "m", &[tag("a", "b")]),
            series_digest("park", "m", &[tag("b", "a")])
        );
        assert_ne!(
            series_digest("park", "m", &[tag("a", "b")]),
            series_digest("park", "m", &[tag("a", "b"), tag("a", "b")])
        );
        assert_ne!(
            series_digest("park", "m", &[tag("ab", "")]),
            series_digest("park", "m", &[tag("a", "b")])
        );
    }
}
