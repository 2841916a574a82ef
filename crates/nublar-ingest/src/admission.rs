//! Admission: what the gateway makes of one write request, without I/O.
//!
//! [`admit`] is a function of the request (its body already read and
//! decompressed), a view of the schema, the clock reading the caller passes
//! and the in-flight bound it may charge. It parses every line or event,
//! checks it against the schema, and builds the one batch the request appends:
//! so the rules of a write (all or nothing, partial writes, which lines are
//! rejected and why, which columns a request introduces, where its batch goes)
//! are tested without sockets or a bus, and the deterministic simulation runs
//! the same code as the node. The caller does the rest: takes the rate limit,
//! registers the new columns, appends the batch, keeps the dead letters.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;

use axum::http::StatusCode;
use nublar_bus::{BATCH_RECORDS_BYTES_MAX, Batch, BatchBuilder, Compression, Fingerprint};
use nublar_model::json::EventsError;
use nublar_model::{ParseLimits, ParsedLine, Precision, parse_lines, stored};

use crate::limits::{REJECTED_LINES_REPORTED_MAX, validate_db};
use crate::schema::{Pending, SchemaView};

/// What the body holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    LineProtocol,
    /// A JSON array or NDJSON of events.
    Json,
}

/// The unit of the timestamps of a line protocol body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrecisionChoice {
    Fixed(Precision),
    /// Guess the unit of each timestamp from its magnitude, as InfluxDB 3 does.
    Auto,
}

/// One write request as admission sees it.
pub struct Request<'a> {
    pub payload: Payload,
    pub db: &'a str,
    /// The body as the parser reads it: already decompressed.
    pub body: &'a [u8],
    pub precision: PrecisionChoice,
    /// A partial write stores the lines that fit; otherwise one bad line stores nothing.
    pub accept_partial: bool,
    pub sender: IpAddr,
    /// The batch key (`<db>/<Idempotency-Key>`) and what it stands for, when the client sent a key.
    pub batch_key: Option<(&'a str, Option<Fingerprint>)>,
    /// The topic's partitions: the batch goes to the sender's.
    pub partitions: u32,
}

/// A line or event a request's answer rejects: what a dead letter is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub line_number: usize,
    /// The metric label and dead letter reason.
    pub reason: &'static str,
    pub original_line: String,
    pub message: String,
}

/// Why a request is refused, and what its answer says.
#[derive(Debug)]
pub struct WriteFailure {
    pub status: StatusCode,
    pub message: String,
    pub rejected: Vec<Rejected>,
    /// Total rejected lines (more than `rejected` lists when over the limit).
    pub rejected_total: usize,
    /// Seconds the client is told to wait (`Retry-After`) before trying again.
    pub retry_after: Option<u64>,
    /// Some of the request was stored all the same (a partial write).
    pub stored: bool,
}

impl WriteFailure {
    pub(crate) fn plain(status: StatusCode, message: impl Into<String>) -> WriteFailure {
        WriteFailure {
            status,
            message: message.into(),
            rejected: Vec::new(),
            rejected_total: 0,
            retry_after: None,
            stored: false,
        }
    }

    pub(crate) fn retry_later(
        status: StatusCode,
        message: impl Into<String>,
        seconds: u64,
    ) -> WriteFailure {
        WriteFailure {
            retry_after: Some(seconds.max(1)),
            ..WriteFailure::plain(status, message)
        }
    }
}

/// The in-flight bound as admission charges it: asked to hold at least some bytes in all,
/// it grants them or refuses the request (503 with Retry-After).
pub trait Budget {
    fn grow_to(&mut self, bytes: usize) -> Result<(), WriteFailure>;
}

/// A budget that grants everything: for callers whose memory another bound holds.
pub struct Unbounded;

impl Budget for Unbounded {
    fn grow_to(&mut self, _bytes: usize) -> Result<(), WriteFailure> {
        Ok(())
    }
}

/// What a request comes to once its body is read.
pub struct Admission {
    /// The batch to append, `None` when it stores nothing (every line rejected, or one line
    /// of an all-or-nothing request).
    pub batch: Option<Batch>,
    /// The partition of the telemetry topic the batch goes to.
    pub partition: u32,
    /// The columns the stored lines introduce, registered before the batch is appended.
    pub pending: Pending,
    /// Lines or events stored.
    pub accepted: usize,
    /// Lines or events that decoded, fitting the schema or not: what a rate limit counts.
    pub decoded: u64,
    /// The rejected lines kept for the answer and the dead letters (at most
    /// [`REJECTED_LINES_REPORTED_MAX`]).
    pub rejected: Vec<Rejected>,
    pub rejected_total: usize,
    pub rejected_by_reason: BTreeMap<&'static str, u64>,
    /// The time given to lines that carry none.
    pub received_ns: i64,
}

impl Admission {
    /// Whether one rejected line made an all-or-nothing request store nothing.
    pub fn refused_whole(&self, request: &Request<'_>) -> bool {
        self.rejected_total > 0 && !request.accept_partial
    }
}

/// Parses, validates and encodes one request as one batch, in one pass over its body: each
/// line or event is checked against the schema as it is read and, when it fits, encoded into
/// the batch at once. So what a request holds is its body, its batch (charged to `budget` as
/// it grows) and one line or event at a time; no list of parsed lines, no JSON tree.
pub fn admit(
    request: &Request<'_>,
    schema: &dyn SchemaView,
    received_ns: i64,
    budget: &mut dyn Budget,
) -> Result<Admission, WriteFailure> {
    if let Err(reason) = validate_db(request.db) {
        return Err(WriteFailure::plain(StatusCode::BAD_REQUEST, reason));
    }
    let parse_precision = match request.precision {
        PrecisionChoice::Fixed(precision) => precision,
        PrecisionChoice::Auto => Precision::Ns,
    };
    let sender = request.sender.to_string();
    let mut builder = BatchBuilder::with_capacity(Compression::Lz4, request.body.len() + 1024);
    if let Some((key, fingerprint)) = request.batch_key {
        builder = builder.batch_key(key).map_err(|error| {
            WriteFailure::plain(StatusCode::BAD_REQUEST, format!("batch key: {error}"))
        })?;
        if let Some(fingerprint) = fingerprint {
            builder = builder.fingerprint(fingerprint);
        }
    }
    let mut pass = Pass {
        schema,
        db: request.db,
        sender: &sender,
        all_or_nothing: !request.accept_partial,
        pending: Pending::default(),
        builder,
        line_buffer: Vec::with_capacity(256),
        decoded: 0,
        rejected: Vec::new(),
        rejected_total: 0,
        rejected_bytes: 0,
        rejected_by_reason: BTreeMap::new(),
        body_bytes: request.body.len(),
        next_charge: 0,
        budget,
    };
    let body = request.body;
    match request.payload {
        Payload::LineProtocol => {
            let mut locator = LineLocator::new(body);
            for (line_number, parsed) in parse_lines(body, parse_precision, ParseLimits::default())
            {
                let mut line = match parsed {
                    Ok(line) => line,
                    Err(error) => {
                        let reason = error.kind().name();
                        let message = error.to_string();
                        pass.reject(line_number, reason, || error.original_line(body), message)?;
                        continue;
                    }
                };
                line.timestamp_ns = Some(match (line.timestamp_ns, request.precision) {
                    (None, _) => received_ns,
                    (Some(raw), PrecisionChoice::Auto) => match auto_precision(raw) {
                        Some(ns) => ns,
                        None => {
                            let message = format!("timestamp {raw} is out of range");
                            let original = || locator.line(line_number);
                            pass.reject(line_number, "timestamp_out_of_range", original, message)?;
                            continue;
                        }
                    },
                    (Some(ns), PrecisionChoice::Fixed(_)) => ns,
                });
                pass.take(line_number, &line, || locator.line(line_number))?;
            }
        }
        Payload::Json => {
            let known = |measurement: &str, field: &str| {
                schema.known_field_type(request.db, measurement, field)
            };
            let walked = nublar_model::json::for_each_event(
                body,
                ParseLimits::default(),
                known,
                |number, raw, decoded| {
                    let original = || Cow::Borrowed(raw);
                    match decoded {
                        Ok(mut event) => {
                            event.timestamp_ns.get_or_insert(received_ns);
                            pass.take(number, &event, original)
                        }
                        Err(error) => pass.reject(number, error.reason, original, error.message),
                    }
                },
            );
            match walked {
                Ok(_) => {}
                Err(EventsError::Body(message)) => {
                    return Err(WriteFailure::plain(StatusCode::BAD_REQUEST, message));
                }
                Err(EventsError::Stopped(failure)) => return Err(failure),
            }
        }
    }
    let Pass {
        pending,
        builder,
        decoded,
        rejected,
        rejected_total,
        rejected_by_reason,
        all_or_nothing,
        ..
    } = pass;
    let refused_whole = all_or_nothing && rejected_total > 0;
    let stores = !(builder.is_empty() || refused_whole);
    let accepted = if stores { builder.len() } else { 0 };
    // Finished here, before anything is registered or stored, so that a request whose batch
    // cannot be made leaves nothing behind.
    let batch = if stores {
        Some(builder.finish().map_err(|error| {
            WriteFailure::plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the accepted lines do not fit one batch: {error}"),
            )
        })?)
    } else {
        None
    };
    Ok(Admission {
        batch,
        partition: partition_for(request.sender, request.partitions),
        pending: if stores { pending } else { Pending::default() },
        accepted,
        decoded,
        rejected,
        rejected_total,
        rejected_by_reason,
        received_ns,
    })
}

/// One request's walk through its lines or events.
struct Pass<'a, 'b> {
    schema: &'a dyn SchemaView,
    db: &'a str,
    sender: &'a str,
    all_or_nothing: bool,
    /// The columns the request introduces, registered once it is read.
    pending: Pending,
    builder: BatchBuilder,
    /// One line's stored layout at a time.
    line_buffer: Vec<u8>,
    decoded: u64,
    rejected: Vec<Rejected>,
    rejected_total: usize,
    /// Bytes of the rejected lines' text kept for the answer and the dead letters.
    rejected_bytes: usize,
    rejected_by_reason: BTreeMap<&'static str, u64>,
    body_bytes: usize,
    /// The batch size at which the in-flight bound is charged next.
    next_charge: usize,
    budget: &'b mut dyn Budget,
}

/// How much more of the batch a request may encode before it is charged to the in-flight
/// bound again, at most: a request is charged a step ahead, and a small one a small step
/// (its body's size).
const CHARGE_STEP_BYTES: usize = 1 << 20;
/// The most of a rejected line's text kept for the answer and the dead letter.
const REJECTED_TEXT_BYTES_MAX: usize = 64 * 1024;

impl Pass<'_, '_> {
    /// A line or event that decoded: checked against the schema, and encoded into the batch
    /// when it fits (and the request may still store anything).
    fn take<'o>(
        &mut self,
        number: usize,
        event: &ParsedLine<'_>,
        original: impl FnOnce() -> Cow<'o, str>,
    ) -> Result<(), WriteFailure> {
        self.decoded += 1;
        if let Err(conflict) = self.schema.check_line(self.db, event, &mut self.pending) {
            return self.reject(number, conflict.reason, original, conflict.message);
        }
        if self.all_or_nothing && self.rejected_total > 0 {
            return Ok(());
        }
        self.line_buffer.clear();
        stored::encode(event, &mut self.line_buffer);
        let value = self.line_buffer.as_slice();
        if self.builder.is_empty() {
            self.builder.push(
                None,
                value,
                &[
                    ("db", self.db.as_bytes()),
                    ("sender", self.sender.as_bytes()),
                ],
            );
        } else {
            self.builder.push(None, value, &[]);
        }
        // Every consumer decompresses a batch into memory and refuses one past this bound; a
        // request that would make one is refused here, before it is stored and before its
        // batch grows further.
        if self.builder.encoded_bytes() > BATCH_RECORDS_BYTES_MAX {
            return Err(WriteFailure::plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request's events take more than {BATCH_RECORDS_BYTES_MAX} bytes in the \
                     log's stored layout, the most one batch may take (a reader's limit); send \
                     fewer lines or fields per request"
                ),
            ));
        }
        if self.builder.encoded_bytes() >= self.next_charge {
            self.charge()?;
        }
        Ok(())
    }

    fn reject<'o>(
        &mut self,
        line_number: usize,
        reason: &'static str,
        original: impl FnOnce() -> Cow<'o, str>,
        message: String,
    ) -> Result<(), WriteFailure> {
        self.rejected_total += 1;
        *self.rejected_by_reason.entry(reason).or_default() += 1;
        if self.rejected.len() < REJECTED_LINES_REPORTED_MAX {
            let original_line = bounded_text(original());
            self.rejected_bytes += original_line.len() + message.len();
            self.rejected.push(Rejected {
                line_number,
                reason,
                original_line,
                message,
            });
            self.charge()?;
        }
        Ok(())
    }

    /// Charges what the request holds now, and up to one step more of its batch, to the
    /// in-flight bound: its body, its batch twice (a growing buffer is copied into one twice
    /// its size, and at the end the batch is compressed beside its records), the rejected
    /// lines kept, and the largest line's stored layout (with the names it copied).
    fn charge(&mut self) -> Result<(), WriteFailure> {
        let step = self.body_bytes.clamp(1, CHARGE_STEP_BYTES);
        self.next_charge = self.builder.encoded_bytes() + step;
        let holding = self.body_bytes
            + 2 * self.next_charge
            + self.rejected_bytes
            + 2 * self.line_buffer.capacity();
        self.budget.grow_to(holding)
    }
}

/// A rejected line's text as kept: at most [`REJECTED_TEXT_BYTES_MAX`] bytes of it.
fn bounded_text(text: Cow<'_, str>) -> String {
    if text.len() <= REJECTED_TEXT_BYTES_MAX {
        return text.into_owned();
    }
    let mut end = REJECTED_TEXT_BYTES_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..end], text.len())
}

/// Finds the text of a line by its number, for lines asked for in ascending order: one walk
/// over the body for all of them.
struct LineLocator<'a> {
    body: &'a [u8],
    /// The number of the line that starts at `at`.
    number: usize,
    at: usize,
}

impl<'a> LineLocator<'a> {
    fn new(body: &'a [u8]) -> LineLocator<'a> {
        LineLocator {
            body,
            number: 1,
            at: 0,
        }
    }

    fn line(&mut self, number: usize) -> Cow<'a, str> {
        while self.number < number && self.at <= self.body.len() {
            match memchr::memchr(b'\n', &self.body[self.at..]) {
                Some(found) => self.at += found + 1,
                None => self.at = self.body.len() + 1,
            }
            self.number += 1;
        }
        let rest = self.body.get(self.at..).unwrap_or_default();
        let line = match memchr::memchr(b'\n', rest) {
            Some(end) => &rest[..end],
            None => rest,
        };
        String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line))
    }
}

/// One sender always lands in one partition, so its series keep their order.
pub fn partition_for(sender: IpAddr, partitions: u32) -> u32 {
    let bytes = match sender {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    // FNV-1a: stable across versions and runs, unlike the std hasher.
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % u64::from(partitions.max(1))) as u32
}

/// InfluxDB 3's guess: the unit that puts the timestamp nearest today.
fn auto_precision(raw: i64) -> Option<i64> {
    let magnitude = raw.unsigned_abs();
    let precision = if magnitude < 5_000_000_000 {
        Precision::S
    } else if magnitude < 5_000_000_000_000 {
        Precision::Ms
    } else if magnitude < 5_000_000_000_000_000 {
        Precision::Us
    } else {
        Precision::Ns
    };
    precision.to_nanoseconds(raw).ok()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use nublar_model::{ColumnKind, FieldType};
    use proptest::prelude::*;

    use super::*;
    use crate::schema::{Bounds, Schema};

    const RECEIVED_NS: i64 = 1_700_000_000_000_000_000;

    fn schema() -> Schema {
        Schema::new(Bounds {
            columns_max: 1000,
            bytes_max: 1 << 20,
            database_bytes_max: 1 << 20,
        })
    }

    fn request(body: &[u8], accept_partial: bool) -> Request<'_> {
        Request {
            payload: Payload::LineProtocol,
            db: "park",
            body,
            precision: PrecisionChoice::Fixed(Precision::Ns),
            accept_partial,
            sender: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7)),
            batch_key: None,
            partitions: 4,
        }
    }

    /// Names paired with values.
    type Named<T> = Vec<(String, T)>;

    /// The events a batch holds, each as its measurement and timestamp, and its first
    /// record's headers.
    fn stored(batch: &Batch) -> (Named<i64>, Named<String>) {
        let view = batch.view();
        let records = view.records().unwrap();
        let mut events = Vec::new();
        let mut headers = Vec::new();
        for (index, record) in records.iter().enumerate() {
            let record = record.unwrap();
            if index == 0 {
                for header in record.headers() {
                    let (name, value) = header.unwrap();
                    headers.push((
                        String::from_utf8(name.to_vec()).unwrap(),
                        String::from_utf8(value.to_vec()).unwrap(),
                    ));
                }
            }
            let line = stored::decode(record.value).unwrap();
            events.push((line.measurement.into_owned(), line.timestamp_ns.unwrap()));
        }
        (events, headers)
    }

    #[test]
    fn one_bad_line_stores_nothing_of_an_all_or_nothing_request() {
        let body = b"weather temp_c=1 5\nweather temp_c= 6\nweather temp_c=3 7\n";
        let request = request(body, false);
        let admitted = admit(&request, &schema(), RECEIVED_NS, &mut Unbounded).unwrap();
        assert!(admitted.batch.is_none());
        assert!(admitted.refused_whole(&request));
        assert_eq!(admitted.accepted, 0);
        assert!(
            admitted.pending.is_empty(),
            "a request storing nothing registers nothing"
        );
        assert_eq!(admitted.rejected_total, 1);
        assert_eq!(admitted.rejected[0].line_number, 2);
        assert_eq!(admitted.rejected[0].original_line, "weather temp_c= 6");
        assert_eq!(admitted.decoded, 2);
    }

    #[test]
    fn a_partial_write_stores_the_lines_that_fit_with_the_batch_headers() {
        let body = b"weather temp_c=1 5\nweather temp_c= 6\nfence volts=3i\n";
        let request = request(body, true);
        let admitted = admit(&request, &schema(), RECEIVED_NS, &mut Unbounded).unwrap();
        assert!(!admitted.refused_whole(&request));
        let (events, headers) = stored(admitted.batch.as_ref().unwrap());
        assert_eq!(
            events,
            vec![("weather".to_owned(), 5), ("fence".to_owned(), RECEIVED_NS)],
            "a line without a time gets the time the request arrived"
        );
        assert_eq!(
            headers,
            vec![
                ("db".to_owned(), "park".to_owned()),
                ("sender".to_owned(), "2001:db8::7".to_owned())
            ]
        );
        assert_eq!(admitted.accepted, 2);
        let columns: Vec<_> = admitted.pending.columns().collect();
        assert_eq!(
            columns,
            vec![
                ("weather", "temp_c", ColumnKind::Field(FieldType::F64)),
                ("fence", "volts", ColumnKind::Field(FieldType::I64)),
            ]
        );
        assert_eq!(admitted.partition, partition_for(request.sender, 4));
    }

    #[test]
    fn the_first_line_to_use_a_column_decides_its_type_and_the_schema_holds_after() {
        let body = b"weather temp_c=1 5\nweather temp_c=2i 6\n";
        let admitted = admit(&request(body, true), &schema(), RECEIVED_NS, &mut Unbounded).unwrap();
        assert_eq!(admitted.accepted, 1);
        assert_eq!(admitted.rejected[0].reason, "field_type_conflict");

        let mut registered = schema();
        registered.register("park", &admitted.pending);
        let body = b"weather temp_c=7i 8\n";
        let admitted = admit(
            &request(body, true),
            &registered,
            RECEIVED_NS,
            &mut Unbounded,
        )
        .unwrap();
        assert_eq!(admitted.accepted, 0);
        assert_eq!(admitted.rejected[0].reason, "field_type_conflict");
    }

    /// Grants up to a fixed number of bytes in all.
    struct Limited(usize);

    impl Budget for Limited {
        fn grow_to(&mut self, bytes: usize) -> Result<(), WriteFailure> {
            if bytes > self.0 {
                return Err(WriteFailure::retry_later(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "at the in-flight limit",
                    1,
                ));
            }
            Ok(())
        }
    }

    #[test]
    fn a_request_past_the_in_flight_bound_is_refused_with_retry_after() {
        let body = "weather temp_c=1 5\n".repeat(1000);
        let refused = admit(
            &request(body.as_bytes(), true),
            &schema(),
            RECEIVED_NS,
            &mut Limited(body.len()),
        )
        .err()
        .expect("the batch beside its body takes more than the body alone");
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.retry_after, Some(1));
        let admitted = admit(
            &request(body.as_bytes(), true),
            &schema(),
            RECEIVED_NS,
            &mut Limited(8 * body.len()),
        )
        .unwrap();
        assert_eq!(admitted.accepted, 1000);
    }

    #[test]
    fn an_invalid_database_is_refused_before_anything_is_read() {
        let mut refused = request(b"weather temp_c=1 5\n", true);
        refused.db = "";
        let failure = admit(&refused, &schema(), RECEIVED_NS, &mut Unbounded)
            .err()
            .unwrap();
        assert_eq!(failure.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn json_events_take_the_known_type_of_a_field() {
        let mut registered = schema();
        let seed = admit(
            &request(b"weather temp_c=1 5\n", true),
            &registered,
            RECEIVED_NS,
            &mut Unbounded,
        )
        .unwrap();
        registered.register("park", &seed.pending);
        let body = br#"[{"measurement":"weather","fields":{"temp_c":3},"time":9}]"#;
        let mut json = request(body, false);
        json.payload = Payload::Json;
        let admitted = admit(&json, &registered, RECEIVED_NS, &mut Unbounded).unwrap();
        assert_eq!(admitted.accepted, 1, "{:?}", admitted.rejected);
        assert!(admitted.pending.is_empty());
    }

    /// A line, and what the parser makes of it: `None` when it is no line (blank), else
    /// whether it parses.
    fn line() -> impl Strategy<Value = (String, Option<bool>)> {
        prop_oneof![
            (0u8..3, -50i64..50, 1i64..1_000_000).prop_map(|(table, value, time)| (
                format!("m{table},station=s{table} value={value} {time}"),
                Some(true)
            )),
            "[a-z =,]{0,12}".prop_map(|text| {
                let parsed = nublar_model::parse_lines(
                    text.as_bytes(),
                    Precision::Ns,
                    ParseLimits::default(),
                )
                .map(|(_, parsed)| parsed.is_ok())
                .next();
                (text, parsed)
            }),
        ]
    }

    proptest! {
        #[test]
        fn admission_never_panics_on_any_bytes(
            body in proptest::collection::vec(any::<u8>(), 0..2048),
            partial in any::<bool>(),
            json in any::<bool>(),
        ) {
            let mut request = request(&body, partial);
            if json {
                request.payload = Payload::Json;
            }
            if let Ok(admitted) = admit(&request, &schema(), RECEIVED_NS, &mut Unbounded) {
                let stored = admitted.batch.as_ref().map_or(0, |batch| batch.record_count() as usize);
                prop_assert_eq!(stored, admitted.accepted);
            }
        }

        #[test]
        fn what_is_stored_is_every_good_line_or_none(
            lines in proptest::collection::vec(line(), 0..40),
            partial in any::<bool>(),
        ) {
            let body: String = lines.iter().map(|(text, _)| format!("{text}\n")).collect();
            let admitted = admit(&request(body.as_bytes(), partial), &schema(), RECEIVED_NS, &mut Unbounded).unwrap();
            let parsed = lines.iter().filter(|(_, parsed)| *parsed == Some(true)).count();
            let unparsed = lines.iter().filter(|(_, parsed)| *parsed == Some(false)).count();
            prop_assert_eq!(admitted.decoded as usize, parsed);
            // The rest of the rejected lines conflict with the schema an earlier line set.
            prop_assert!(admitted.rejected_total >= unparsed);
            let conflicts = admitted.rejected_total - unparsed;
            let stored = admitted.batch.as_ref().map_or(0, |batch| batch.record_count() as usize);
            prop_assert_eq!(stored, admitted.accepted);
            if partial || admitted.rejected_total == 0 {
                prop_assert_eq!(admitted.accepted, parsed - conflicts);
            } else {
                prop_assert_eq!(admitted.accepted, 0);
                prop_assert!(admitted.pending.is_empty());
            }
        }
    }
}
