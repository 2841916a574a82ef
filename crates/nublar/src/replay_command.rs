//! `nublar replay`: a processor's outputs again from a past position, asked of the node
//! running on the data directory, or computed from the log when none runs there.

use std::path::{Path, PathBuf};

use anyhow::Context;
use nublar_node::processors::{REPLAY_PATH, ReplayRequest, replayed_outputs, run_replay};

/// `nublar replay --processor NAME (--from-offset [P:]N… | --from-time T)`
#[derive(clap::Args)]
pub struct ReplayArgs {
    /// duplicates, windows or alerts.
    #[arg(long)]
    processor: String,
    /// Start at offset N of partition P (repeatable); a bare N starts every partition there.
    #[arg(
        long = "from-offset",
        value_name = "[P:]N",
        conflicts_with = "from_time"
    )]
    from_offsets: Vec<String>,
    /// Start at the first record each partition took at or after this time: RFC 3339 in UTC
    /// (2026-11-26T17:00:00Z) or seconds since the epoch.
    #[arg(long)]
    from_time: Option<String>,
    /// Items printed at most.
    #[arg(long, default_value_t = 100_000)]
    limit: u64,
    /// The node's TOML configuration, for the rules when no node runs on the directory.
    #[arg(long, env = "NUBLAR_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    target: nublar_node::log_command::NodeTarget,
}

/// Asks the node on `data` to replay, or replays from the log itself when no node runs there.
pub fn run_replay_command(data: &Path, args: ReplayArgs) -> anyhow::Result<()> {
    replayed_outputs(&args.processor)?;
    let from_offsets = args
        .from_offsets
        .iter()
        .map(|text| parse_from_offset(text))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let from_time_ms = args.from_time.as_deref().map(parse_time_ms).transpose()?;
    anyhow::ensure!(
        from_offsets.is_empty() != from_time_ms.is_none(),
        "give either --from-offset (repeatable) or --from-time"
    );
    let request = ReplayRequest {
        processor: args.processor.clone(),
        from_offsets,
        from_time_ms,
        limit: args.limit,
    };
    let text = if args.target.remote() || nublar_node::log_command::node_owns(data) {
        nublar_node::log_command::post_to_node(
            data,
            &args.target,
            REPLAY_PATH,
            &serde_json::to_vec(&request)?,
        )?
    } else {
        let node = nublar_node::config::NodeConfig::load(args.config.as_deref())?;
        let runner = node
            .processors
            .runner(data)?
            .context("the processors are off in this configuration")?;
        let log = nublar_log::Log::open_with(
            data.join("log"),
            nublar_log::OpenOptions {
                read_only: true,
                background: false,
                ..nublar_log::OpenOptions::default()
            },
        )
        .with_context(|| format!("opening the log in {}", data.join("log").display()))?;
        let bus = nublar_bus_embedded::EmbeddedBus::new(log).into_shared();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(run_replay(&bus, &runner.pipeline, &request))?
    };
    print!("{text}");
    Ok(())
}

/// `P:N` or `N`.
fn parse_from_offset(text: &str) -> anyhow::Result<(Option<u32>, i64)> {
    let bad = || format!("--from-offset {text:?}: expected PARTITION:OFFSET or OFFSET");
    match text.split_once(':') {
        Some((partition, offset)) => Ok((
            Some(partition.parse().with_context(bad)?),
            offset.parse().with_context(bad)?,
        )),
        None => Ok((None, text.parse().with_context(bad)?)),
    }
}

/// RFC 3339 in UTC (`2026-11-26T17:00:00Z`, fractions of a second allowed) or seconds since
/// the epoch, to milliseconds since the epoch.
fn parse_time_ms(text: &str) -> anyhow::Result<i64> {
    if let Ok(seconds) = text.parse::<f64>() {
        anyhow::ensure!(
            seconds.is_finite() && seconds >= 0.0,
            "--from-time {text:?} is negative"
        );
        return Ok((seconds * 1000.0) as i64);
    }
    let bad = || {
        anyhow::anyhow!(
            "--from-time {text:?}: expected 2026-11-26T17:00:00Z or seconds since the epoch"
        )
    };
    let rest = text.strip_suffix('Z').ok_or_else(bad)?;
    let (date, time) = rest.split_once('T').ok_or_else(bad)?;
    let numbers = |part: &str, sep: char| -> Option<Vec<f64>> {
        part.split(sep).map(|n| n.parse::<f64>().ok()).collect()
    };
    let (Some(date), Some(time)) = (numbers(date, '-'), numbers(time, ':')) else {
        return Err(bad());
    };
    let (&[year, month, day], &[hour, minute, second]) = (date.as_slice(), time.as_slice()) else {
        return Err(bad());
    };
    anyhow::ensure!(
        (1.0..=12.0).contains(&month)
            && (1.0..=31.0).contains(&day)
            && hour < 24.0
            && minute < 60.0
            && second < 61.0,
        "--from-time {text:?} is not a time"
    );
    // Days from 1970-01-01 to the civil date, counting in 400-year eras from 0000-03-01.
    let (year, month, day) = (year as i64, month as i64, day as i64);
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Ok(days * 86_400_000 + ((hour * 3600.0 + minute * 60.0 + second) * 1000.0) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_starts_are_read_as_operators_write_them() {
        assert_eq!(parse_from_offset("3:120").unwrap(), (Some(3), 120));
        assert_eq!(parse_from_offset("120").unwrap(), (None, 120));
        assert!(parse_from_offset("x:1").is_err());
        assert_eq!(
            parse_time_ms("2026-11-26T17:23:20.123Z").unwrap(),
            1_795_713_800_123
        );
        assert_eq!(
            parse_time_ms("2000-02-29T00:00:00Z").unwrap(),
            951_782_400_000
        );
        assert_eq!(parse_time_ms("1795713800").unwrap(), 1_795_713_800_000);
        for bad in ["2026-13-01T00:00:00Z", "2026-11-26 17:00:00", "yesterday"] {
            assert!(parse_time_ms(bad).is_err(), "{bad}");
        }
    }
}
