//! `nublar latest`: the latest reading of each series, asked of the node running on the data
//! directory.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use nublar_node::processors::{LATEST_LIMIT_DEFAULT, LATEST_PATH};

/// `nublar latest [--measurement M] [--tag KEY=VALUE]…`
#[derive(clap::Args)]
pub struct LatestArgs {
    /// The database to look in.
    #[arg(long, default_value = nublar_node::query_command::DEFAULT_DB)]
    db: String,
    /// Only series of this measurement.
    #[arg(long)]
    measurement: Option<String>,
    /// Only series with this tag value (repeatable: all must match).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    tags: Vec<String>,
    /// Series shown at most.
    #[arg(long, default_value_t = LATEST_LIMIT_DEFAULT)]
    limit: usize,
    /// table, or json (the node's answer as it is).
    #[arg(long, default_value = "table")]
    format: String,
    #[command(flatten)]
    target: nublar_node::log_command::NodeTarget,
}

/// Asks the node running on `data` for the latest readings and prints them.
pub fn run_latest(data: &Path, args: LatestArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        matches!(args.format.as_str(), "table" | "json"),
        "--format must be table or json"
    );
    let mut query = vec![("db".to_owned(), args.db.clone())];
    if let Some(measurement) = &args.measurement {
        query.push(("measurement".into(), measurement.clone()));
    }
    for tag in &args.tags {
        let (key, value) = tag
            .split_once('=')
            .with_context(|| format!("--tag {tag:?} is not KEY=VALUE"))?;
        anyhow::ensure!(
            !matches!(key, "db" | "measurement" | "limit"),
            "--tag {key}: that name is a parameter of the query; it cannot be a tag here"
        );
        query.push((key.to_owned(), value.to_owned()));
    }
    query.push(("limit".into(), args.limit.to_string()));
    let path = format!("{LATEST_PATH}?{}", encode_query(&query));
    let text = nublar_node::log_command::ask_node_with(data, &args.target, "GET", &path, b"")?;
    if args.format == "json" {
        println!("{}", text.trim());
        return Ok(());
    }
    let answer: serde_json::Value =
        serde_json::from_str(&text).context("reading the node's answer")?;
    print!("{}", render_latest(&answer));
    Ok(())
}

fn encode_query(pairs: &[(String, String)]) -> String {
    let encode = |text: &str| {
        let mut out = String::new();
        for byte in text.bytes() {
            if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
                out.push(byte as char);
            } else {
                let _ = write!(out, "%{byte:02X}");
            }
        }
        out
    };
    pairs
        .iter()
        .map(|(key, value)| format!("{}={}", encode(key), encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

/// One line per field: measurement, series, field, value, and the reading's time (UTC).
fn render_latest(answer: &serde_json::Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:<48} {:<14} {:>20} TIME",
        "MEASUREMENT", "SERIES", "FIELD", "VALUE"
    );
    let mut lines = 0;
    for series in answer["series"].as_array().into_iter().flatten() {
        for (field, reading) in series["fields"].as_object().into_iter().flatten() {
            lines += 1;
            let time = reading["time_ns"].as_i64().map_or("-".into(), utc_text);
            let _ = writeln!(
                out,
                "{:<12} {:<48} {:<14} {:>20} {}",
                series["measurement"].as_str().unwrap_or(""),
                series["series"].as_str().unwrap_or(""),
                field,
                reading["value"].to_string(),
                time
            );
        }
    }
    if answer["truncated"] == true {
        let _ = writeln!(
            out,
            "(more series match: ask with a larger --limit or a narrower query)"
        );
    } else if lines == 0 {
        let _ = writeln!(out, "(no series match)");
    }
    out
}

/// `2026-11-26T17:23:20.123Z` for nanoseconds since the epoch.
pub fn utc_text(ns: i64) -> String {
    let seconds = ns.div_euclid(1_000_000_000);
    let millis = ns.rem_euclid(1_000_000_000) / 1_000_000;
    let (days, second_of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date, counting in 400-year eras from 0000-03-01.
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_utc() {
        assert_eq!(utc_text(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            utc_text(1_795_713_800_123_000_000),
            "2026-11-26T17:23:20.123Z"
        );
        assert_eq!(
            utc_text(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(utc_text(-1_000_000), "1969-12-31T23:59:59.999Z");
    }
}
