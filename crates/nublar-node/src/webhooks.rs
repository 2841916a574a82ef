//! Alert webhooks: every record of the `_alerts` topic POSTed as JSON to each configured URL,
//! read as the consumer group `webhooks`.
//!
//! A delivery that fails (no connection, a time-out, any answer but 2xx) is tried again after a
//! backoff that doubles up to a bound, `tries` times in all; one that still fails becomes a dead
//! letter (`_dead_letters`, reason `webhook_failed`, the alert as `raw`, the last error as
//! `message`). The group commits after each read's alerts were delivered or dead-lettered, so a
//! node that stops in between sends those alerts again when it starts: delivery is at least
//! once, and each request carries `Nublar-Alert-Id` (`_alerts/<partition>/<offset>`, the same
//! on every try and after a restart) for the receiver to drop a repeat. `http://` and `https://`
//! URLs, through [`nublar_client`]; an HTTPS receiver with a certificate of the park's own CA
//! is trusted through `ca_file`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use nublar_bus::{BatchBuilder, Bus, Compression, Start};
use serde::Deserialize;
use tokio::sync::watch;

/// The consumer group the webhooks read `_alerts` as.
pub const GROUP: &str = "webhooks";

/// `[processors.alerts.webhooks]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksSection {
    /// `http://host[:port]/path` or `https://…` of each receiver; none: no webhooks.
    pub urls: Vec<String>,
    pub tries: u32,
    pub backoff_first_ms: u64,
    pub backoff_max_ms: u64,
    pub timeout_ms: u64,
    /// PEM certificates to trust for `https://` receivers instead of the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for WebhooksSection {
    fn default() -> WebhooksSection {
        WebhooksSection {
            urls: Vec::new(),
            tries: 5,
            backoff_first_ms: 500,
            backoff_max_ms: 10_000,
            timeout_ms: 5_000,
            ca_file: None,
        }
    }
}

/// A receiver's address, as parsed from its URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    host: String,
    port: u16,
    path: String,
}

impl Target {
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let (rest, default_port) = match (url.strip_prefix("http://"), url.strip_prefix("https://"))
        {
            (Some(rest), _) => (rest, 80),
            (_, Some(rest)) => (rest, 443),
            _ => anyhow::bail!("webhook {url:?}: expected an http:// or https:// URL"),
        };
        let (authority, path) = match rest.find('/') {
            Some(index) => (&rest[..index], &rest[index..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            // An IPv6 address in brackets, with or without a port.
            _ if authority.starts_with('[') && authority.ends_with(']') => {
                (authority, default_port)
            }
            Some((host, port)) => (
                host,
                port.parse()
                    .with_context(|| format!("webhook {url:?}: bad port {port:?}"))?,
            ),
            None => (authority, default_port),
        };
        anyhow::ensure!(!host.is_empty(), "webhook {url:?}: no host");
        Ok(Target {
            url: url.to_owned(),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            path: path.to_owned(),
        })
    }
}

/// How the webhooks run, checked.
#[derive(Clone, Debug)]
pub struct Webhooks {
    pub targets: Vec<Target>,
    pub tries: u32,
    pub backoff_first: Duration,
    pub backoff_max: Duration,
    pub timeout: Duration,
    /// Sends every delivery, keeping connections to the receivers.
    pub client: nublar_client::Client,
}

impl WebhooksSection {
    /// `None` when no URL is configured.
    pub fn webhooks(&self) -> anyhow::Result<Option<Webhooks>> {
        if self.urls.is_empty() {
            return Ok(None);
        }
        anyhow::ensure!(
            (1..=100).contains(&self.tries),
            "processors.alerts.webhooks.tries must be from 1 to 100"
        );
        anyhow::ensure!(
            self.timeout_ms > 0 && self.backoff_first_ms <= self.backoff_max_ms,
            "processors.alerts.webhooks: timeout_ms must be at least 1 and backoff_first_ms at most backoff_max_ms"
        );
        Ok(Some(Webhooks {
            targets: self
                .urls
                .iter()
                .map(|url| Target::parse(url))
                .collect::<anyhow::Result<_>>()?,
            tries: self.tries,
            backoff_first: Duration::from_millis(self.backoff_first_ms),
            backoff_max: Duration::from_millis(self.backoff_max_ms),
            timeout: Duration::from_millis(self.timeout_ms),
            client: nublar_client::Client::new(nublar_client::ClientOptions {
                timeout: Duration::from_millis(self.timeout_ms),
                ca_file: self.ca_file.clone(),
                // A receiver's answer is read to its end and not kept.
                body_bytes_max: 1 << 20,
                ..nublar_client::ClientOptions::default()
            })
            .context("processors.alerts.webhooks")?,
        }))
    }
}

/// What the webhooks have done, for `/metrics`.
#[derive(Debug, Default)]
pub struct WebhookCounters {
    pub delivered: AtomicU64,
    /// Tries that failed and were tried again.
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
}

impl WebhookCounters {
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        for (name, value) in [
            ("nublar_webhook_deliveries_total", &self.delivered),
            ("nublar_webhook_retries_total", &self.retried),
            ("nublar_webhook_dead_letters_total", &self.dead_lettered),
        ] {
            out.push_str(&format!(
                "# TYPE {name} counter\n{name} {}\n",
                value.load(Ordering::Relaxed)
            ));
        }
        out
    }
}

/// Fixes where the group starts on each partition of `_alerts` it has never read: the topic's
/// end, so that alerts from before webhooks were configured are not sent. Called before the
/// processors run, so that every alert they raise from then on is sent.
pub async fn prepare(bus: &Arc<dyn Bus>) -> anyhow::Result<()> {
    let topic = nublar_process::runner::ALERTS_TOPIC;
    bus.require_group(GROUP, topic).await?;
    for partition in 0..bus.partitions(topic).await? {
        if bus.committed(GROUP, topic, partition).await?.is_none() {
            let end = bus.offsets(topic, partition).await?.end;
            bus.commit(GROUP, &[(topic, partition, end)]).await?;
        }
    }
    Ok(())
}

/// Delivers the alerts of every partition of `_alerts` until `stop`, from where [`prepare`]
/// (called first) or the last commit left the group.
pub async fn run(
    bus: Arc<dyn Bus>,
    webhooks: Webhooks,
    counters: Arc<WebhookCounters>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let topic = nublar_process::runner::ALERTS_TOPIC;
    let partitions = bus.partitions(topic).await?;
    let webhooks = Arc::new(webhooks);
    let mut tasks = tokio::task::JoinSet::new();
    for partition in 0..partitions {
        let (bus, webhooks, counters, mut stop) = (
            bus.clone(),
            webhooks.clone(),
            counters.clone(),
            stop.clone(),
        );
        tasks.spawn(async move {
            loop {
                match partition_loop(&bus, &webhooks, &counters, partition, &mut stop).await {
                    Ok(()) => return,
                    Err(error) => {
                        tracing::warn!(%error, partition, "webhooks: reading again in a second");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = stop.wait_for(|stopped| *stopped) => return,
                        }
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn partition_loop(
    bus: &Arc<dyn Bus>,
    webhooks: &Webhooks,
    counters: &WebhookCounters,
    partition: u32,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let topic = nublar_process::runner::ALERTS_TOPIC;
    let range = bus.offsets(topic, partition).await?;
    let mut position = bus
        .committed(GROUP, topic, partition)
        .await?
        .context("the webhooks' group has no start on this partition")?
        .max(range.start);
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let batches = bus
            .read(topic, partition, Start::Offset(position), 1 << 20)
            .await?;
        let Some(next) = batches.next_offset() else {
            tokio::select! {
                _ = bus.wait(topic, partition, position, Duration::from_secs(1)) => {}
                _ = stop.changed() => {}
            }
            continue;
        };
        for view in batches.iter() {
            let records = view.records()?;
            for record in records.iter() {
                let record = record?;
                if record.offset < position {
                    continue;
                }
                let id = format!("{topic}/{partition}/{}", record.offset);
                for target in &webhooks.targets {
                    deliver(bus, webhooks, counters, target, &id, record.value).await?;
                }
            }
        }
        position = next;
        bus.commit(GROUP, &[(topic, partition, position)]).await?;
    }
}

/// Sends one alert to one receiver, trying again with backoff; a dead letter when every try
/// failed.
async fn deliver(
    bus: &Arc<dyn Bus>,
    webhooks: &Webhooks,
    counters: &WebhookCounters,
    target: &Target,
    id: &str,
    alert: &[u8],
) -> anyhow::Result<()> {
    let mut backoff = webhooks.backoff_first;
    let mut last_error = String::new();
    for attempt in 1..=webhooks.tries {
        match tokio::time::timeout(webhooks.timeout, post(&webhooks.client, target, id, alert))
            .await
        {
            Ok(Ok(())) => {
                counters.delivered.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Ok(Err(error)) => last_error = error,
            Err(_) => last_error = format!("no answer within {:?}", webhooks.timeout),
        }
        if attempt < webhooks.tries {
            counters.retried.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(webhooks.backoff_max);
        }
    }
    tracing::warn!(
        url = target.url,
        id,
        error = last_error,
        "webhook failed; alert sent to the dead letters"
    );
    let db = serde_json::from_slice::<serde_json::Value>(alert)
        .ok()
        .and_then(|alert| alert["db"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let letter = serde_json::json!({
        "db": db,
        "line_number": 0,
        "reason": "webhook_failed",
        "message": format!("{} after {} tries: {last_error}", target.url, webhooks.tries),
        "raw": String::from_utf8_lossy(alert),
        "sender": "",
        "received_ns": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as i64),
    });
    // Keyed by the alert and the receiver, so a dead letter written before a restart is not
    // written again.
    let mut builder = BatchBuilder::new(Compression::Lz4).batch_key(
        &format!("{GROUP}/{id}/{}", target.url)
            .chars()
            .take(200)
            .collect::<String>(),
    )?;
    builder.push(None, letter.to_string().as_bytes(), &[]);
    bus.append(nublar_ingest::DEAD_LETTERS_TOPIC, 0, builder.finish()?)
        .await?;
    counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

async fn post(
    client: &nublar_client::Client,
    target: &Target,
    id: &str,
    alert: &[u8],
) -> Result<(), String> {
    let answer = client
        .post(&target.url)
        .header("content-type", "application/json")
        .header("nublar-alert-id", id)
        .body(alert.to_vec())
        .send()
        .await
        .map_err(|error| error.to_string())?;
    if answer.status.is_success() {
        Ok(())
    } else {
        Err(format!("answered {}", answer.status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_host_port_and_path() {
        let target = Target::parse("http://127.0.0.1:9000/hooks/park").unwrap();
        assert_eq!(
            (target.host.as_str(), target.port, target.path.as_str()),
            ("127.0.0.1", 9000, "/hooks/park")
        );
        let target = Target::parse("http://[::1]:81").unwrap();
        assert_eq!(
            (target.host.as_str(), target.port, target.path.as_str()),
            ("::1", 81, "/")
        );
        let target = Target::parse("http://alerts.park").unwrap();
        assert_eq!((target.host.as_str(), target.port), ("alerts.park", 80));
        let target = Target::parse("https://alerts.park/hooks").unwrap();
        assert_eq!((target.host.as_str(), target.port), ("alerts.park", 443));
        assert!(Target::parse("ftp://alerts.park").is_err());
        assert!(Target::parse("http://:80/").is_err());
        assert!(Target::parse("http://host:port/").is_err());
    }
}
