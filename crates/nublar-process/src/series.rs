//! A series' canonical name: its tag set sorted by key, as line protocol writes a tag set, so
//! that the same tags sent in any order name the same series.

use nublar_model::Tag;

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
}
