//! The gateway's bounds and their defaults. Every queue and buffer the
//! gateway holds is bounded by one of these.

/// Largest request body as sent (compressed or not).
pub const BODY_BYTES_DEFAULT: usize = 10 * 1024 * 1024;
/// Largest body after gzip decompression: where a gzip bomb stops.
pub const DECOMPRESSED_BYTES_DEFAULT: usize = 50 * 1024 * 1024;
/// Request bodies held in memory at once, over all connections.
pub const IN_FLIGHT_BYTES_DEFAULT: usize = 256 * 1024 * 1024;
/// Rejected lines detailed in one response; the rest are counted.
pub const REJECTED_LINES_REPORTED_MAX: usize = 100;
/// The in-flight bound is kept in permits of this size.
pub const PERMIT_BYTES: usize = 1024;
pub const UDP_DATAGRAM_BYTES_MAX: usize = 65_535;
pub const DATABASE_NAME_BYTES_MAX: usize = 64;
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;
/// The most a connection buffers of what it reads (headers, or a body's next part): a
/// request's headers must fit it (431 beyond), and it bounds what an open connection holds
/// besides its request.
pub const CONNECTION_BUFFER_BYTES_MAX: usize = 64 * 1024;
/// Open HTTP connections at once; past it new connections are closed at once.
pub const CONNECTIONS_DEFAULT: usize = 4096;
/// A client has this long to send a request's headers (also between requests
/// on a kept-alive connection), and this long for its body.
pub const HEADER_READ_TIMEOUT_MS_DEFAULT: u64 = 10_000;
pub const BODY_READ_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Columns the schema registry holds, over all databases and measurements
/// (about 100 bytes each in memory); past it a line introducing a new column
/// is rejected (`too_many_columns`). A constant rather than an option: it
/// bounds memory, and a deployment that needs more has a schema problem.
pub const SCHEMA_COLUMNS_DEFAULT: usize = 100_000;
/// Bytes of names the schema registry holds in all (each column counts its database,
/// measurement and column names and `schema::COLUMN_OVERHEAD_BYTES`), and one database's
/// share of them, so that one database's writes cannot fill the registry for the others.
pub const SCHEMA_BYTES_DEFAULT: usize = 64 << 20;
pub const SCHEMA_DATABASE_BYTES_DEFAULT: usize = 16 << 20;
/// Rejected lines kept as dead letters per request; the rest are counted.
pub const DEAD_LETTERS_PER_REQUEST_DEFAULT: usize = 100;
/// Dead letters kept per sender address per second (a token bucket of this
/// size, refilled at this rate); the rest are counted.
pub const DEAD_LETTERS_PER_SENDER_PER_SECOND_DEFAULT: usize = 1000;
/// Sender addresses whose dead letter buckets are tracked at once.
pub const DEAD_LETTER_SENDERS_MAX: usize = 10_000;
/// Idempotency keys: how long a stored request's key answers its retries,
/// how many one owner (token, or address without one) keeps, and how many the
/// node keeps (each about 300 bytes with its bookkeeping).
pub const IDEMPOTENCY_WINDOW_MS_DEFAULT: i64 = 15 * 60 * 1000;
pub const IDEMPOTENCY_KEYS_PER_OWNER_DEFAULT: usize = 10_000;
pub const IDEMPOTENCY_KEYS_DEFAULT: usize = 200_000;
/// What a client is told to wait before retrying when the gateway is full.
pub const RETRY_AFTER_SECONDS: u64 = 1;

const _: () = assert!(BODY_BYTES_DEFAULT <= DECOMPRESSED_BYTES_DEFAULT);
const _: () = assert!(SCHEMA_DATABASE_BYTES_DEFAULT <= SCHEMA_BYTES_DEFAULT);
// Dead letters are taken from the lines a response details.
const _: () = assert!(DEAD_LETTERS_PER_REQUEST_DEFAULT <= REJECTED_LINES_REPORTED_MAX);
const _: () = assert!(DECOMPRESSED_BYTES_DEFAULT <= IN_FLIGHT_BYTES_DEFAULT);
// `<db>/<key>` must fit the log's batch key limit.
const _: () = assert!(
    DATABASE_NAME_BYTES_MAX + 1 + IDEMPOTENCY_KEY_BYTES_MAX <= nublar_bus::BATCH_KEY_BYTES_MAX
);

/// The gateway's options; every one has a working default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestConfig {
    /// Partitions of the `telemetry` topic when the gateway creates it.
    pub partitions: u32,
    pub body_bytes_max: usize,
    pub decompressed_bytes_max: usize,
    pub in_flight_bytes_max: usize,
    /// The database UDP datagrams are written to (UDP carries no database).
    pub udp_db: String,
    pub connections_max: usize,
    pub header_read_timeout_ms: u64,
    pub body_read_timeout_ms: u64,
    /// Tokens, allow-lists and trusted proxies; open when it has no token.
    pub access: crate::auth::AccessConfig,
    /// Rejected lines kept as dead letters per request (at most the
    /// rejected lines a response lists) and per sender per second.
    pub dead_letters_per_request_max: usize,
    pub dead_letters_per_sender_per_second: usize,
    /// Columns the schema registry remembers over all tables; past it, new
    /// columns are rejected (`too_many_columns`).
    pub schema_columns_max: usize,
    /// Bytes of names the registry holds in all, and per database.
    pub schema_bytes_max: usize,
    pub schema_database_bytes_max: usize,
    pub idempotency: IdempotencyConfig,
}

impl Default for IngestConfig {
    fn default() -> IngestConfig {
        IngestConfig {
            partitions: 8,
            body_bytes_max: BODY_BYTES_DEFAULT,
            decompressed_bytes_max: DECOMPRESSED_BYTES_DEFAULT,
            in_flight_bytes_max: IN_FLIGHT_BYTES_DEFAULT,
            udp_db: "park".into(),
            connections_max: CONNECTIONS_DEFAULT,
            header_read_timeout_ms: HEADER_READ_TIMEOUT_MS_DEFAULT,
            body_read_timeout_ms: BODY_READ_TIMEOUT_MS_DEFAULT,
            access: crate::auth::AccessConfig::default(),
            dead_letters_per_request_max: DEAD_LETTERS_PER_REQUEST_DEFAULT,
            dead_letters_per_sender_per_second: DEAD_LETTERS_PER_SENDER_PER_SECOND_DEFAULT,
            schema_columns_max: SCHEMA_COLUMNS_DEFAULT,
            schema_bytes_max: SCHEMA_BYTES_DEFAULT,
            schema_database_bytes_max: SCHEMA_DATABASE_BYTES_DEFAULT,
            idempotency: IdempotencyConfig::default(),
        }
    }
}

impl IngestConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.body_bytes_max == 0 || self.body_bytes_max > self.decompressed_bytes_max {
            return Err("body_bytes_max must be 1..=decompressed_bytes_max".into());
        }
        if self.decompressed_bytes_max > self.in_flight_bytes_max {
            return Err("decompressed_bytes_max must not exceed in_flight_bytes_max".into());
        }
        if self.dead_letters_per_request_max > REJECTED_LINES_REPORTED_MAX {
            return Err(format!(
                "dead_letters_per_request_max must be at most {REJECTED_LINES_REPORTED_MAX}"
            ));
        }
        if self.schema_columns_max == 0 {
            return Err("schema_columns_max must be at least 1".into());
        }
        if self.schema_database_bytes_max == 0
            || self.schema_database_bytes_max > self.schema_bytes_max
        {
            return Err("schema database_bytes_max must be 1..=bytes_max".into());
        }
        if self.connections_max == 0 {
            return Err("connections_max must be at least 1".into());
        }
        if self.header_read_timeout_ms == 0 || self.body_read_timeout_ms == 0 {
            return Err("read timeouts must be positive".into());
        }
        self.access.validate()?;
        self.idempotency.validate()?;
        validate_db(&self.udp_db).map_err(|reason| format!("udp_db: {reason}"))
    }
}

/// Bounds of the node-wide index of idempotency keys; see `idempotency.rs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyConfig {
    pub window_ms: i64,
    pub keys_per_owner_max: usize,
    pub keys_max: usize,
}

impl Default for IdempotencyConfig {
    fn default() -> IdempotencyConfig {
        IdempotencyConfig {
            window_ms: IDEMPOTENCY_WINDOW_MS_DEFAULT,
            keys_per_owner_max: IDEMPOTENCY_KEYS_PER_OWNER_DEFAULT,
            keys_max: IDEMPOTENCY_KEYS_DEFAULT,
        }
    }
}

impl IdempotencyConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.window_ms <= 0 {
            return Err("idempotency window must be positive".into());
        }
        if self.keys_per_owner_max == 0 || self.keys_per_owner_max > self.keys_max {
            return Err("idempotency keys_per_owner_max must be 1..=keys_max".into());
        }
        Ok(())
    }
}

/// A database name as the gateway takes it.
pub(crate) fn validate_db(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > DATABASE_NAME_BYTES_MAX {
        return Err(format!(
            "database name must be 1 to {DATABASE_NAME_BYTES_MAX} bytes"
        ));
    }
    if name.starts_with('_') {
        return Err("database names starting with '_' are reserved".into());
    }
    if !name
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-'))
    {
        return Err("database names use ASCII letters, digits, '_' and '-'".into());
    }
    Ok(())
}
