//! An Idempotency-Key means one request: stored once from any address,
//! refused for another request, refused while its first request is still
//! being handled, remembered across a restart, and pushed out only by its own
//! owner's keys.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::{Node, Reply, node_on, request, start_in, start_on_bus, topic_values};
use nublar_bus::{
    AppendOutcome, Batch, Bus, BusError, OffsetRange, ReadBatches, RememberedKey, Start,
    TopicConfig,
};
use nublar_bus_embedded::EmbeddedBus;
use nublar_ingest::{AccessConfig, IdempotencyConfig, IngestConfig, TELEMETRY_TOPIC, Token};

const TARGET: &str = "/api/v3/write_lp?db=park";

/// Behind a proxy on loopback that the node trusts, so a test can send from
/// any address it names.
fn config() -> IngestConfig {
    IngestConfig {
        partitions: 8,
        access: AccessConfig {
            trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()],
            ..AccessConfig::default()
        },
        ..IngestConfig::default()
    }
}

async fn send(node: &Node, from: &str, key: &str, body: &str) -> Reply {
    request(
        node.http,
        "POST",
        TARGET,
        &[("X-Forwarded-For", from), ("Idempotency-Key", key)],
        body.as_bytes(),
    )
    .await
}

async fn telemetry(node: &Node) -> Vec<String> {
    topic_values(&node.bus, TELEMETRY_TOPIC).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_stored_once_from_every_address_and_refused_for_another_request() {
    let node = node_on("127.0.0.1:0", config()).await;
    let body = "gate,gate=g1 open=true 1700000000000000000\n";
    // One sender's retries through ten addresses: ten partitions' worth of chances to store
    // a second copy.
    for host in 1..=10 {
        let reply = send(&node, &format!("203.0.113.{host}"), "open-g1", body).await;
        assert_eq!(reply.status, 204, "from .{host}: {}", reply.body);
    }
    assert_eq!(telemetry(&node).await.len(), 1);
    let metrics = request(node.http, "GET", "/metrics", &[], b"").await.body;
    assert!(
        metrics.contains("nublar_ingest_idempotent_replays_total 9"),
        "{metrics}"
    );
    // The same key with another body, precision or accept_partial is another request.
    let other = send(
        &node,
        "203.0.113.1",
        "open-g1",
        "gate,gate=g1 open=false 1\n",
    )
    .await;
    assert_eq!(other.status, 422, "{}", other.body);
    assert!(other.body.contains("different request"), "{}", other.body);
    for target in [
        "/api/v3/write_lp?db=park&precision=ns",
        "/api/v3/write_lp?db=park&accept_partial=false",
    ] {
        let reply = request(
            node.http,
            "POST",
            target,
            &[("Idempotency-Key", "open-g1")],
            body.as_bytes(),
        )
        .await;
        assert_eq!(reply.status, 422, "{target}: {}", reply.body);
    }
    assert_eq!(telemetry(&node).await.len(), 1, "nothing more was stored");
    // A request that stored nothing leaves its key free for the corrected one.
    let bad = send(&node, "203.0.113.1", "fix-me", "gate,gate=g1 open=tru\n").await;
    assert_eq!(bad.status, 400);
    let fixed = send(&node, "203.0.113.1", "fix-me", "gate,gate=g1 open=true\n").await;
    assert_eq!(fixed.status, 204, "{}", fixed.body);
}

/// The embedded bus with the telemetry's appends held until released, so a
/// test can send a second request while the first is being handled.
struct GatedBus {
    inner: Arc<dyn Bus>,
    held: tokio::sync::Semaphore,
    arrived: tokio::sync::Notify,
}

#[async_trait]
impl Bus for GatedBus {
    async fn ensure_topic(&self, topic: &str, config: TopicConfig) -> Result<(), BusError> {
        self.inner.ensure_topic(topic, config).await
    }
    async fn partitions(&self, topic: &str) -> Result<u32, BusError> {
        self.inner.partitions(topic).await
    }
    async fn append(
        &self,
        topic: &str,
        partition: u32,
        batch: Batch,
    ) -> Result<AppendOutcome, BusError> {
        if topic == TELEMETRY_TOPIC {
            self.arrived.notify_one();
            self.held.acquire().await.unwrap().forget();
        }
        self.inner.append(topic, partition, batch).await
    }
    async fn read(
        &self,
        topic: &str,
        partition: u32,
        start: Start,
        max_bytes: usize,
    ) -> Result<ReadBatches, BusError> {
        self.inner.read(topic, partition, start, max_bytes).await
    }
    async fn offsets(&self, topic: &str, partition: u32) -> Result<OffsetRange, BusError> {
        self.inner.offsets(topic, partition).await
    }
    async fn wait(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
        timeout: Duration,
    ) -> Result<bool, BusError> {
        self.inner.wait(topic, partition, offset, timeout).await
    }
    async fn commit(&self, group: &str, offsets: &[(&str, u32, i64)]) -> Result<(), BusError> {
        self.inner.commit(group, offsets).await
    }
    async fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<i64>, BusError> {
        self.inner.committed(group, topic, partition).await
    }
    async fn require_group(&self, group: &str, topic: &str) -> Result<(), BusError> {
        self.inner.require_group(group, topic).await
    }
    fn problems(&self) -> Vec<String> {
        self.inner.problems()
    }
    async fn batch_keys(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Vec<RememberedKey>, BusError> {
        self.inner.batch_keys(topic, partition).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_while_its_first_request_is_in_flight_gets_409() {
    let dir = tempfile::tempdir().unwrap();
    let gated = Arc::new(GatedBus {
        inner: EmbeddedBus::open(dir.path()).unwrap().into_shared(),
        held: tokio::sync::Semaphore::new(0),
        arrived: tokio::sync::Notify::new(),
    });
    let node = Arc::new(start_on_bus(gated.clone(), "127.0.0.1:0", config()).await);
    let body = "fence,segment=s1 voltage_kv=7.9 1\n";
    let first = {
        let node = node.clone();
        tokio::spawn(async move { send(&node, "203.0.113.1", "fence-1", body).await })
    };
    tokio::time::timeout(Duration::from_secs(10), gated.arrived.notified())
        .await
        .expect("the first request reaches its append");
    let meanwhile = send(&node, "203.0.113.2", "fence-1", body).await;
    assert_eq!(meanwhile.status, 409, "{}", meanwhile.body);
    assert!(meanwhile.header("retry-after").is_some());
    gated.held.add_permits(1);
    assert_eq!(first.await.unwrap().status, 204);
    let after = send(&node, "203.0.113.2", "fence-1", body).await;
    assert_eq!(after.status, 204, "{}", after.body);
    assert_eq!(telemetry(&node).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_stored_before_a_restart_still_answer_their_retries() {
    let dir = tempfile::tempdir().unwrap();
    let body = "weather,station=w1 temp_c=21.5 1\n";
    let node = start_in(dir.path(), "127.0.0.1:0", config()).await;
    assert_eq!(send(&node, "203.0.113.1", "w1-1", body).await.status, 204);
    node.shut_down().await;
    let node = start_in(dir.path(), "127.0.0.1:0", config()).await;
    let reused = send(
        &node,
        "203.0.113.1",
        "w1-1",
        "weather,station=w1 temp_c=0 2\n",
    )
    .await;
    assert_eq!(reused.status, 422, "{}", reused.body);
    // From another address: another partition, whose log never saw the key.
    let retried = send(&node, "198.51.100.77", "w1-1", body).await;
    assert_eq!(retried.status, 204, "{}", retried.body);
    assert_eq!(telemetry(&node).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_token_pushes_out_only_its_own_keys() {
    let token = |name: &str| Token {
        name: name.into(),
        secret: format!("secret-{name}"),
        scopes: vec!["write:park".parse().unwrap()],
        allow: Vec::new(),
        events_per_second_max: None,
    };
    let config = IngestConfig {
        partitions: 2,
        access: AccessConfig {
            tokens: vec![token("busy"), token("quiet")],
            ..AccessConfig::default()
        },
        idempotency: IdempotencyConfig {
            keys_per_owner_max: 20,
            keys_max: 40,
            ..IdempotencyConfig::default()
        },
        ..IngestConfig::default()
    };
    let node = node_on("127.0.0.1:0", config).await;
    let write = |name: &'static str, key: String, body: String| {
        let http = node.http;
        async move {
            let authorization = format!("Bearer secret-{name}");
            request(
                http,
                "POST",
                TARGET,
                &[("Authorization", &authorization), ("Idempotency-Key", &key)],
                body.as_bytes(),
            )
            .await
        }
    };
    for index in 0..5 {
        let reply = write(
            "quiet",
            format!("quiet-{index}"),
            format!("m v={index}i 1\n"),
        )
        .await;
        assert_eq!(reply.status, 204);
    }
    for index in 0..200 {
        let reply = write("busy", format!("busy-{index}"), format!("m v={index}i 2\n")).await;
        assert_eq!(reply.status, 204);
    }
    for index in 0..5 {
        let reply = write("quiet", format!("quiet-{index}"), "m v=999i 3\n".into()).await;
        assert_eq!(
            reply.status, 422,
            "quiet-{index} was forgotten: {}",
            reply.body
        );
    }
    // The busy token keeps its newest keys.
    let kept = write("busy", "busy-199".into(), "m v=999i 5\n".into()).await;
    assert_eq!(kept.status, 422);
}
