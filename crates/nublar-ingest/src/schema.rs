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
use nublar_model::{FieldType, ParsedLine};
use serde::{Deserialize, Serialize};

/// The topic the registry is kept in.
pub const SCHEMAS_TOPIC: &str = "_schemas";

/// What a column of a table is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnKind {
    Tag,
    Field(FieldType),
}

/// Why a line does not fit the schema, borrowing its names from the line.
pub(crate) struct Conflict<'a> {
    /// Index of the line in the slice that was checked.
    pub index: usize,
    /// The metric label and dead letter reason.
    pub reason: &'static str,
    db: &'a str,
    measurement: &'a str,
    column: &'a str,
    /// What the registry says; `None` when the column is new but the
    /// registry is full.
    known: Option<ColumnKind>,
    got: ColumnKind,
}

pub(crate) const FIELD_TYPE_CONFLICT: &str = "field_type_conflict";
pub(crate) const COLUMN_KIND_CONFLICT: &str = "column_kind_conflict";
pub(crate) const TOO_MANY_COLUMNS: &str = "too_many_columns";

/// The per-gateway cache of the `_schemas` topic, and the lock that
/// serialises this gateway's registrations.
pub(crate) struct SchemaRegistry {
    known: RwLock<Known>,
    /// Held while registering; holds the next offset of `_schemas` to read.
    registering: tokio::sync::Mutex<i64>,
    columns_max: usize,
}

#[derive(Default)]
struct Known {
    /// db → measurement → column → kind.
    databases: HashMap<String, HashMap<String, HashMap<String, ColumnKind>>>,
    columns: usize,
    /// Whether a record was already ignored for the bound (warned once).
    full_warned: bool,
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

/// What one check found: the lines that do not fit, and the columns the
/// fitting lines would add, in the order the request introduces them.
struct Verdict<'a> {
    conflicts: Vec<Conflict<'a>>,
    new_columns: Vec<(&'a str, &'a str, ColumnKind)>,
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
    pub(crate) async fn open(bus: &dyn Bus, columns_max: usize) -> Result<Self, BusError> {
        bus.ensure_topic(SCHEMAS_TOPIC, Self::topic_config())
            .await?;
        let registry = SchemaRegistry {
            known: RwLock::new(Known::default()),
            registering: tokio::sync::Mutex::new(0),
            columns_max,
        };
        {
            let mut next = registry.registering.lock().await;
            registry.catch_up(bus, &mut next).await?;
        }
        Ok(registry)
    }

    /// Checks `lines` (with their line numbers) against the registry and
    /// registers the columns the fitting lines introduce, the first line of
    /// the request deciding for a column new in it. Returns the lines that
    /// do not fit. With `all_or_nothing`, a request with any line that does
    /// not fit stores nothing, so it registers nothing either. A column
    /// registered by a request whose batch then fails to append stays
    /// registered: the first request to get that far decided its type.
    pub(crate) async fn check_and_register<'a>(
        &self,
        bus: &dyn Bus,
        db: &'a str,
        lines: &'a [(usize, ParsedLine<'_>)],
        all_or_nothing: bool,
    ) -> Result<Vec<Conflict<'a>>, BusError> {
        let verdict = self.check(db, lines, true);
        let nothing_to_store = all_or_nothing && !verdict.conflicts.is_empty();
        if verdict.new_columns.is_empty() || nothing_to_store {
            return Ok(verdict.conflicts);
        }
        let mut next = self.registering.lock().await;
        // Another request, or another gateway, may have registered some of
        // these columns since the check above.
        self.catch_up(bus, &mut next).await?;
        let verdict = self.check(db, lines, true);
        let nothing_to_store = all_or_nothing && !verdict.conflicts.is_empty();
        if verdict.new_columns.is_empty() || nothing_to_store {
            return Ok(verdict.conflicts);
        }
        let mut builder = BatchBuilder::new(Compression::None);
        for &(measurement, column, kind) in &verdict.new_columns {
            let (kind, field_type) = match kind {
                ColumnKind::Tag => ("tag", None),
                ColumnKind::Field(field_type) => {
                    ("field", Some(FieldType::stored_name(field_type)))
                }
            };
            let record = SchemaRecord {
                db: db.into(),
                measurement: measurement.into(),
                column: column.into(),
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
        // Read our own records back in log order: a racing gateway's record
        // for the same column, appended just before ours, wins over ours.
        self.catch_up(bus, &mut next).await?;
        Ok(self.check(db, lines, false).conflicts)
    }

    /// The type a field is known to have, for decoders that must choose
    /// between types (a JSON number: integer or float).
    pub(crate) fn known_field_type(
        &self,
        db: &str,
        measurement: &str,
        field: &str,
    ) -> Option<nublar_model::FieldType> {
        let known = self.known.read().unwrap();
        match known.databases.get(db)?.get(measurement)?.get(field)? {
            ColumnKind::Field(field_type) => Some(*field_type),
            ColumnKind::Tag => None,
        }
    }

    /// The lines that do not fit the schema as known now, registering
    /// nothing: for a request that stores nothing anyway.
    pub(crate) fn check_only<'a>(
        &self,
        db: &'a str,
        lines: &'a [(usize, ParsedLine<'_>)],
    ) -> Vec<Conflict<'a>> {
        self.check(db, lines, true).conflicts
    }

    /// Checks without registering. With `allow_new` false a column still
    /// unknown (only possible when the registry is full) rejects its line.
    fn check<'a>(
        &self,
        db: &'a str,
        lines: &'a [(usize, ParsedLine<'_>)],
        allow_new: bool,
    ) -> Verdict<'a> {
        let known = self.known.read().unwrap();
        let tables = known.databases.get(db);
        let mut pending: HashMap<(&'a str, &'a str), ColumnKind> = HashMap::new();
        let mut verdict = Verdict {
            conflicts: Vec::new(),
            new_columns: Vec::new(),
        };
        let mut line_new: Vec<(&'a str, &'a str, ColumnKind)> = Vec::new();
        for (index, (_, line)) in lines.iter().enumerate() {
            let measurement: &'a str = &line.measurement;
            let table = tables.and_then(|tables| tables.get(measurement));
            let lookup = |column: &str| {
                table
                    .and_then(|table| table.get(column).copied())
                    .or_else(|| pending.get(&(measurement, column)).copied())
            };
            line_new.clear();
            let mut conflict = None;
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
            for (column, got) in columns {
                match lookup(column) {
                    Some(known) if known == got => {}
                    Some(known) => {
                        let reason = match (known, got) {
                            (ColumnKind::Field(_), ColumnKind::Field(_)) => FIELD_TYPE_CONFLICT,
                            _ => COLUMN_KIND_CONFLICT,
                        };
                        conflict = Some((reason, column, Some(known), got));
                        break;
                    }
                    None => line_new.push((measurement, column, got)),
                }
            }
            if conflict.is_none()
                && let Some(&(_, column, got)) = line_new.first()
                && (!allow_new || known.columns + pending.len() + line_new.len() > self.columns_max)
            {
                conflict = Some((TOO_MANY_COLUMNS, column, None, got));
            }
            match conflict {
                Some((reason, column, known, got)) => verdict.conflicts.push(Conflict {
                    index,
                    reason,
                    db,
                    measurement,
                    column,
                    known,
                    got,
                }),
                None => {
                    for &(measurement, column, kind) in &line_new {
                        pending.insert((measurement, column), kind);
                        verdict.new_columns.push((measurement, column, kind));
                    }
                }
            }
        }
        verdict
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
                        known.apply(record.value, self.columns_max);
                    }
                }
                *next = (*next).max(view.next_offset());
            }
        }
        Ok(())
    }
}

impl Known {
    fn get(&self, db: &str, measurement: &str, column: &str) -> Option<ColumnKind> {
        self.databases
            .get(db)?
            .get(measurement)?
            .get(column)
            .copied()
    }

    /// One record of `_schemas`: the first registration of a column wins.
    /// A record that does not parse is skipped with a warning rather than
    /// stopping the gateway: it registers nothing for anyone.
    fn apply(&mut self, value: &[u8], columns_max: usize) {
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
        if self
            .get(&record.db, &record.measurement, &record.column)
            .is_some()
        {
            return;
        }
        if self.columns >= columns_max {
            if !self.full_warned {
                tracing::warn!(
                    "the schema registry holds its maximum of {columns_max} columns; \
                     further columns are ignored and writes introducing them rejected"
                );
                self.full_warned = true;
            }
            return;
        }
        self.databases
            .entry(record.db.into_owned())
            .or_default()
            .entry(record.measurement.into_owned())
            .or_default()
            .insert(record.column.into_owned(), kind);
        self.columns += 1;
    }
}

impl Conflict<'_> {
    /// The reason given to the client, naming the column, its table and
    /// database, what the registry knows and what the line has.
    pub(crate) fn message(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Conflict<'_> {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Conflict {
            db,
            measurement,
            column,
            known,
            got,
            ..
        } = self;
        match (known, got) {
            (Some(ColumnKind::Field(known)), ColumnKind::Field(got)) => write!(
                out,
                "field {column:?} of measurement {measurement:?} is {} in database {db:?}; \
                 got {}",
                known.name(),
                got.name()
            ),
            (Some(ColumnKind::Field(known)), ColumnKind::Tag) => write!(
                out,
                "tag {column:?} of measurement {measurement:?} is a field ({}) in database \
                 {db:?}; a key cannot be both tag and field",
                known.name()
            ),
            (Some(ColumnKind::Tag), _) => write!(
                out,
                "field {column:?} of measurement {measurement:?} is a tag in database {db:?}; \
                 a key cannot be both tag and field"
            ),
            (None, _) => write!(
                out,
                "column {column:?} of measurement {measurement:?} in database {db:?} is new, \
                 but the schema registry is full; no new column is accepted"
            ),
        }
    }
}

fn corrupt(error: impl fmt::Display) -> BusError {
    BusError::Corruption(format!("{SCHEMAS_TOPIC}: {error}"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use nublar_bus::EmbeddedBus;
    use nublar_model::{ParseLimits, Precision, parse_lines};

    use super::*;

    fn parse(body: &str) -> Vec<(usize, ParsedLine<'_>)> {
        parse_lines(body.as_bytes(), Precision::Ns, ParseLimits::default())
            .map(|(number, line)| (number, line.unwrap()))
            .collect()
    }

    fn bus(dir: &tempfile::TempDir) -> Arc<dyn Bus> {
        EmbeddedBus::new(nublar_log::Log::open(dir.path()).unwrap()).into_shared()
    }

    /// (line number, reason) of each conflict.
    async fn register(
        registry: &SchemaRegistry,
        bus: &Arc<dyn Bus>,
        db: &str,
        body: &str,
    ) -> Vec<(usize, &'static str)> {
        let lines = parse(body);
        registry
            .check_and_register(bus.as_ref(), db, &lines, false)
            .await
            .unwrap()
            .iter()
            .map(|conflict| (lines[conflict.index].0, conflict.reason))
            .collect()
    }

    #[tokio::test]
    async fn past_the_column_bound_new_columns_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let bus = bus(&dir);
        let registry = SchemaRegistry::open(bus.as_ref(), 3).await.unwrap();
        let body = "m,t=a f=1 1\nm g=1,h=2 2\nm f=2,g=3 3\nm,t=b f=3 4\nn x=1 5\n";
        let conflicts = register(&registry, &bus, "db", body).await;
        // Lines 1 and 3 bring three columns; 2 and 5 would pass the bound.
        assert_eq!(conflicts, [(2, TOO_MANY_COLUMNS), (5, TOO_MANY_COLUMNS)]);
        let lines = parse("n x=1 5\n");
        let conflicts = registry
            .check_and_register(bus.as_ref(), "db", &lines, false)
            .await
            .unwrap();
        assert!(
            conflicts[0].message().contains("schema registry is full"),
            "{}",
            conflicts[0].message()
        );
        // Read back with the same bound, the registry holds the same columns.
        let reopened = SchemaRegistry::open(bus.as_ref(), 3).await.unwrap();
        assert_eq!(reopened.known.read().unwrap().columns, 3);
        assert_eq!(
            register(&reopened, &bus, "db", "m,t=c f=4,g=5 6\n").await,
            []
        );
    }

    #[tokio::test]
    async fn the_first_registration_in_log_order_wins_over_a_racing_one() {
        let dir = tempfile::tempdir().unwrap();
        let bus = bus(&dir);
        let registry = SchemaRegistry::open(bus.as_ref(), 100).await.unwrap();
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
        let reopened = SchemaRegistry::open(bus.as_ref(), 100).await.unwrap();
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
}
