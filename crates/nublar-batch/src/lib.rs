//! Record batches in Kafka's RecordBatch v2 layout (magic 2), byte for byte.
//!
//! The embedded log stores these bytes verbatim and a Kafka broker takes and
//! gives the same, so every bus carries them without re-encoding: this crate is
//! what the log and every bus share, and nothing else. The layout, big-endian throughout:
//!
//! | offset | size | field                  | in CRC |
//! |-------:|-----:|------------------------|:------:|
//! |      0 |    8 | base offset            |   no   |
//! |      8 |    4 | batch length (after this field) | no |
//! |     12 |    4 | partition leader epoch |   no   |
//! |     16 |    1 | magic (format version, 2) | no  |
//! |     17 |    4 | CRC32C of bytes 21..end |   -   |
//! |     21 |    2 | attributes             |  yes   |
//! |     23 |    4 | last offset delta      |  yes   |
//! |     27 |    8 | base (first) timestamp, ms |  yes |
//! |     35 |    8 | max timestamp, ms      |  yes   |
//! |     43 |    8 | producer id            |  yes   |
//! |     51 |    2 | producer epoch         |  yes   |
//! |     53 |    4 | base sequence          |  yes   |
//! |     57 |    4 | records count          |  yes   |
//! |     61 |    … | records (compressed as a whole when the codec is not none) | yes |
//!
//! Each record is a zigzag varint length followed by: attributes (i8),
//! timestamp delta (varlong), offset delta (varint), key length (varint, -1 for
//! none) and key, value length and value, header count (varint) and headers
//! (key length, key, value length, value).

use std::borrow::Cow;
use std::io::{Read, Write};

use crate::limits::{
    BATCH_BYTES_MAX, BATCH_KEY_BYTES_MAX, BATCH_RECORDS_MAX, DECOMPRESSED_BYTES_MAX,
};

/// The codec's bounds, with the unit last in each name.
pub mod limits {
    /// The largest batch, header included, that one append may carry.
    pub const BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;
    /// Kafka's own bound on records per batch is `i32`; ours is far lower so that a
    /// corrupt count can never drive an allocation.
    pub const BATCH_RECORDS_MAX: usize = 1_000_000;
    /// Decompressed records may not exceed this many times the batch limit: a bound
    /// on compression bombs read back from disk or received from a client, and the most a
    /// producer may put in one batch, since no reader would take more.
    pub const DECOMPRESSED_BYTES_MAX: usize = 4 * BATCH_BYTES_MAX;
    /// Batch keys are opaque strings chosen by clients: bounded so that a window of keys
    /// is bounded by `keys × BATCH_KEY_BYTES_MAX`.
    pub const BATCH_KEY_BYTES_MAX: usize = 256;
}

/// The record header that carries a batch's idempotency key, on its first record.
pub const BATCH_KEY_HEADER: &str = "nublar-batch-key";
/// The record header that carries what the batch key stands for (a digest of
/// the request that made the batch), on the first record after the key: the
/// log refuses the same key with another fingerprint instead of taking the
/// second batch for a retry of the first.
pub const BATCH_FINGERPRINT_HEADER: &str = "nublar-batch-fingerprint";

/// A batch key's fingerprint: opaque to the log, compared byte for byte.
pub type Fingerprint = [u8; 16];

pub const BASE_OFFSET_AT: usize = 0;
pub const BATCH_LENGTH_AT: usize = 8;
pub const LEADER_EPOCH_AT: usize = 12;
pub const MAGIC_AT: usize = 16;
pub const CRC_AT: usize = 17;
pub const ATTRIBUTES_AT: usize = 21;
pub const LAST_OFFSET_DELTA_AT: usize = 23;
pub const BASE_TIMESTAMP_AT: usize = 27;
pub const MAX_TIMESTAMP_AT: usize = 35;
pub const PRODUCER_ID_AT: usize = 43;
pub const PRODUCER_EPOCH_AT: usize = 51;
pub const BASE_SEQUENCE_AT: usize = 53;
pub const RECORDS_COUNT_AT: usize = 57;
/// Bytes before the first record.
pub const HEADER_BYTES: usize = 61;
/// Bytes not counted by the batch length field: base offset and the length itself.
pub const LOG_OVERHEAD_BYTES: usize = 12;
pub const MAGIC: u8 = 2;

const COMPRESSION_MASK: u16 = 0x07;
const TIMESTAMP_TYPE_LOG_APPEND: u16 = 0x08;
const TRANSACTIONAL_FLAG: u16 = 0x10;
const CONTROL_FLAG: u16 = 0x20;

const _: () = assert!(CRC_AT + 4 == ATTRIBUTES_AT);
const _: () = assert!(RECORDS_COUNT_AT + 4 == HEADER_BYTES);

/// The codec of a batch's records, chosen per batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Lz4,
    Zstd,
}

impl Compression {
    fn attribute_bits(self) -> u16 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "none" => Ok(Compression::None),
            "lz4" => Ok(Compression::Lz4),
            "zstd" => Ok(Compression::Zstd),
            other => Err(format!(
                "unknown compression {other:?}: expected none, lz4 or zstd"
            )),
        }
    }
}

/// Why bytes are not a valid batch. Every variant is an answer to bad input,
/// never a reason to panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch is {0} bytes, shorter than the {HEADER_BYTES}-byte header")]
    TooShort(usize),
    #[error("batch length field says {declared} bytes but {available} are present")]
    LengthMismatch { declared: u64, available: usize },
    #[error("batch of {0} bytes is over the limit of {1} bytes")]
    TooLarge(usize, usize),
    #[error("unsupported batch format version (magic) {0}; only 2 is supported")]
    UnsupportedMagic(i8),
    #[error("batch CRC32C mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("unsupported compression codec {0} (gzip and snappy are not supported)")]
    UnsupportedCompression(u16),
    #[error("transactional and control batches are not supported")]
    Transactional,
    #[error("record count {0} is out of range")]
    BadRecordCount(i32),
    #[error("last offset delta {last_offset_delta} does not match {count} records")]
    BadOffsetDelta { last_offset_delta: i32, count: i32 },
    #[error("malformed record {index}: {reason}")]
    MalformedRecord { index: usize, reason: &'static str },
    #[error("a batch needs at least one record")]
    Empty,
    #[error("decompression failed: {0}")]
    Decompression(String),
    #[error("decompressed records exceed {DECOMPRESSED_BYTES_MAX} bytes")]
    DecompressionBomb,
    #[error("batch key is {0} bytes; the limit is {BATCH_KEY_BYTES_MAX}")]
    KeyTooLong(usize),
    #[error(
        "the records take {0} bytes before compression; a batch may take at most \
         {DECOMPRESSED_BYTES_MAX}, what every reader accepts"
    )]
    RecordsTooLarge(usize),
}

/// Builds a batch as a producer does: records are encoded as they are pushed and
/// compressed once at the end. The log stamps offsets and the append time.
pub struct BatchBuilder {
    compression: Compression,
    records: Vec<u8>,
    count: usize,
    largest_record_bytes: usize,
    batch_key: Option<String>,
    fingerprint: Option<Fingerprint>,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
}

impl BatchBuilder {
    pub fn new(compression: Compression) -> BatchBuilder {
        BatchBuilder {
            compression,
            records: Vec::new(),
            count: 0,
            largest_record_bytes: 0,
            batch_key: None,
            fingerprint: None,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
        }
    }

    /// Reserve room for `bytes` of encoded records, to avoid growing the buffer.
    pub fn with_capacity(compression: Compression, bytes: usize) -> BatchBuilder {
        let mut builder = BatchBuilder::new(compression);
        builder.records.reserve(bytes);
        builder
    }

    /// The idempotency key travels as a header of the first record, so it must
    /// be set before the first record is pushed.
    pub fn batch_key(mut self, key: &str) -> Result<BatchBuilder, BatchError> {
        assert!(
            self.count == 0,
            "the batch key must be set before the first record"
        );
        if key.len() > BATCH_KEY_BYTES_MAX {
            return Err(BatchError::KeyTooLong(key.len()));
        }
        self.batch_key = Some(key.to_owned());
        Ok(self)
    }

    /// What the batch key stands for; set with the key, before the first record.
    pub fn fingerprint(mut self, fingerprint: Fingerprint) -> BatchBuilder {
        assert!(
            self.count == 0 && self.batch_key.is_some(),
            "a fingerprint goes with a batch key, before the first record"
        );
        self.fingerprint = Some(fingerprint);
        self
    }

    /// Kafka-style idempotence: the log remembers (producer id, epoch, base
    /// sequence) as the batch key.
    pub fn producer(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encoded bytes so far, before compression.
    pub fn encoded_bytes(&self) -> usize {
        self.records.len()
    }

    pub fn push(&mut self, key: Option<&[u8]>, value: &[u8], headers: &[(&str, &[u8])]) {
        let offset_delta = self.count as i64;
        let (batch_key_header, fingerprint_header) = if self.count == 0 {
            (self.batch_key.as_deref(), self.fingerprint.as_ref())
        } else {
            (None, None)
        };
        let header_count = headers.len()
            + usize::from(batch_key_header.is_some())
            + usize::from(fingerprint_header.is_some());
        let mut body_bytes = 1 + varint_bytes(0) + varint_bytes(offset_delta);
        body_bytes += match key {
            Some(key) => varint_bytes(key.len() as i64) + key.len(),
            None => varint_bytes(-1),
        };
        body_bytes += varint_bytes(value.len() as i64) + value.len();
        body_bytes += varint_bytes(header_count as i64);
        let header_bytes = |name: &str, value: &[u8]| {
            varint_bytes(name.len() as i64)
                + name.len()
                + varint_bytes(value.len() as i64)
                + value.len()
        };
        if let Some(batch_key) = batch_key_header {
            body_bytes += header_bytes(BATCH_KEY_HEADER, batch_key.as_bytes());
        }
        if let Some(fingerprint) = fingerprint_header {
            body_bytes += header_bytes(BATCH_FINGERPRINT_HEADER, fingerprint);
        }
        for (name, value) in headers {
            body_bytes += header_bytes(name, value);
        }

        let out = &mut self.records;
        out.reserve(body_bytes + 5);
        put_varint(out, body_bytes as i64);
        let body_start = out.len();
        out.push(0);
        put_varint(out, 0);
        put_varint(out, offset_delta);
        match key {
            Some(key) => put_bytes(out, key),
            None => put_varint(out, -1),
        }
        put_bytes(out, value);
        put_varint(out, header_count as i64);
        if let Some(batch_key) = batch_key_header {
            put_bytes(out, BATCH_KEY_HEADER.as_bytes());
            put_bytes(out, batch_key.as_bytes());
        }
        if let Some(fingerprint) = fingerprint_header {
            put_bytes(out, BATCH_FINGERPRINT_HEADER.as_bytes());
            put_bytes(out, fingerprint);
        }
        for (name, value) in headers {
            put_bytes(out, name.as_bytes());
            put_bytes(out, value);
        }
        debug_assert_eq!(out.len() - body_start, body_bytes);
        self.largest_record_bytes = self.largest_record_bytes.max(body_bytes);
        self.count += 1;
    }

    pub fn finish(self) -> Result<Batch, BatchError> {
        if self.count == 0 {
            return Err(BatchError::Empty);
        }
        if self.count > BATCH_RECORDS_MAX {
            return Err(BatchError::BadRecordCount(
                i32::try_from(self.count).unwrap_or(i32::MAX),
            ));
        }
        // A reader decompresses at most this much, so a batch past it could be
        // written but never read: every consumer would stall on it.
        if self.records.len() > DECOMPRESSED_BYTES_MAX {
            return Err(BatchError::RecordsTooLarge(self.records.len()));
        }
        // The payload is written right after room for the header, so that the records and
        // the batch are the only copies that exist at once.
        // Room for the worst case (incompressible records grow by a little), so that the
        // batch is never copied into a larger buffer as it is written.
        let room = self.records.len() + self.records.len() / 128 + 1024;
        let mut bytes = Vec::with_capacity(HEADER_BYTES + room);
        bytes.resize(HEADER_BYTES, 0);
        match self.compression {
            Compression::None => bytes.extend_from_slice(&self.records),
            Compression::Lz4 => {
                let mut encoder = lz4_flex::frame::FrameEncoder::new(bytes);
                encoder
                    .write_all(&self.records)
                    .expect("writing to a Vec cannot fail");
                bytes = encoder
                    .finish()
                    .expect("finishing an lz4 frame into a Vec cannot fail");
            }
            Compression::Zstd => bytes.extend_from_slice(
                &zstd::bulk::compress(&self.records, 3)
                    .map_err(|error| BatchError::Decompression(error.to_string()))?,
            ),
        }
        let total = bytes.len();
        if total > BATCH_BYTES_MAX {
            return Err(BatchError::TooLarge(total, BATCH_BYTES_MAX));
        }
        let mut header = Vec::with_capacity(HEADER_BYTES);
        header.extend_from_slice(&0i64.to_be_bytes());
        header.extend_from_slice(&((total - LOG_OVERHEAD_BYTES) as i32).to_be_bytes());
        header.extend_from_slice(&0i32.to_be_bytes());
        header.push(MAGIC);
        header.extend_from_slice(&0u32.to_be_bytes());
        let attributes = self.compression.attribute_bits() | TIMESTAMP_TYPE_LOG_APPEND;
        header.extend_from_slice(&attributes.to_be_bytes());
        header.extend_from_slice(&((self.count - 1) as i32).to_be_bytes());
        header.extend_from_slice(&0i64.to_be_bytes());
        header.extend_from_slice(&0i64.to_be_bytes());
        header.extend_from_slice(&self.producer_id.to_be_bytes());
        header.extend_from_slice(&self.producer_epoch.to_be_bytes());
        header.extend_from_slice(&self.base_sequence.to_be_bytes());
        header.extend_from_slice(&(self.count as i32).to_be_bytes());
        debug_assert_eq!(header.len(), HEADER_BYTES);
        bytes[..HEADER_BYTES].copy_from_slice(&header);
        let mut batch = Batch {
            bytes,
            batch_key: None,
            fingerprint: self.fingerprint,
            largest_record_bytes: self.largest_record_bytes,
            records_bytes: self.records.len(),
        };
        batch.batch_key = match self.batch_key {
            Some(key) => Some(key),
            None => batch.view().kafka_producer_key(),
        };
        batch.update_crc();
        Ok(batch)
    }
}

/// One whole batch, owned, with its header checked. What an append takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    bytes: Vec<u8>,
    batch_key: Option<String>,
    fingerprint: Option<Fingerprint>,
    largest_record_bytes: usize,
    /// The records' size before compression: what a reader must decompress.
    records_bytes: usize,
}

impl Batch {
    /// Validates bytes from outside (a client, a Kafka producer): header, CRC,
    /// and every record, so that what the log stores always decodes.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Batch, BatchError> {
        let view = BatchView::parse(&bytes)?;
        if view.len_bytes() != bytes.len() {
            return Err(BatchError::LengthMismatch {
                declared: view.len_bytes() as u64,
                available: bytes.len(),
            });
        }
        if bytes.len() > BATCH_BYTES_MAX {
            return Err(BatchError::TooLarge(bytes.len(), BATCH_BYTES_MAX));
        }
        view.verify_crc()?;
        let records = view.records()?;
        let records_bytes = records.data.len();
        let mut first_key = None;
        let mut fingerprint = None;
        let mut count = 0usize;
        let mut largest_record_bytes = 0;
        for (index, record) in records.iter().enumerate() {
            let record = record?;
            largest_record_bytes = largest_record_bytes.max(record.encoded_bytes);
            if record.offset_delta != index as i64 {
                return Err(BatchError::MalformedRecord {
                    index,
                    reason: "offset delta out of order",
                });
            }
            for header in record.headers() {
                let (name, value) = header?;
                if index == 0 && name == BATCH_KEY_HEADER.as_bytes() {
                    if value.len() > BATCH_KEY_BYTES_MAX {
                        return Err(BatchError::KeyTooLong(value.len()));
                    }
                    first_key = Some(String::from_utf8_lossy(value).into_owned());
                }
                if index == 0 && name == BATCH_FINGERPRINT_HEADER.as_bytes() {
                    fingerprint = Some(Fingerprint::try_from(value).map_err(|_| {
                        BatchError::MalformedRecord {
                            index,
                            reason: "a batch fingerprint is 16 bytes",
                        }
                    })?);
                }
            }
            count += 1;
        }
        if count != view.record_count() as usize {
            return Err(BatchError::BadRecordCount(view.record_count()));
        }
        let batch_key = first_key.or_else(|| view.kafka_producer_key());
        Ok(Batch {
            bytes,
            fingerprint: fingerprint.filter(|_| batch_key.is_some()),
            batch_key,
            largest_record_bytes,
            records_bytes,
        })
    }

    /// The encoded size of the largest record, for the per-record limit.
    pub fn largest_record_bytes(&self) -> usize {
        self.largest_record_bytes
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    pub fn view(&self) -> BatchView<'_> {
        BatchView { bytes: &self.bytes }
    }

    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    pub fn record_count(&self) -> i32 {
        self.view().record_count()
    }

    /// The key the log deduplicates this batch by, if any.
    pub fn batch_key(&self) -> Option<&str> {
        self.batch_key.as_deref()
    }

    /// What the batch key stands for, when the producer said.
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.fingerprint
    }

    /// The records' size before compression.
    pub fn records_bytes(&self) -> usize {
        self.records_bytes
    }

    /// Stamps what only the log that stores the batch knows (the offset and the
    /// append time) and recomputes the CRC, which covers the timestamps.
    pub fn stamp(&mut self, base_offset: i64, append_time_ms: i64) {
        self.bytes[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&base_offset.to_be_bytes());
        self.bytes[BASE_TIMESTAMP_AT..BASE_TIMESTAMP_AT + 8]
            .copy_from_slice(&append_time_ms.to_be_bytes());
        self.bytes[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8]
            .copy_from_slice(&append_time_ms.to_be_bytes());
        let attributes = self.view().attributes() | TIMESTAMP_TYPE_LOG_APPEND;
        self.bytes[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
        self.update_crc();
    }

    fn update_crc(&mut self) {
        let crc = crc32c::crc32c(&self.bytes[ATTRIBUTES_AT..]);
        self.bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    }
}

/// A borrowed batch whose header has been bounds-checked (not yet its CRC:
/// callers that serve data call [`BatchView::verify_crc`]).
#[derive(Clone, Copy, Debug)]
pub struct BatchView<'a> {
    bytes: &'a [u8],
}

impl<'a> BatchView<'a> {
    /// Parses the header of the batch at the start of `bytes`; `bytes` may hold
    /// more after it. Fails if the header is incomplete or inconsistent, or the
    /// batch extends past `bytes`.
    pub fn parse(bytes: &'a [u8]) -> Result<BatchView<'a>, BatchError> {
        let total = batch_len_from_prefix(bytes)?;
        if total > bytes.len() {
            return Err(BatchError::LengthMismatch {
                declared: total as u64,
                available: bytes.len(),
            });
        }
        let view = BatchView {
            bytes: &bytes[..total],
        };
        let magic = view.bytes[MAGIC_AT] as i8;
        if magic != MAGIC as i8 {
            return Err(BatchError::UnsupportedMagic(magic));
        }
        let count = view.record_count();
        if count <= 0 || count as usize > BATCH_RECORDS_MAX {
            return Err(BatchError::BadRecordCount(count));
        }
        if view.last_offset_delta() != count - 1 {
            return Err(BatchError::BadOffsetDelta {
                last_offset_delta: view.last_offset_delta(),
                count,
            });
        }
        view.compression()?;
        if view.attributes() & (TRANSACTIONAL_FLAG | CONTROL_FLAG) != 0 {
            return Err(BatchError::Transactional);
        }
        Ok(view)
    }

    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    pub fn base_offset(&self) -> i64 {
        read_i64(self.bytes, BASE_OFFSET_AT)
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset() + i64::from(self.last_offset_delta())
    }

    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }

    pub fn magic(&self) -> u8 {
        self.bytes[MAGIC_AT]
    }

    pub fn stored_crc(&self) -> u32 {
        u32::from_be_bytes(self.bytes[CRC_AT..CRC_AT + 4].try_into().expect("4 bytes"))
    }

    pub fn attributes(&self) -> u16 {
        u16::from_be_bytes(
            self.bytes[ATTRIBUTES_AT..ATTRIBUTES_AT + 2]
                .try_into()
                .expect("2 bytes"),
        )
    }

    pub fn last_offset_delta(&self) -> i32 {
        read_i32(self.bytes, LAST_OFFSET_DELTA_AT)
    }

    pub fn base_timestamp(&self) -> i64 {
        read_i64(self.bytes, BASE_TIMESTAMP_AT)
    }

    pub fn max_timestamp(&self) -> i64 {
        read_i64(self.bytes, MAX_TIMESTAMP_AT)
    }

    pub fn producer_id(&self) -> i64 {
        read_i64(self.bytes, PRODUCER_ID_AT)
    }

    pub fn producer_epoch(&self) -> i16 {
        i16::from_be_bytes(
            self.bytes[PRODUCER_EPOCH_AT..PRODUCER_EPOCH_AT + 2]
                .try_into()
                .expect("2"),
        )
    }

    pub fn base_sequence(&self) -> i32 {
        read_i32(self.bytes, BASE_SEQUENCE_AT)
    }

    pub fn record_count(&self) -> i32 {
        read_i32(self.bytes, RECORDS_COUNT_AT)
    }

    pub fn compression(&self) -> Result<Compression, BatchError> {
        match self.attributes() & COMPRESSION_MASK {
            0 => Ok(Compression::None),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            other => Err(BatchError::UnsupportedCompression(other)),
        }
    }

    pub fn verify_crc(&self) -> Result<(), BatchError> {
        let computed = crc32c::crc32c(&self.bytes[ATTRIBUTES_AT..]);
        let stored = self.stored_crc();
        if computed == stored {
            Ok(())
        } else {
            Err(BatchError::CrcMismatch { stored, computed })
        }
    }

    /// The records, decompressed if needed. Iterating decodes lazily; every
    /// malformed field is an error, never a panic.
    pub fn records(&self) -> Result<Records<'a>, BatchError> {
        let payload = &self.bytes[HEADER_BYTES..];
        let data = match self.compression()? {
            Compression::None => Cow::Borrowed(payload),
            Compression::Lz4 => Cow::Owned(decompress_bounded(
                lz4_flex::frame::FrameDecoder::new(payload),
                payload.len(),
            )?),
            Compression::Zstd => {
                let decoder = zstd::stream::read::Decoder::new(payload)
                    .map_err(|error| BatchError::Decompression(error.to_string()))?;
                Cow::Owned(decompress_bounded(decoder, payload.len())?)
            }
        };
        Ok(Records {
            data,
            count: self.record_count() as usize,
            base_offset: self.base_offset(),
            base_timestamp: self.base_timestamp(),
            max_timestamp: self.max_timestamp(),
            log_append_time: self.attributes() & TIMESTAMP_TYPE_LOG_APPEND != 0,
        })
    }

    /// The batch key of a batch read back: the header on its first record, or
    /// the Kafka producer identity.
    pub fn batch_key(&self) -> Result<Option<String>, BatchError> {
        self.batch_key_in(&self.records()?)
    }

    /// [`BatchView::batch_key`] from this batch's records already decompressed, for a reader
    /// that wants both without decompressing twice.
    pub fn batch_key_in(&self, records: &Records<'_>) -> Result<Option<String>, BatchError> {
        if let Some(first) = records.iter().next() {
            for header in first?.headers() {
                let (name, value) = header?;
                if name == BATCH_KEY_HEADER.as_bytes() {
                    return Ok(Some(String::from_utf8_lossy(value).into_owned()));
                }
            }
        }
        Ok(self.kafka_producer_key())
    }

    /// The fingerprint on the first record of `records` (this batch's), if any.
    pub fn fingerprint_in(&self, records: &Records<'_>) -> Result<Option<Fingerprint>, BatchError> {
        if let Some(first) = records.iter().next() {
            for header in first?.headers() {
                let (name, value) = header?;
                if name == BATCH_FINGERPRINT_HEADER.as_bytes() {
                    return Ok(Fingerprint::try_from(value).ok());
                }
            }
        }
        Ok(None)
    }

    fn kafka_producer_key(&self) -> Option<String> {
        (self.producer_id() >= 0).then(|| {
            format!(
                "kafka:{}:{}:{}",
                self.producer_id(),
                self.producer_epoch(),
                self.base_sequence()
            )
        })
    }
}

/// The total size of the batch that starts `bytes`, from its first 12 bytes.
/// Errors when fewer than [`HEADER_BYTES`] bytes are there or the length field
/// is out of range, which is how a torn tail shows itself.
pub fn batch_len_from_prefix(bytes: &[u8]) -> Result<usize, BatchError> {
    if bytes.len() < HEADER_BYTES {
        return Err(BatchError::TooShort(bytes.len()));
    }
    let declared = read_i32(bytes, BATCH_LENGTH_AT);
    let total = i64::from(declared) + LOG_OVERHEAD_BYTES as i64;
    if total < HEADER_BYTES as i64 || total > BATCH_BYTES_MAX as i64 {
        return Err(BatchError::LengthMismatch {
            declared: total.max(0) as u64,
            available: bytes.len(),
        });
    }
    Ok(total as usize)
}

/// The decoded records of one batch.
pub struct Records<'a> {
    data: Cow<'a, [u8]>,
    count: usize,
    base_offset: i64,
    base_timestamp: i64,
    max_timestamp: i64,
    log_append_time: bool,
}

impl Records<'_> {
    pub fn iter(&self) -> RecordIter<'_> {
        RecordIter {
            rest: &self.data,
            index: 0,
            records: self,
        }
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

pub struct RecordIter<'a> {
    rest: &'a [u8],
    index: usize,
    records: &'a Records<'a>,
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<Record<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.records.count {
            if !self.rest.is_empty() {
                self.index += 1;
                self.rest = &[];
                return Some(Err(BatchError::MalformedRecord {
                    index: self.records.count,
                    reason: "bytes after the last record",
                }));
            }
            return None;
        }
        let index = self.index;
        self.index += 1;
        match decode_record(&mut self.rest, self.records) {
            Ok(record) => Some(Ok(record)),
            Err(reason) => {
                // One malformed record ends the iteration: what follows it
                // cannot be framed.
                self.index = usize::MAX;
                self.rest = &[];
                Some(Err(BatchError::MalformedRecord { index, reason }))
            }
        }
    }
}

/// One record, borrowing from its batch.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    pub offset: i64,
    offset_delta: i64,
    /// The append time in milliseconds (for batches written by this log).
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    header_count: usize,
    headers: &'a [u8],
    encoded_bytes: usize,
}

impl<'a> Record<'a> {
    pub fn headers(&self) -> HeaderIter<'a> {
        HeaderIter {
            rest: self.headers,
            left: self.header_count,
        }
    }

    /// The value of the first header named `name`.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers()
            .filter_map(Result::ok)
            .find(|(header_name, _)| *header_name == name.as_bytes())
            .map(|(_, value)| value)
    }
}

pub struct HeaderIter<'a> {
    rest: &'a [u8],
    left: usize,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = Result<(&'a [u8], &'a [u8]), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let result = (|| {
            let name = take_sized(&mut self.rest)?.ok_or("null header name")?;
            let value = take_sized(&mut self.rest)?.unwrap_or(&[]);
            Ok((name, value))
        })();
        match result {
            Ok(pair) => Some(Ok(pair)),
            Err(reason) => {
                self.left = 0;
                Some(Err(BatchError::MalformedRecord { index: 0, reason }))
            }
        }
    }
}

fn decode_record<'a>(
    rest: &mut &'a [u8],
    records: &Records<'_>,
) -> Result<Record<'a>, &'static str> {
    let length = take_varint(rest)?;
    if length < 0 || length as usize > rest.len() {
        return Err("record length out of range");
    }
    let (mut body, after) = rest.split_at(length as usize);
    *rest = after;
    let (&_attributes, tail) = body.split_first().ok_or("record too short")?;
    body = tail;
    let timestamp_delta = take_varint(&mut body)?;
    let offset_delta = take_varint(&mut body)?;
    if !(0..=i64::from(i32::MAX)).contains(&offset_delta) {
        return Err("offset delta out of range");
    }
    let key = take_sized(&mut body)?;
    let value = take_sized(&mut body)?.unwrap_or(&[]);
    let header_count = take_varint(&mut body)?;
    if header_count < 0 || header_count as usize > body.len() {
        return Err("header count out of range");
    }
    // Headers are checked now so that iterating them later cannot fail on a
    // record that decoded.
    let headers = body;
    let mut check = HeaderIter {
        rest: headers,
        left: header_count as usize,
    };
    for header in &mut check {
        header.map_err(|_| "malformed header")?;
    }
    if !check.rest.is_empty() {
        return Err("bytes after the last header");
    }
    let timestamp_ms = if records.log_append_time {
        records.max_timestamp
    } else {
        records.base_timestamp.wrapping_add(timestamp_delta)
    };
    Ok(Record {
        offset: records.base_offset + offset_delta,
        offset_delta,
        timestamp_ms,
        key,
        value,
        header_count: header_count as usize,
        headers,
        encoded_bytes: length as usize,
    })
}

fn decompress_bounded(reader: impl Read, compressed_bytes: usize) -> Result<Vec<u8>, BatchError> {
    // Room for a typical ratio up front, so the output is rarely copied as it grows; the
    // bound still holds whatever the payload claims.
    let mut out = Vec::with_capacity((compressed_bytes * 4).min(DECOMPRESSED_BYTES_MAX));
    reader
        .take(DECOMPRESSED_BYTES_MAX as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|error| BatchError::Decompression(error.to_string()))?;
    if out.len() > DECOMPRESSED_BYTES_MAX {
        return Err(BatchError::DecompressionBomb);
    }
    Ok(out)
}

fn read_i64(bytes: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn read_i32(bytes: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Bytes of the zigzag varint encoding of `value`.
pub fn varint_bytes(value: i64) -> usize {
    let zigzag = ((value << 1) ^ (value >> 63)) as u64;
    let bits = 64 - (zigzag | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

pub fn put_varint(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.push((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as i64);
    out.extend_from_slice(bytes);
}

/// Decodes a zigzag varint of at most 10 bytes.
pub fn take_varint(rest: &mut &[u8]) -> Result<i64, &'static str> {
    let mut value: u64 = 0;
    for (index, &byte) in rest.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            *rest = &rest[index + 1..];
            return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    Err("truncated or overlong varint")
}

fn take_sized<'a>(rest: &mut &'a [u8]) -> Result<Option<&'a [u8]>, &'static str> {
    let length = take_varint(rest)?;
    if length == -1 {
        return Ok(None);
    }
    if length < 0 || length as usize > rest.len() {
        return Err("field length out of range");
    }
    let (field, after) = rest.split_at(length as usize);
    *rest = after;
    Ok(Some(field))
}

/// Whole batches read from one partition, in offset order, each checked (header and CRC)
/// by whoever read them.
#[derive(Clone, Debug, Default)]
pub struct ReadBatches {
    bytes: Vec<u8>,
}

impl ReadBatches {
    /// Batches back to back, as a reader that has parsed and checked each one hands them on.
    pub fn from_bytes(bytes: Vec<u8>) -> ReadBatches {
        ReadBatches { bytes }
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The batches; each was checked (header and CRC) when it was read.
    pub fn iter(&self) -> impl Iterator<Item = BatchView<'_>> {
        let mut rest = &self.bytes[..];
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let view = BatchView::parse(rest).expect("read batches were parsed when read");
            rest = &rest[view.len_bytes()..];
            Some(view)
        })
    }

    /// The offset after the last batch, where the next read starts.
    pub fn next_offset(&self) -> Option<i64> {
        self.iter().last().map(|view| view.next_offset())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn varints_round_trip_at_the_edges() {
        for value in [
            0i64,
            1,
            -1,
            63,
            -64,
            64,
            8191,
            -8192,
            i32::MAX as i64,
            i64::MAX,
            i64::MIN,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out.len(), varint_bytes(value), "{value}");
            let mut rest = &out[..];
            assert_eq!(take_varint(&mut rest), Ok(value));
            assert!(rest.is_empty());
        }
    }

    fn build(compression: Compression, key: Option<&str>, values: &[Vec<u8>]) -> Batch {
        let mut builder = BatchBuilder::new(compression);
        if let Some(key) = key {
            builder = builder.batch_key(key).unwrap();
        }
        for (index, value) in values.iter().enumerate() {
            let index_text = index.to_string();
            builder.push(
                Some(index_text.as_bytes()),
                value,
                &[("sender", b"2001:db8::1")],
            );
        }
        builder.finish().unwrap()
    }

    #[test]
    fn stamping_sets_offsets_and_times_and_keeps_the_crc_valid() {
        for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let mut batch = build(compression, Some("req-7"), &[b"a".to_vec(), b"bb".to_vec()]);
            batch.stamp(41, 1_700_000_000_123);
            let view = BatchView::parse(batch.as_bytes()).unwrap();
            view.verify_crc().unwrap();
            assert_eq!((view.base_offset(), view.last_offset()), (41, 42));
            assert_eq!(view.compression().unwrap(), compression);
            let records = view.records().unwrap();
            let decoded: Vec<_> = records.iter().map(Result::unwrap).collect();
            assert_eq!(decoded[1].offset, 42);
            assert_eq!(decoded[1].value, b"bb");
            assert_eq!(decoded[1].timestamp_ms, 1_700_000_000_123);
            assert_eq!(decoded[0].header(BATCH_KEY_HEADER), Some(&b"req-7"[..]));
            assert_eq!(decoded[1].header(BATCH_KEY_HEADER), None);
            assert_eq!(decoded[1].header("sender"), Some(&b"2001:db8::1"[..]));
            assert_eq!(view.batch_key().unwrap().as_deref(), Some("req-7"));
            assert_eq!(Batch::from_bytes(batch.as_bytes().to_vec()).unwrap(), batch);
        }
    }

    #[test]
    fn kafka_producer_identity_is_the_batch_key() {
        let mut builder = BatchBuilder::new(Compression::None).producer(7, 1, 100);
        builder.push(None, b"v", &[]);
        let batch = builder.finish().unwrap();
        assert_eq!(batch.batch_key(), Some("kafka:7:1:100"));
    }

    #[test]
    fn an_empty_batch_is_refused() {
        assert_eq!(
            BatchBuilder::new(Compression::None).finish(),
            Err(BatchError::Empty)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Batch::from_bytes(bytes.clone());
            if let Ok(view) = BatchView::parse(&bytes) {
                let _ = view.batch_key();
                if let Ok(records) = view.records() {
                    for record in records.iter().flatten() {
                        for header in record.headers() {
                            let _ = header;
                        }
                    }
                }
            }
        }

        #[test]
        fn any_flipped_bit_is_detected(
            values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..50), 1..20),
            codec in 0usize..3,
            bit in any::<proptest::sample::Index>(),
        ) {
            let compression = [Compression::None, Compression::Lz4, Compression::Zstd][codec];
            let mut batch = build(compression, Some("k"), &values);
            batch.stamp(5, 10);
            let mut bytes = batch.into_bytes();
            // Base offset, length, epoch and magic sit outside the CRC by design
            // (the log rewrites offsets in place); every byte from the CRC on is covered.
            let position = CRC_AT * 8 + bit.index((bytes.len() - CRC_AT) * 8);
            bytes[position / 8] ^= 1 << (position % 8);
            let detected = match BatchView::parse(&bytes) {
                Err(_) => true,
                Ok(view) => view.verify_crc().is_err(),
            };
            prop_assert!(detected);
        }

        #[test]
        fn built_batches_decode_to_what_was_pushed(
            records in proptest::collection::vec(
                (proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
                 proptest::collection::vec(any::<u8>(), 0..200)), 1..50),
            codec in 0usize..3,
        ) {
            let compression = [Compression::None, Compression::Lz4, Compression::Zstd][codec];
            let mut builder = BatchBuilder::new(compression);
            for (key, value) in &records {
                builder.push(key.as_deref(), value, &[("h", b"x")]);
            }
            let batch = Batch::from_bytes(builder.finish().unwrap().into_bytes()).unwrap();
            let view = batch.view();
            let decoded = view.records().unwrap();
            prop_assert_eq!(decoded.len(), records.len());
            for ((key, value), record) in records.iter().zip(decoded.iter()) {
                let record = record.unwrap();
                prop_assert_eq!(record.key, key.as_deref());
                prop_assert_eq!(record.value, &value[..]);
                prop_assert_eq!(record.header("h"), Some(&b"x"[..]));
            }
        }
    }
}
