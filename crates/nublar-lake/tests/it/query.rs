//! SQL over a database's tables as users write it: tables and columns by their names as sent,
//! exact unsigned and nanosecond values, partitions pruned, every output format, and the
//! bounds: read only, a time limit, a result size.

use crate::lab;

use std::time::{Duration, Instant};

use lab::Lab;
use nublar_lake::query::{self, Format, QueryConfig, QueryError, QueryResult};

async fn run(lab: &Lab, sql: &str) -> Result<QueryResult, QueryError> {
    query::query(&lab.lake, "park", sql, &QueryConfig::default()).await
}

/// The result as CSV text, the easiest to compare.
async fn csv(lab: &Lab, sql: &str) -> String {
    let result = run(lab, sql)
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"));
    String::from_utf8(query::render(&result, Format::Csv).unwrap()).unwrap()
}

async fn park() -> Lab {
    let mut lab = Lab::new(2).await;
    lab.send(
        0,
        "park",
        &[
            "weather,habitat=savanna,station=ws-1 temp_c=31.5,count=18446744073709551615u 1700000000123456789",
            "weather,habitat=forest,station=ws-2 temp_c=12.25,count=7u 1700086400000000001",
        ],
    )
    .await;
    lab.send(
        1,
        "park",
        &["Zone\\ Map,Paddock\\ Name=north x\\=1=1i,Temp\\ C=20.5 1700000000000000000"],
    )
    .await;
    lab.send(
        1,
        "other",
        &["weather,habitat=moor temp_c=1 1700000000000000000"],
    )
    .await;
    lab.sink_until(lab.config(), 4).await;
    lab
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_and_columns_have_their_names_as_sent_and_values_are_exact() {
    let lab = park().await;
    assert_eq!(
        csv(
            &lab,
            "SELECT habitat, temp_c, count, _time_ns FROM weather ORDER BY _time_ns"
        )
        .await,
        "habitat,temp_c,count,_time_ns\n\
         savanna,31.5,18446744073709551615,1700000000123456789\n\
         forest,12.25,7,1700086400000000001\n"
    );
    // Above 2^63: a filter on the unsigned column finds the value (no statistics prune it).
    assert_eq!(
        csv(
            &lab,
            "SELECT station FROM weather WHERE count > 10000000000000000000"
        )
        .await,
        "station\nws-1\n"
    );
    assert_eq!(
        csv(
            &lab,
            "SELECT \"Paddock Name\", \"x=1\", \"Temp C\", _day FROM \"Zone Map\""
        )
        .await,
        "Paddock Name,x=1,Temp C,_day\nnorth,1,20.5,2023-11-14\n"
    );
    // Each database sees its own tables only.
    let other = query::query(
        &lab.lake,
        "other",
        "SELECT habitat FROM weather",
        &QueryConfig::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8(query::render(&other, Format::Csv).unwrap()).unwrap(),
        "habitat\nmoor\n"
    );
    let missing = run(&lab, "SELECT * FROM \"Zone Map\" JOIN gate USING (time)").await;
    assert!(
        matches!(&missing, Err(QueryError::Sql(message)) if message.contains("gate")),
        "{:?}",
        missing.err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_on_the_day_reads_only_that_days_files() {
    let lab = park().await;
    // Break every file of the second day: a query that opened them would fail.
    let day = lab.table_dir("park", "weather").join("_day=2023-11-15");
    let mut broken = 0;
    for entry in std::fs::read_dir(&day).unwrap() {
        let path = entry.unwrap().path();
        std::fs::write(&path, b"not parquet").unwrap();
        broken += 1;
    }
    assert!(broken > 0);
    assert_eq!(
        csv(
            &lab,
            "SELECT station FROM weather WHERE _day = DATE '2023-11-14'"
        )
        .await,
        "station\nws-1\n"
    );
    // A query over every day reads the broken file: the lake's fault, not the query's.
    let broken = run(&lab, "SELECT station FROM weather").await;
    assert!(
        matches!(broken, Err(QueryError::Lake(_))),
        "{:?}",
        broken.err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_writes_the_same_rows() {
    let lab = park().await;
    let result = run(
        &lab,
        "SELECT habitat, temp_c FROM weather ORDER BY temp_c DESC",
    )
    .await
    .unwrap();
    assert_eq!(result.rows(), 2);
    let text = |format| String::from_utf8(query::render(&result, format).unwrap()).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text(Format::Json)).unwrap();
    assert_eq!(
        json,
        serde_json::json!([
            {"habitat": "savanna", "temp_c": 31.5},
            {"habitat": "forest", "temp_c": 12.25}
        ])
    );
    let lines: Vec<serde_json::Value> = text(Format::Jsonl)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines, json.as_array().unwrap().clone());
    let table = text(Format::Table);
    assert!(table.contains("| habitat | temp_c |"), "{table}");
    assert!(table.contains("| savanna | 31.5   |"), "{table}");
    let parquet = query::render(&result, Format::Parquet).unwrap();
    assert!(parquet.starts_with(b"PAR1") && parquet.ends_with(b"PAR1"));
    let file = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut &file, &parquet).unwrap();
    let read =
        deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
    let rows: usize = read.map(|batch| batch.unwrap().num_rows()).sum();
    assert_eq!(rows, 2);
    // An empty result still names its columns.
    let empty = run(&lab, "SELECT habitat FROM weather WHERE temp_c > 100")
        .await
        .unwrap();
    assert_eq!(query::render(&empty, Format::Csv).unwrap(), b"habitat\n");
    assert_eq!(query::render(&empty, Format::Json).unwrap(), b"[]\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_only_read_and_stay_within_their_bounds() {
    let lab = park().await;
    let bad = run(&lab, "SELEKT 1").await;
    assert!(
        matches!(&bad, Err(QueryError::Sql(message)) if message.contains("SELEKT")),
        "{:?}",
        bad.err()
    );
    for statement in [
        "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
        "COPY (SELECT 1) TO '/tmp/nublar-copy-test.csv'",
        "CREATE TABLE t AS SELECT 1",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let refused = run(&lab, statement).await;
        assert!(
            matches!(refused, Err(QueryError::Sql(_))),
            "{statement} was not refused"
        );
    }
    assert!(!std::path::Path::new("/tmp/nublar-copy-test.csv").exists());

    let slow = QueryConfig {
        time_limit: Duration::from_millis(200),
        ..QueryConfig::default()
    };
    let started = Instant::now();
    let cancelled = query::query(
        &lab.lake,
        "park",
        // A trillion rows in small batches: the engine yields between them, so the time limit
        // is what ends it.
        "SELECT max(value % 7) FROM generate_series(1, 1000000000000)",
        &slow,
    )
    .await;
    assert!(
        matches!(cancelled, Err(QueryError::TimedOut(_))),
        "{:?}",
        cancelled.err()
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    let small = QueryConfig {
        result_bytes_max: 1000,
        ..QueryConfig::default()
    };
    let large = query::query(
        &lab.lake,
        "park",
        "SELECT value FROM generate_series(1, 100000)",
        &small,
    )
    .await;
    assert!(
        matches!(large, Err(QueryError::TooLarge(1000))),
        "{:?}",
        large.err()
    );
    // Written out, a result can be many times its size in memory: the bound holds there too.
    let booleans = run(
        &lab,
        "SELECT value % 2 = 0 AS even FROM generate_series(1, 20000)",
    )
    .await
    .unwrap();
    let held = booleans
        .batches
        .iter()
        .map(|batch| batch.get_array_memory_size())
        .sum::<usize>();
    let within = |bytes_max: usize| QueryConfig {
        result_bytes_max: bytes_max,
        ..QueryConfig::default()
    };
    for format in [
        Format::Csv,
        Format::Json,
        Format::Jsonl,
        Format::Parquet,
        Format::Table,
    ] {
        let written = query::render(&booleans, format).unwrap().len();
        assert!(
            matches!(
                query::render_within(&booleans, format, &within(written / 2), Instant::now()),
                Err(QueryError::TooLarge(_))
            ),
            "{format:?}: {written} bytes written, {held} held"
        );
        assert!(
            query::render_within(&booleans, format, &within(written), Instant::now()).is_ok(),
            "{format:?}"
        );
    }
    // The table format knows its size from its widths before it pads a cell: one wide value
    // among many rows is refused at once, without the result padded to its width.
    let wide = run(
        &lab,
        "SELECT CASE WHEN value = 150000 THEN repeat('x', 100000) ELSE 'short' END AS note \
         FROM generate_series(1, 150000)",
    )
    .await
    .unwrap();
    let refused = query::render_within(&wide, Format::Table, &within(64 << 20), Instant::now());
    assert!(
        matches!(refused, Err(QueryError::TooLarge(_))),
        "{:?}",
        refused.err()
    );
    // Rendering counts against the query's time limit too.
    let begun_long_ago = Instant::now() - Duration::from_secs(60);
    let late = query::render_within(&wide, Format::Table, &within(usize::MAX), begun_long_ago);
    assert!(
        matches!(late, Err(QueryError::TimedOut(_))),
        "{:?}",
        late.err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_format_lines_values_up_in_columns() {
    let lab = Lab::new(1).await;
    let result = run(
        &lab,
        "SELECT * FROM (VALUES ('savanna', 23.5, NULL), ('wetland\nnorth', -1.0, 'ok')) \
         AS t(habitat, temp_c, note)",
    )
    .await
    .unwrap();
    let text = String::from_utf8(query::render(&result, Format::Table).unwrap()).unwrap();
    assert_eq!(
        text,
        "+----------------+--------+------+\n\
         | habitat        | temp_c | note |\n\
         +----------------+--------+------+\n\
         | savanna        | 23.5   |      |\n\
         | wetland\\nnorth | -1.0   | ok   |\n\
         +----------------+--------+------+\n"
    );
}
