//! Names as sent, and names as stored.
//!
//! Line protocol allows almost any text in a measurement, tag key or field key: spaces, commas,
//! `=`, `/`, upper case, any Unicode. A directory cannot hold `/` or be `..`; a Delta column
//! without column mapping cannot hold ` ,;{}()\n\t=`, and Delta compares column names without
//! regard to case, so `Temp` and `temp` would collide. (Delta's own column mapping would solve
//! the columns, but delta-rs cannot append to, compact, or add columns to such tables.)
//!
//! So every name is stored in a form made of `[a-z0-9_-]` and `~`: those characters stand for
//! themselves, and every other byte of the name's UTF-8 is written as `~` and two lower-case hex
//! digits. `temp_c` stays `temp_c`, `Temp C` becomes `~54emp~20~43`, `a/b` becomes `a~2fb`.
//! The mapping is one to one, so [`decode`] gives back the name as sent, which is what queries
//! use; and since upper case is always escaped, two stored names that differ only in case
//! cannot arise.

/// The stored form of a name as sent.
pub fn encode(name: &str) -> String {
    let mut stored = String::with_capacity(name.len());
    for byte in name.bytes() {
        if kept(byte) {
            stored.push(char::from(byte));
        } else {
            stored.push('~');
            stored.push(hex_digit(byte >> 4));
            stored.push(hex_digit(byte & 0x0f));
        }
    }
    stored
}

/// The name as sent for a stored form; `None` for text [`encode`] cannot have produced.
pub fn decode(stored: &str) -> Option<String> {
    let bytes = stored.as_bytes();
    let mut name = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let byte = bytes[at];
        if byte == b'~' {
            let high = hex_value(*bytes.get(at + 1)?)?;
            let low = hex_value(*bytes.get(at + 2)?)?;
            let decoded = (high << 4) | low;
            // A kept byte written escaped is not what `encode` writes; refusing it keeps the
            // mapping one to one.
            if kept(decoded) {
                return None;
            }
            name.push(decoded);
            at += 3;
        } else if kept(byte) {
            name.push(byte);
            at += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(name).ok()
}

fn kept(byte: u8) -> bool {
    matches!(byte, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-')
}

fn hex_digit(value: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(value)])
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_stay_and_others_are_escaped() {
        assert_eq!(encode("temp_c"), "temp_c");
        assert_eq!(encode("wind-ms"), "wind-ms");
        assert_eq!(encode("Temp C"), "~54emp~20~43");
        assert_eq!(encode("a/b"), "a~2fb");
        assert_eq!(encode(".."), "~2e~2e");
        assert_eq!(encode("x=1,y"), "x~3d1~2cy");
        assert_eq!(encode("~"), "~7e");
        assert_eq!(encode("é"), "~c3~a9");
    }

    #[test]
    fn decoding_gives_back_the_name_as_sent() {
        for name in [
            "temp_c",
            "Temp C",
            "a/b",
            "..",
            "x=1,y;{}()\n\t",
            "~~",
            "é 🦒",
            "_agg_1m",
        ] {
            assert_eq!(decode(&encode(name)).as_deref(), Some(name), "{name:?}");
        }
    }

    #[test]
    fn names_that_differ_only_in_case_stay_apart() {
        assert_ne!(encode("Temp").to_lowercase(), encode("temp").to_lowercase());
    }

    #[test]
    fn text_encode_cannot_produce_is_refused() {
        for stored in ["A", "a b", "~", "~4", "~zz", "~61", "~ff", "a.b"] {
            assert_eq!(decode(stored), None, "{stored:?}");
        }
    }
}
