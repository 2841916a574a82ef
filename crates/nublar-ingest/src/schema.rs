//! The schema registry: for every database and measurement, which columns
//! are tags and which are fields of which type, so that a field keeps one
//! type and a key is never both a tag and a field (InfluxDB 3 rejects both).
//!
//! The registry lives on the bus, not in the gateway, so that the gateway and
//! the lake share it without knowing each other and a gateway keeps no state
//! of its own: topic `_schemas`, one partition, kept forever (no retention).
//! Each record registers one column; no key, no headers; its value is JSON:
//!
//! ```json
//! {"db":"park","measurement":"weather","column":"temp_c","kind":"field","type":"float"}
//! {"db":"park","measurement":"weather","column":"station","kind":"tag"}
//! ```
//!
//! `kind` is `tag` or `field`; a field has a `type`, one of `float`,
//! `integer`, `unsigned`, `boolean`, `string`; a tag has none (tag values are
//! strings). The first record for a (db, measurement, column) in log order
//! decides; a later record for the same column (only a race between two
//! gateways on a shared bus can write one) is ignored by every reader.
//!
//! A gateway rebuilds its cache from the topic at start-up and checks each
//! request against it without a lock beyond a read lock. A request that
//! introduces columns takes the registration lock, catches up with the topic
//! (another gateway may have registered them), appends its new columns as one
//! batch, catches up again, and checks once more: so the verdict is always the
//! one the log's order gives, even when gateways race.

use std::collections::HashMap;
use std::fmt;
use std::sync::RwLock;

use nublar_bus::{BatchBuilder, Bus, BusError, Compression, Start, TopicConfig};
use nublar_model::{ColumnKind, FieldType, ParsedLine};
use serde::{Deserialize, Serialize};

/// The topic the registry is kept in.
pub const SCHEMAS_TOPIC: &str = "_schemas";

/// Why a line does not fit the schema.
#[derive(Debug)]
pub struct LineConflict {
    /// The metric label and dead letter reason.
    pub reason: &'static str,
    /// What the client is told: the column, its table and database, what the registry knows
    /// and what the line has.
    pub message: String,
}

/// The columns a request introduces, in the order it introduces them: registered together
/// before its batch is appended, so that a request that stores nothing registers nothing.
#[derive(Default)]
pub struct Pending {
    /// measurement → column → kind.
    tables: HashMap<String, HashMap<String, ColumnKind>>,
    columns: Vec<(String, String, ColumnKind)>,
    bytes: usize,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// The new columns, in the order the request introduced them: (measurement, column, kind).
    pub fn columns(&self) -> impl Iterator<Item = (&str, &str, ColumnKind)> {
        self.columns
            .iter()
            .map(|(measurement, column, kind)| (measurement.as_str(), column.as_str(), *kind))
    }

    fn get(&self, measurement: &str, column: &str) -> Option<ColumnKind> {
        self.tables.get(measurement)?.get(column).copied()
    }
}

/// What registering a request's columns came to.
pub(crate) enum Registered {
    Done,
    /// Another request (or gateway) registered one of the columns first with another kind,
    /// or filled the registry, while this request was being read: its lines were checked
    /// against a schema that no longer holds. Nothing of it may be stored; sent again, it is
    /// checked against the schema as it is now.
    Raced(String),
}

/// What a column costs the registry beyond its names: its entries in the maps, about.
pub const COLUMN_OVERHEAD_BYTES: usize = 96;

/// What registering a column counts against the registry's byte bounds.
fn column_cost(db: &str, measurement: &str, column: &str) -> usize {
    db.len() + measurement.len() + column.len() + COLUMN_OVERHEAD_BYTES
}

/// The registry's bounds: columns in all, bytes in all, and bytes per database, so that one
/// database's writes cannot fill it for the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub columns_max: usize,
    pub bytes_max: usize,
    pub database_bytes_max: usize,
}

pub(crate) const FIELD_TYPE_CONFLICT: &str = "field_type_conflict";
pub(crate) const COLUMN_KIND_CONFLICT: &str = "column_kind_conflict";
pub(crate) const TOO_MANY_COLUMNS: &str = "too_many_columns";

/// The per-gateway cache of the `_schemas` topic, and the lock that
/// serialises this gateway's registrations.
pub(crate) struct SchemaRegistry {
    known: RwLock<Schema>,
    /// Held while registering; holds the next offset of `_schemas` to read.
    registering: tokio::sync::Mutex<i64>,
}

/// What the registry knows, without the topic it is kept in: every column of every table,
/// within the registry's bounds. Checking a line against it is a function of the line and
/// this value alone, which is what lets the gateway's admission run without I/O.
pub struct Schema {
    databases: HashMap<String, Database>,
    columns: usize,
    bytes: usize,
    /// Whether a record was already ignored for a bound (warned once).
    full_warned: bool,
    bounds: Bounds,
}

/// The schema as admission sees it: checks a line, and tells a JSON decoder what a field
/// is known to be. The gateway's registry is one (read under its lock, line by line); a
/// plain [`Schema`] is another.
pub trait SchemaView {
    /// Checks one line against the schema and the columns its request introduced before it
    /// (`pending`), adding the columns it introduces: the first line of a request to use a
    /// column new to the schema decides its kind.
    fn check_line(
        &self,
        db: &str,
        line: &ParsedLine<'_>,
        pending: &mut Pending,
    ) -> Result<(), LineConflict>;

    /// The type a field is known to have, for decoders that must choose between types (a
    /// JSON number: integer or float).
    fn known_field_type(&self, db: &str, measurement: &str, field: &str) -> Option<FieldType>;
}

#[derive(Default)]
struct Database {
    /// measurement → column → kind.
    tables: HashMap<String, HashMap<String, ColumnKind>>,
    bytes: usize,
}

impl Schema {
    fn database_bytes(&self, db: &str) -> usize {
        self.databases.get(db).map_or(0, |database| database.bytes)
    }

    /// Why `count` more columns costing `bytes` (of database `db`) do not fit, if they do not.
    fn room(&self, db: &str, count: usize, bytes: usize) -> Option<String> {
        let bounds = &self.bounds;
        if self.columns + count > bounds.columns_max {
            Some(format!(
                "the schema registry holds its maximum of {} columns",
                bounds.columns_max
            ))
        } else if self.bytes + bytes > bounds.bytes_max {
            Some(format!(
                "the schema registry holds its maximum of {} bytes of names",
                bounds.bytes_max
            ))
        } else if self.database_bytes(db) + bytes > bounds.database_bytes_max {
            Some(format!(
                "database {db:?} holds its share of the schema registry, {} bytes of names",
                bounds.database_bytes_max
            ))
        } else {
            None
        }
    }
}

/// One record of `_schemas`, as stored.
#[derive(Serialize, Deserialize)]
struct SchemaRecord<'a> {
    #[serde(borrow)]
    db: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    measurement: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    column: std::borrow::Cow<'a, str>,
    kind: &'a str,
    #[serde(
        rename = "type",
        skip_serializing_if = "Option::is_none",
        default,
        borrow
    )]
    field_type: Option<&'a str>,
}

/// Bytes asked of the bus per read while catching up.
const READ_BYTES: usize = 1 << 20;

impl SchemaRegistry {
    /// The topic's configuration: one partition, so that log order is one
    /// order; never deleted by retention, since a lost registration would
    /// let a conflicting type in.
    pub(crate) fn topic_config() -> TopicConfig {
        TopicConfig {
            partitions: 1,
            retention_ms: None,
            retention_bytes: None,
            ..TopicConfig::default()
        }
    }

    /// Creates the topic if needed and reads it from the start.
    pub(crate) async fn open(bus: &dyn Bus, bounds: Bounds) -> Result<Self, BusError> {
        bus.ensure_topic(SCHEMAS_TOPIC, Self::topic_config())
            .await?;
        let registry = SchemaRegistry {
            known: RwLock::new(Schema::new(bounds)),
            registering: tokio::sync::Mutex::new(0),
        };
        {
            let mut next = registry.registering.lock().await;
            registry.catch_up(bus, &mut next).await?;
        }
        Ok(registry)
    }

    /// Registers the columns a request introduced, before its batch is appended. Catches up
    /// with the topic first (another request or gateway may have registered some of them),
    /// and again after appending (a racing gateway's record appended just before ours wins):
    /// if either shows a column of another kind, or the registry full, the request was
    /// checked against a schema that no longer holds.
    pub(crate) async fn register(
        &self,
        bus: &dyn Bus,
        db: &str,
        pending: &Pending,
    ) -> Result<Registered, BusError> {
        if pending.is_empty() {
            return Ok(Registered::Done);
        }
        let mut next = self.registering.lock().await;
        self.catch_up(bus, &mut next).await?;
        let mut missing = Vec::new();
        {
            let known = self.known.read().unwrap();
            let mut bytes = 0;
            for (measurement, column, kind) in &pending.columns {
                match known.get(db, measurement, column) {
                    Some(registered) if registered == *kind => {}
                    Some(registered) => {
                        return Ok(Registered::Raced(conflict_message(
                            db,
                            measurement,
                            column,
                            registered,
                            *kind,
                        )));
                    }
                    None => {
                        bytes += column_cost(db, measurement, column);
                        missing.push((measurement, column, *kind));
                    }
                }
            }
            if let Some(full) = known.room(db, missing.len(), bytes) {
                return Ok(Registered::Raced(full));
            }
        }
        if missing.is_empty() {
            return Ok(Registered::Done);
        }
        let mut builder = BatchBuilder::new(Compression::None);
        for (measurement, column, kind) in missing {
            let (kind, field_type) = match kind {
                ColumnKind::Tag => ("tag", None),
                ColumnKind::Field(field_type) => {
                    ("field", Some(FieldType::stored_name(field_type)))
                }
            };
            let record = SchemaRecord {
                db: db.into(),
                measurement: measurement.as_str().into(),
                column: column.as_str().into(),
                kind,
                field_type,
            };
            let value = serde_json::to_vec(&record).expect("a schema record serialises");
            builder.push(None, &value, &[]);
        }
        let batch = builder
            .finish()
            .map_err(|error| BusError::Invalid(format!("schema registrations: {error}")))?;
        bus.append(SCHEMAS_TOPIC, 0, batch).await?;
        self.catch_up(bus, &mut next).await?;
        let known = self.known.read().unwrap();
        for (measurement, column, kind) in &pending.columns {
            match known.get(db, measurement, column) {
                Some(registered) if registered == *kind => {}
                Some(registered) => {
                    return Ok(Registered::Raced(conflict_message(
                        db,
                        measurement,
                        column,
                        registered,
                        *kind,
                    )));
                }
                None => {
                    return Ok(Registered::Raced(format!(
                        "the schema registry filled before column {column:?} of \
                         {measurement:?} could be registered"
                    )));
                }
            }
        }
        Ok(Registered::Done)
    }

    /// Applies the records of `_schemas` from `*next` to its end.
    async fn catch_up(&self, bus: &dyn Bus, next: &mut i64) -> Result<(), BusError> {
        let range = bus.offsets(SCHEMAS_TOPIC, 0).await?;
        *next = (*next).max(range.start);
        while *next < range.end {
            let batches = bus
                .read(SCHEMAS_TOPIC, 0, Start::Offset(*next), READ_BYTES)
                .await?;
            if batches.is_empty() {
                break;
            }
            let mut known = self.known.write().unwrap();
            for view in batches.iter() {
                let records = view.records().map_err(corrupt)?;
                for record in records.iter() {
                    let record = record.map_err(corrupt)?;
                    if record.offset >= *next {
                        known.apply(record.value);
                    }
                }
                *next = (*next).max(view.next_offset());
            }
        }
        Ok(())
    }
}

impl SchemaView for SchemaRegistry {
    fn check_line(
        &self,
        db: &str,
        line: &ParsedLine<'_>,
        pending: &mut Pending,
    ) -> Result<(), LineConflict> {
        self.known.read().unwrap().check_line(db, line, pending)
    }

    fn known_field_type(&self, db: &str, measurement: &str, field: &str) -> Option<FieldType> {
        self.known
            .read()
            .unwrap()
            .known_field_type(db, measurement, field)
    }
}

impl SchemaView for Schema {
    fn check_line(
        &self,
        db: &str,
        line: &ParsedLine<'_>,
        pending: &mut Pending,
    ) -> Result<(), LineConflict> {
        let known = self;
        let measurement: &str = &line.measurement;
        let table = known
            .databases
            .get(db)
            .and_then(|database| database.tables.get(measurement));
        let columns = line
            .tags
            .iter()
            .map(|tag| (tag.key.as_ref(), ColumnKind::Tag))
            .chain(line.fields.iter().map(|field| {
                (
                    field.key.as_ref(),
                    ColumnKind::Field(field.value.field_type()),
                )
            }));
        // The new columns of this line, found without allocating for the usual line, whose
        // columns are all known.
        let mut new: Vec<(&str, ColumnKind)> = Vec::new();
        for (column, got) in columns {
            let known_kind = table
                .and_then(|table| table.get(column).copied())
                .or_else(|| pending.get(measurement, column));
            match known_kind {
                Some(kind) if kind == got => {}
                Some(kind) => {
                    let reason = match (kind, got) {
                        (ColumnKind::Field(_), ColumnKind::Field(_)) => FIELD_TYPE_CONFLICT,
                        _ => COLUMN_KIND_CONFLICT,
                    };
                    return Err(LineConflict {
                        reason,
                        message: conflict_message(db, measurement, column, kind, got),
                    });
                }
                None if new.iter().any(|(seen, _)| *seen == column) => {}
                None => new.push((column, got)),
            }
        }
        if new.is_empty() {
            return Ok(());
        }
        let cost: usize = new
            .iter()
            .map(|(column, _)| column_cost(db, measurement, column))
            .sum();
        if let Some(full) = known.room(db, pending.columns.len() + new.len(), pending.bytes + cost)
        {
            let (column, _) = new[0];
            return Err(LineConflict {
                reason: TOO_MANY_COLUMNS,
                message: format!(
                    "column {column:?} of measurement {measurement:?} in database {db:?} is new, \
                     but {full}; no new column is accepted"
                ),
            });
        }
        for (column, kind) in new {
            pending
                .tables
                .entry(measurement.to_owned())
                .or_default()
                .insert(column.to_owned(), kind);
            pending
                .columns
                .push((measurement.to_owned(), column.to_owned(), kind));
        }
        pending.bytes += cost;
        Ok(())
    }

    fn known_field_type(&self, db: &str, measurement: &str, field: &str) -> Option<FieldType> {
        match self.get(db, measurement, field)? {
            ColumnKind::Field(field_type) => Some(field_type),
            ColumnKind::Tag => None,
        }
    }
}

impl Schema {
    /// An empty schema that holds at most what `bounds` allow.
    pub fn new(bounds: Bounds) -> Schema {
        Schema {
            databases: HashMap::new(),
            columns: 0,
            bytes: 0,
            full_warned: false,
            bounds,
        }
    }

    /// Registers a request's new columns as the registry would once their record is read
    /// back: a column already known keeps its kind.
    pub fn register(&mut self, db: &str, pending: &Pending) {
        for (measurement, column, kind) in pending.columns() {
            self.add(db, measurement, column, kind);
        }
    }

    fn get(&self, db: &str, measurement: &str, column: &str) -> Option<ColumnKind> {
        self.databases
            .get(db)?
            .tables
            .get(measurement)?
            .get(column)
            .copied()
    }

    /// One record of `_schemas`: the first registration of a column wins.
    /// A record that does not parse is skipped with a warning rather than
    /// stopping the gateway: it registers nothing for anyone.
    fn apply(&mut self, value: &[u8]) {
        let Some((record, kind)) = serde_json::from_slice::<SchemaRecord<'_>>(value)
            .ok()
            .and_then(|record| {
                let kind = match (record.kind, record.field_type) {
                    ("tag", None) => ColumnKind::Tag,
                    ("field", Some(name)) => ColumnKind::Field(FieldType::from_stored_name(name)?),
                    _ => return None,
                };
                Some((record, kind))
            })
        else {
            tracing::warn!(
                "ignoring a malformed {SCHEMAS_TOPIC} record: {}",
                String::from_utf8_lossy(value)
            );
            return;
        };
        self.add(&record.db, &record.measurement, &record.column, kind);
    }

    /// One column, unless it is known already (the first registration wins) or the bounds
    /// are reached.
    fn add(&mut self, db: &str, measurement: &str, column: &str, kind: ColumnKind) {
        if self.get(db, measurement, column).is_some() {
            return;
        }
        let cost = column_cost(db, measurement, column);
        if let Some(full) = self.room(db, 1, cost) {
            if !self.full_warned {
                tracing::warn!(
                    "{full}; further columns are ignored and writes introducing them rejected"
                );
                self.full_warned = true;
            }
            return;
        }
        let database = self.databases.entry(db.to_owned()).or_default();
        database
            .tables
            .entry(measurement.to_owned())
            .or_default()
            .insert(column.to_owned(), kind);
        database.bytes += cost;
        self.columns += 1;
        self.bytes += cost;
    }
}

/// What the client is told when `column` of `measurement` in `db` is `known` to the
/// registry and the line has `got`.
fn conflict_message(
    db: &str,
    measurement: &str,
    column: &str,
    known: ColumnKind,
    got: ColumnKind,
) -> String {
    match (known, got) {
        (ColumnKind::Field(known), ColumnKind::Field(got)) => format!(
            "field {column:?} of measurement {measurement:?} is {} in database {db:?}; got {}",
            known.name(),
            got.name()
        ),
        (ColumnKind::Field(known), ColumnKind::Tag) => format!(
            "tag {column:?} of measurement {measurement:?} is a field ({}) in database \
             {db:?}; a key cannot be both tag and field",
            known.name()
        ),
        (ColumnKind::Tag, _) => format!(
            "field {column:?} of measurement {measurement:?} is a tag in database {db:?}; \
             a key cannot be both tag and field"
        ),
    }
}

fn corrupt(error: impl fmt::Display) -> BusError {
    BusError::Corruption(format!("{SCHEMAS_TOPIC}: {error}"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use nublar_bus::MemoryBus;
    use nublar_model::{ParseLimits, Precision, parse_lines};

    use super::*;

    fn parse(body: &str) -> Vec<(usize, ParsedLine<'_>)> {
        parse_lines(body.as_bytes(), Precision::Ns, ParseLimits::default())
            .map(|(number, line)| (number, line.unwrap()))
            .collect()
    }

    fn bus() -> Arc<dyn Bus> {
        MemoryBus::new().into_shared()
    }

    fn bounds(columns_max: usize) -> Bounds {
        Bounds {
            columns_max,
            bytes_max: usize::MAX / 2,
            database_bytes_max: usize::MAX / 2,
        }
    }

    /// (line number, reason) of each conflict, as a request gets them: every line checked,
    /// then its new columns registered; a request that raced another is sent again.
    async fn register(
        registry: &SchemaRegistry,
        bus: &Arc<dyn Bus>,
        db: &str,
        body: &str,
    ) -> Vec<(usize, &'static str)> {
        for _ in 0..2 {
            let (conflicts, pending) = check(registry, db, body);
            match registry.register(bus.as_ref(), db, &pending).await.unwrap() {
                Registered::Done => return conflicts,
                Registered::Raced(_) => continue,
            }
        }
        panic!("raced twice")
    }

    fn check(
        registry: &SchemaRegistry,
        db: &str,
        body: &str,
    ) -> (Vec<(usize, &'static str)>, Pending) {
        let mut pending = Pending::default();
        let mut conflicts = Vec::new();
        for (number, line) in parse(body) {
            if let Err(conflict) = registry.check_line(db, &line, &mut pending) {
                conflicts.push((number, conflict.reason));
            }
        }
        (conflicts, pending)
    }

    #[tokio::test]
    async fn past_the_column_bound_new_columns_are_rejected() {
        let bus = bus();
        let registry = SchemaRegistry::open(bus.as_ref(), bounds(3)).await.unwrap();
        let body = "m,t=a f=1 1\nm g=1,h=2 2\nm f=2,g=3 3\nm,t=b f=3 4\nn x=1 5\n";
        let conflicts = register(&registry, &bus, "db", body).await;
        // Lines 1 and 3 bring three columns; 2 and 5 would pass the bound.
        assert_eq!(conflicts, [(2, TOO_MANY_COLUMNS), (5, TOO_MANY_COLUMNS)]);
        let mut pending = Pending::default();
        let line = parse("n x=1 5\n").remove(0).1;
        let conflict = registry.check_line("db", &line, &mut pending).unwrap_err();
        assert!(
            conflict.message.contains("maximum of 3 columns"),
            "{}",
            conflict.message
        );
        // Read back with the same bound, the registry holds the same columns.
        let reopened = SchemaRegistry::open(bus.as_ref(), bounds(3)).await.unwrap();
        assert_eq!(reopened.known.read().unwrap().columns, 3);
        assert_eq!(
            register(&reopened, &bus, "db", "m,t=c f=4,g=5 6\n").await,
            []
        );
    }

    #[tokio::test]
    async fn the_first_registration_in_log_order_wins_over_a_racing_one() {
        let bus = bus();
        let registry = SchemaRegistry::open(bus.as_ref(), bounds(100))
            .await
            .unwrap();
        // What two gateways racing on a shared bus can leave: the same column
        // registered twice, with different types, and a malformed record.
        let mut builder = BatchBuilder::new(Compression::None);
        for value in [
            r#"{"db":"d","measurement":"m","column":"f","kind":"field","type":"integer"}"#,
            r#"{"db":"d","measurement":"m","column":"f","kind":"field","type":"float"}"#,
            r#"{"db":"d","measurement":"m","column":"f","kind":"tag"}"#,
            r#"{"db":"d","measurement":"m","column":"g","kind":"field","type":"complex"}"#,
        ] {
            builder.push(None, value.as_bytes(), &[]);
        }
        bus.append(SCHEMAS_TOPIC, 0, builder.finish().unwrap())
            .await
            .unwrap();
        // A gateway that has not seen those records yet (its cache is stale)
        // catches up before registering, so it cannot register `f` again.
        assert_eq!(
            register(&registry, &bus, "d", "m f=1.5 1\nm f=2i,g=1.5 2\n").await,
            [(1, FIELD_TYPE_CONFLICT)]
        );
        let reopened = SchemaRegistry::open(bus.as_ref(), bounds(100))
            .await
            .unwrap();
        let known = reopened.known.read().unwrap();
        assert_eq!(
            known.get("d", "m", "f"),
            Some(ColumnKind::Field(FieldType::I64))
        );
        assert_eq!(
            known.get("d", "m", "g"),
            Some(ColumnKind::Field(FieldType::F64))
        );
        assert_eq!(known.columns, 2);
    }

    #[tokio::test]
    async fn names_are_bounded_in_bytes_and_each_database_has_its_share() {
        let bus = bus();
        let bounds = Bounds {
            columns_max: 100_000,
            bytes_max: 40 * 1024,
            database_bytes_max: 16 * 1024,
        };
        let registry = SchemaRegistry::open(bus.as_ref(), bounds).await.unwrap();
        // Columns of 1 KiB names: a database's share is about fifteen of them.
        let wide = |index: usize| format!("m {}{index}=1 1\n", "c".repeat(1024));
        let body: String = (0..20).map(wide).collect();
        let conflicts = register(&registry, &bus, "a", &body).await;
        let refused = conflicts.len();
        assert!((4..=6).contains(&refused), "{conflicts:?}");
        let (_, pending) = check(&registry, "a", &wide(99));
        assert!(pending.is_empty());
        let mut pending = Pending::default();
        let text = wide(99);
        let line = parse(&text).remove(0).1;
        let message = registry
            .check_line("a", &line, &mut pending)
            .unwrap_err()
            .message;
        assert!(
            message.contains("share of the schema registry"),
            "{message}"
        );
        // Another database still has its own.
        assert_eq!(register(&registry, &bus, "b", &wide(1)).await, []);
        // All together are bounded too.
        for db in ["c", "d"] {
            register(&registry, &bus, db, &body).await;
        }
        let bytes = registry.known.read().unwrap().bytes;
        assert!(bytes <= bounds.bytes_max, "{bytes}");
        // What the registry read back from the bus obeys the same bounds.
        let reopened = SchemaRegistry::open(bus.as_ref(), bounds).await.unwrap();
        assert!(reopened.known.read().unwrap().bytes <= bounds.bytes_max);
    }
}
