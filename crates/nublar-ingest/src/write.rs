//! The write path shared by every endpoint: read the body within its limits,
//! decompress, parse and validate every line, append the accepted lines as
//! one batch, and answer in the dialect of the endpoint that was called.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use nublar_bus::{BusError, Fingerprint};
use serde_json::json;

use crate::admission::{self, Budget};
pub(crate) use crate::admission::{Payload, PrecisionChoice, WriteFailure};
use crate::auth::Action;
use crate::idempotency::Claim;
use crate::limits::{IDEMPOTENCY_KEY_BYTES_MAX, PERMIT_BYTES, RETRY_AFTER_SECONDS};
use crate::schema::Registered;
use crate::{Inner, TELEMETRY_TOPIC, dead_letters};

/// Which API's error shapes a response uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// InfluxDB 2: `{"code": …, "message": …}`.
    V2,
    /// InfluxDB 3: `{"error": …, "data": [{original_line, line_number, error_message}]}`.
    V3,
    /// nublar's JSON events: `{"code": …, "message": …, "errors": [{event, error_message, original_event}]}`.
    Events,
}

pub(crate) struct WriteRequest {
    pub payload: Payload,
    pub db: String,
    pub body: Vec<u8>,
    pub precision: PrecisionChoice,
    pub accept_partial: bool,
    pub sender: IpAddr,
    pub idempotency_key: Option<String>,
    /// What the key stands for, carried with it into the log.
    pub fingerprint: Option<Fingerprint>,
    /// The token's name and events per second, when its writes are limited.
    pub rate: Option<(String, u64)>,
    /// The same request was stored before under its key: answer as then,
    /// store nothing.
    pub replay: bool,
}

/// Reads the request, runs the write and turns the outcome into a response.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn respond(
    inner: &Inner,
    dialect: Dialect,
    db: String,
    precision: PrecisionChoice,
    accept_partial: bool,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let arrived = std::time::Instant::now();
    let endpoint = match dialect {
        Dialect::V2 => "/api/v2/write",
        Dialect::V3 => "/api/v3/write_lp",
        Dialect::Events => "/api/v1/events",
    };
    let payload = if dialect == Dialect::Events {
        Payload::Json
    } else {
        Payload::LineProtocol
    };
    let access = inner.access();
    let client = access.resolve(peer.ip(), &headers);
    // Refused before anything is read: counted in the metrics only.
    let grant = match access.authorize(&client, &headers, Action::Write(&db)) {
        Ok(grant) => grant,
        Err(denied) => {
            inner
                .metrics
                .count_request(endpoint, denied.status().as_u16());
            return error_response(dialect, denied.status(), denied.message());
        }
    };
    drop(access);
    let sender = client.address;
    let rate = grant.token.clone().zip(grant.events_per_second_max);
    if let Some((token, events_per_second)) = &rate
        && let Err(wait) = inner.rates.admit(token, *events_per_second)
    {
        let failure = rate_limited(token, *events_per_second, wait);
        inner
            .metrics
            .count_request(endpoint, failure.status.as_u16());
        return failure_response(dialect, failure);
    }
    let owner = match &grant.token {
        Some(token) => format!("token:{token}"),
        None => format!("address:{sender}"),
    };
    let admitted = Admitted {
        dialect,
        payload,
        db,
        precision,
        accept_partial,
        sender,
        owner,
        rate,
    };
    let response = match write_admitted(inner, admitted, &headers, body).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(failure) => failure_response(dialect, failure),
    };
    inner
        .metrics
        .count_request(endpoint, response.status().as_u16());
    inner
        .metrics
        .observe_request(endpoint, arrived.elapsed().as_secs_f64());
    response
}

/// A write request that passed its access check.
struct Admitted {
    dialect: Dialect,
    payload: Payload,
    db: String,
    precision: PrecisionChoice,
    accept_partial: bool,
    sender: IpAddr,
    /// Whose idempotency keys these are: the token's, or the address's.
    owner: String,
    rate: Option<(String, u64)>,
}

async fn write_admitted(
    inner: &Inner,
    admitted: Admitted,
    headers: &HeaderMap,
    body: Body,
) -> Result<(), WriteFailure> {
    // Bodies held at once are bounded: a request reserves its declared size
    // before its body is read (all of the body limit when it declares none),
    // and what decompression adds after; past the bound the client is asked
    // to come back. This is what keeps memory bounded under any load.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|length| length.to_str().ok()?.parse::<usize>().ok())
        .unwrap_or(inner.config.body_bytes_max)
        .min(inner.config.body_bytes_max);
    let mut held = Held::reserve(inner, declared)?;
    let (body, sent_digest) = read_body(inner, headers, body, &mut held).await?;
    let idempotency_key = match headers.get("idempotency-key").map(HeaderValue::to_str) {
        None => None,
        Some(Ok(key)) if !key.is_empty() && key.len() <= IDEMPOTENCY_KEY_BYTES_MAX => {
            Some(key.to_owned())
        }
        Some(_) => {
            return Err(WriteFailure::plain(
                StatusCode::BAD_REQUEST,
                format!(
                    "Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} bytes of visible ASCII"
                ),
            ));
        }
    };
    // The key is claimed node-wide before anything is stored: a retry from
    // another address lands in another partition, where the log's own memory
    // of keys would not see it.
    let mut ticket = None;
    let mut replay = false;
    let mut fingerprint = None;
    if let Some(key) = &idempotency_key {
        let print = request_fingerprint(&admitted, headers, sent_digest);
        fingerprint = Some(print);
        match inner
            .keys
            .claim(&format!("{}/{key}", admitted.db), print, &admitted.owner)
        {
            Claim::Fresh(claimed) => ticket = Some(claimed),
            Claim::Replay => {
                replay = true;
                inner.metrics.count_replay();
            }
            Claim::InFlight => {
                return Err(WriteFailure::retry_later(
                    StatusCode::CONFLICT,
                    format!(
                        "a request with Idempotency-Key {key:?} is still being handled; send it \
                         again once that one has its answer"
                    ),
                    RETRY_AFTER_SECONDS,
                ));
            }
            Claim::Reused => {
                return Err(WriteFailure::plain(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "Idempotency-Key {key:?} was used for a different request (another body, \
                         database, precision, encoding or accept_partial); a new request needs a \
                         new key"
                    ),
                ));
            }
        }
    }
    let request = WriteRequest {
        payload: admitted.payload,
        db: admitted.db,
        body,
        precision: admitted.precision,
        accept_partial: admitted.accept_partial,
        sender: admitted.sender,
        idempotency_key,
        fingerprint,
        rate: admitted.rate,
        replay,
    };
    let result = handle(inner, request, &mut held).await;
    drop(held);
    let stored = match &result {
        Ok(()) => true,
        Err(failure) => failure.stored,
    };
    if let Some(ticket) = ticket
        && stored
    {
        ticket.stored();
    }
    result
}

/// What an idempotency key is bound to: the request as sent, so that a retry
/// matches whatever the node makes of it, and anything else does not.
fn request_fingerprint(admitted: &Admitted, headers: &HeaderMap, sent_digest: u128) -> Fingerprint {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    let precision = match admitted.precision {
        PrecisionChoice::Auto => "auto",
        PrecisionChoice::Fixed(precision) => precision.name(),
    };
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for part in [
        format!("{:?}", admitted.dialect).as_bytes(),
        admitted.db.as_bytes(),
        precision.as_bytes(),
        &[u8::from(admitted.accept_partial)],
        encoding,
        &sent_digest.to_le_bytes(),
    ] {
        // Each part's length first, so that no two different requests run
        // together into the same bytes.
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.digest128().to_le_bytes()
}

/// Reserves `bytes` of the in-flight bound, or answers 503 with Retry-After (also while
/// writes are held back).
pub(crate) fn reserve(
    inner: &Inner,
    bytes: usize,
) -> Result<tokio::sync::SemaphorePermit<'_>, WriteFailure> {
    if let Some(reason) = inner.held_back.read().unwrap().as_deref() {
        return Err(WriteFailure::retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("writes are held back: {reason}; retry later"),
            RETRY_AFTER_SECONDS,
        ));
    }
    let permits = bytes.div_ceil(PERMIT_BYTES).max(1) as u32;
    inner.in_flight.try_acquire_many(permits).map_err(|_| {
        WriteFailure::retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway is at its in-flight limit; retry later",
            RETRY_AFTER_SECONDS,
        )
    })
}

/// The body within its limits, decompressed when the client says gzip, and a
/// digest of it as sent. What decompression makes is charged to `held` as it comes.
async fn read_body(
    inner: &Inner,
    headers: &HeaderMap,
    body: Body,
    held: &mut Held<'_>,
) -> Result<(Vec<u8>, u128), WriteFailure> {
    let limit = inner.config.body_bytes_max;
    let too_large = || {
        WriteFailure::plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|length| length.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    let timeout = std::time::Duration::from_millis(inner.config.body_read_timeout_ms);
    // Read into one buffer as the frames come: no list of chunks, no copy at the end.
    let reading = tokio::time::timeout(timeout, async move {
        use http_body_util::BodyExt;
        let mut body = body;
        let mut raw = Vec::with_capacity(declared.unwrap_or(0).min(limit));
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|error| {
                // A client that went away or sent a broken chunked encoding.
                WriteFailure::plain(
                    StatusCode::BAD_REQUEST,
                    format!("reading the body failed: {error}"),
                )
            })?;
            if let Some(data) = frame.data_ref() {
                if raw.len() + data.len() > limit {
                    return Err(too_large());
                }
                raw.extend_from_slice(data);
            }
        }
        Ok(raw)
    })
    .await;
    let Ok(raw) = reading else {
        return Err(WriteFailure::plain(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} ms",
                timeout.as_millis()
            ),
        ));
    };
    let raw = raw?;
    inner.metrics.count_bytes(raw.len());
    let sent_digest = xxhash_rust::xxh3::xxh3_128(&raw);
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|value| value.to_str().ok());
    match encoding.map(str::trim) {
        None | Some("") | Some("identity") => {
            held.shrink_to(raw.len());
            Ok((raw, sent_digest))
        }
        Some("gzip") => {
            let limit = inner.config.decompressed_bytes_max;
            let mut decoder = flate2::read::GzDecoder::new(&raw[..]);
            let mut out = Vec::new();
            loop {
                // Charged before it is made: the compressed body, and twice what it has given
                // so far and one step more (a growing buffer is copied into a larger one).
                held.grow_to(raw.len() + 2 * (out.len() + DECOMPRESS_STEP_BYTES))?;
                let read = (&mut decoder)
                    .take(DECOMPRESS_STEP_BYTES as u64)
                    .read_to_end(&mut out)
                    .map_err(|error| {
                        WriteFailure::plain(
                            StatusCode::BAD_REQUEST,
                            format!("invalid gzip body: {error}"),
                        )
                    })?;
                if out.len() > limit {
                    return Err(WriteFailure::plain(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("decompressed body is larger than {limit} bytes"),
                    ));
                }
                if read == 0 {
                    break;
                }
            }
            drop(decoder);
            drop(raw);
            held.shrink_to(out.len());
            Ok((out, sent_digest))
        }
        Some(other) => Err(WriteFailure::plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported Content-Encoding {other:?}: use gzip or none"),
        )),
    }
}

/// How much of a gzip body is decompressed before the in-flight bound is charged again.
const DECOMPRESS_STEP_BYTES: usize = 1 << 20;

/// Admits one request (see [`admission`](crate::admission)), then does what its admission
/// asks: takes the rate limit, registers the new columns, appends the batch and keeps the
/// dead letters, in that order, so that a refused request leaves nothing behind and a
/// request that failed to store keeps no dead letters that its retry would keep again.
pub(crate) async fn handle(
    inner: &Inner,
    request: WriteRequest,
    held: &mut Held<'_>,
) -> Result<(), WriteFailure> {
    let batch_key = request
        .idempotency_key
        .as_ref()
        .map(|key| format!("{}/{}", request.db, key));
    let admitting = admission::Request {
        payload: request.payload,
        db: &request.db,
        body: &request.body,
        precision: request.precision,
        accept_partial: request.accept_partial,
        sender: request.sender,
        batch_key: batch_key.as_deref().map(|key| (key, request.fingerprint)),
        partitions: inner.partitions,
    };
    let admitted = admission::admit(&admitting, &inner.schemas, now_ns(), held)?;
    // Taken before anything is registered or stored, so that a refused
    // request leaves nothing behind.
    if let Some((token, events_per_second)) = &request.rate
        && let Err(wait) = inner
            .rates
            .take(token, *events_per_second, admitted.decoded)
    {
        return Err(rate_limited(token, *events_per_second, wait));
    }
    inner
        .metrics
        .count_lines(admitted.accepted, &admitted.rejected_by_reason);
    let sender = request.sender.to_string();
    let origin = || dead_letters::Origin {
        db: &request.db,
        sender: request.sender,
        sender_text: &sender,
        received_ns: admitted.received_ns,
        batch_key: batch_key.as_deref(),
        fingerprint: request.fingerprint,
    };
    if admitted.refused_whole(&admitting) {
        // It stores nothing, so it registers nothing either.
        dead_letters::append(inner, origin(), &admitted.rejected, admitted.rejected_total).await;
        return Err(WriteFailure {
            status: StatusCode::BAD_REQUEST,
            message: match request.payload {
                Payload::LineProtocol => "parsing failed for write_lp endpoint".into(),
                Payload::Json => "no event was stored: some events were rejected".into(),
            },
            rejected: admitted.rejected,
            rejected_total: admitted.rejected_total,
            retry_after: None,
            stored: false,
        });
    }
    // A replay's batch (and dead letters) were stored by the first request.
    if let Some(batch) = admitted.batch.filter(|_| !request.replay) {
        // The columns the stored lines introduce are registered before the batch that uses
        // them, so every stored line fits the registry.
        let registered = inner
            .schemas
            .register(inner.bus.as_ref(), &request.db, &admitted.pending)
            .await
            .map_err(bus_failure)?;
        if let Registered::Raced(what) = registered {
            return Err(WriteFailure::retry_later(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the schema of database {:?} changed while this request was read ({what}); \
                     nothing was stored: send it again",
                    request.db
                ),
                RETRY_AFTER_SECONDS,
            ));
        }
        let appending = std::time::Instant::now();
        let appended = inner
            .bus
            .append(TELEMETRY_TOPIC, admitted.partition, batch)
            .await;
        inner
            .metrics
            .observe_append(appending.elapsed().as_secs_f64());
        if let Err(error) = appended {
            return Err(bus_failure(error));
        }
    }
    if admitted.rejected_total > 0 {
        // Only once the data are stored: a request that failed to store is
        // retried, and its dead letters would be kept twice.
        if !request.replay {
            dead_letters::append(inner, origin(), &admitted.rejected, admitted.rejected_total)
                .await;
        }
        return Err(WriteFailure {
            status: StatusCode::BAD_REQUEST,
            message: match request.payload {
                Payload::LineProtocol => "partial write of line protocol occurred".into(),
                Payload::Json => "partial write of events occurred".into(),
            },
            rejected: admitted.rejected,
            rejected_total: admitted.rejected_total,
            retry_after: None,
            stored: admitted.accepted > 0,
        });
    }
    Ok(())
}

/// What a request holds of the in-flight bound, grown as it holds more and given back when
/// it is dropped.
pub(crate) struct Held<'a> {
    inner: &'a Inner,
    permit: tokio::sync::SemaphorePermit<'a>,
    bytes: usize,
}

impl<'a> Held<'a> {
    /// Reserves `bytes`, or answers 503 with Retry-After (also while writes are held back).
    pub(crate) fn reserve(inner: &'a Inner, bytes: usize) -> Result<Held<'a>, WriteFailure> {
        let permit = reserve(inner, bytes)?;
        let bytes = permit.num_permits() * PERMIT_BYTES;
        Ok(Held {
            inner,
            permit,
            bytes,
        })
    }

    /// Holds at least `bytes` in all, reserving the difference; 503 when it is not there.
    pub(crate) fn grow_to(&mut self, bytes: usize) -> Result<(), WriteFailure> {
        if bytes <= self.bytes {
            return Ok(());
        }
        let more = reserve(self.inner, bytes - self.bytes)?;
        self.bytes += more.num_permits() * PERMIT_BYTES;
        self.permit.merge(more);
        Ok(())
    }

    /// Gives back what is held past `bytes`.
    pub(crate) fn shrink_to(&mut self, bytes: usize) {
        let permits = (self.bytes.saturating_sub(bytes)) / PERMIT_BYTES;
        if permits > 0
            && permits < self.permit.num_permits()
            && let Some(given) = self.permit.split(permits)
        {
            self.bytes -= given.num_permits() * PERMIT_BYTES;
            drop(given);
        }
    }
}

impl Budget for Held<'_> {
    fn grow_to(&mut self, bytes: usize) -> Result<(), WriteFailure> {
        Held::grow_to(self, bytes)
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as i64)
        .unwrap_or(0)
}

fn rate_limited(token: &str, events_per_second: u64, wait: std::time::Duration) -> WriteFailure {
    WriteFailure::retry_later(
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "token {token:?} is over its limit of {events_per_second} events per second; \
             retry in {:.1} s",
            wait.as_secs_f64()
        ),
        wait.as_secs_f64().ceil() as u64,
    )
}

fn bus_failure(error: BusError) -> WriteFailure {
    let retryable = error.is_retryable() || matches!(error, BusError::Stopped(_));
    let status = match &error {
        BusError::Full(_) | BusError::Unavailable(_) | BusError::Stopped(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        BusError::Invalid(_) => StatusCode::PAYLOAD_TOO_LARGE,
        BusError::Conflict(_) => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!("append failed: {error}");
    }
    let mut failure = WriteFailure::plain(status, format!("the write was not stored: {error}"));
    failure.retry_after = retryable.then_some(RETRY_AFTER_SECONDS);
    failure
}

pub(crate) fn error_response(dialect: Dialect, status: StatusCode, message: &str) -> Response {
    failure_response(dialect, WriteFailure::plain(status, message))
}

/// The `code` of an InfluxDB 2 style error body.
fn status_code_name(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "invalid",
        StatusCode::PAYLOAD_TOO_LARGE => "request too large",
        StatusCode::REQUEST_TIMEOUT => "request timeout",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::CONFLICT => "conflict",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable entity",
        StatusCode::TOO_MANY_REQUESTS => "too many requests",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ => "internal error",
    }
}

fn failure_response(dialect: Dialect, failure: WriteFailure) -> Response {
    let body = match dialect {
        Dialect::V2 => {
            let code = status_code_name(failure.status);
            let mut message = failure.message.clone();
            if failure.rejected_total > 0 {
                let details: Vec<String> = failure
                    .rejected
                    .iter()
                    .map(|rejected| format!("line {}: {}", rejected.line_number, rejected.message))
                    .collect();
                message = format!(
                    "{message}: {} lines rejected: {}",
                    failure.rejected_total,
                    details.join("; ")
                );
            }
            json!({ "code": code, "message": message })
        }
        Dialect::Events => {
            let errors: Vec<serde_json::Value> = failure
                .rejected
                .iter()
                .map(|rejected| {
                    json!({
                        "event": rejected.line_number,
                        "error_message": rejected.message,
                        "original_event": rejected.original_line,
                    })
                })
                .collect();
            let code = status_code_name(failure.status);
            json!({
                "code": code,
                "message": failure.message,
                "rejected": failure.rejected_total,
                "errors": errors,
            })
        }
        Dialect::V3 => {
            let data: Vec<serde_json::Value> = failure
                .rejected
                .iter()
                .map(|rejected| {
                    json!({
                        "original_line": rejected.original_line,
                        "line_number": rejected.line_number,
                        "error_message": rejected.message,
                    })
                })
                .collect();
            if data.is_empty() {
                json!({ "error": failure.message, "data": null })
            } else {
                json!({ "error": failure.message, "data": data })
            }
        }
    };
    let mut response = (failure.status, axum::Json(body)).into_response();
    if let Some(seconds) = failure.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}
