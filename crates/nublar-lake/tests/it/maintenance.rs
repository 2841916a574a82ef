//! Maintenance on tables the sink wrote: compaction keeps every row in fewer files, vacuum
//! deletes what no version refers to and never a live file, checkpoints hold the table.

use crate::lab;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use lab::{Lab, query, texts};
use nublar_lake::maintenance;

/// A `gate` table of `commits` commits of 10 rows each, all on one day.
async fn many_small_commits(commits: usize) -> Lab {
    let mut lab = Lab::new(1).await;
    for commit in 0..commits {
        let lines: Vec<String> = (0..10)
            .map(|row| {
                let n = (commit * 10 + row) as i64;
                format!(
                    "gate,gate=g{} open=true,n={n}i {}",
                    n % 4,
                    1_700_000_000_000_000_000 + n
                )
            })
            .collect();
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        lab.send(0, "park", &lines).await;
    }
    // Ten rows fill the buffer: one commit, so one file, per request.
    let config = nublar_lake::SinkConfig {
        rows_max: 10,
        read_bytes: 1,
        ..lab.config()
    };
    lab.sink_until(config, (commits * 10) as u64).await;
    lab
}

fn data_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for day in std::fs::read_dir(dir).unwrap() {
        let day = day.unwrap().path();
        if day.is_dir()
            && day
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("_day=")
        {
            for file in std::fs::read_dir(&day).unwrap() {
                files.push(file.unwrap().path());
            }
        }
    }
    files.sort();
    files
}

fn age(path: &Path, by: Duration) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - by).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_every_row_in_fewer_files() {
    let lab = many_small_commits(12).await;
    let dir = lab.table_dir("park", "gate");
    let before = maintenance::summary("park", "gate", &dir).await.unwrap();
    assert_eq!((before.files, before.rows, before.days), (12, 120, 1));

    let report = maintenance::optimize(&dir, 100 << 20, 3).await.unwrap();
    assert_eq!((report.files_removed, report.files_added), (12, 1));
    let after = maintenance::summary("park", "gate", &dir).await.unwrap();
    assert_eq!((after.files, after.rows, after.days), (1, 120, 1));
    assert_eq!(
        query(&dir, "SELECT count(*), count(DISTINCT n), sum(n) FROM t").await,
        texts(&[&["120", "120", "7140"]])
    );
    // Nothing left to compact.
    let again = maintenance::optimize(&dir, 100 << 20, 3).await.unwrap();
    assert_eq!(again.files_removed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vacuum_deletes_unreferenced_files_and_never_a_live_one() {
    let lab = many_small_commits(4).await;
    let dir = lab.table_dir("park", "gate");
    maintenance::optimize(&dir, 100 << 20, 3).await.unwrap();
    // A file a crash left uncommitted, and every file made to look a week old: only what the
    // log refers to must survive, whatever its age.
    let orphan = dir
        .join("_day=2023-11-14")
        .join("part-00000-left-by-a-crash-c000.zstd.parquet");
    std::fs::write(&orphan, b"a complete file never committed").unwrap();
    for file in data_files(&dir) {
        age(&file, Duration::from_secs(7 * 86_400));
    }

    let too_short = maintenance::vacuum(&dir, Duration::from_secs(60), false).await;
    assert!(too_short.is_err());
    assert!(orphan.exists());

    let dry = maintenance::vacuum(&dir, Duration::from_secs(3600), true)
        .await
        .unwrap();
    assert!(dry.dry_run);
    assert_eq!(dry.files_deleted.len(), 1, "{:?}", dry.files_deleted);
    assert!(orphan.exists());

    let done = maintenance::vacuum(&dir, Duration::from_secs(3600), false)
        .await
        .unwrap();
    assert_eq!(done.files_deleted.len(), 1, "{:?}", done.files_deleted);
    assert!(!orphan.exists());
    // The compacted-away files were removed from the table moments ago: within the retention,
    // a query reading an older version may still need them.
    assert_eq!(data_files(&dir).len(), 5);
    assert_eq!(
        query(&dir, "SELECT count(*), count(DISTINCT n) FROM t").await,
        texts(&[&["40", "40"]])
    );
    let summary = maintenance::summary("park", "gate", &dir).await.unwrap();
    assert_eq!((summary.files, summary.rows), (1, 40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_holds_the_whole_table() {
    let lab = many_small_commits(3).await;
    let dir = lab.table_dir("park", "gate");
    // Version 0 created the table, 1 added the columns, then one commit per request.
    let version = 4;
    let summary = maintenance::summary("park", "gate", &dir).await.unwrap();
    assert_eq!(summary.version, Some(version));
    let report = maintenance::checkpoint(&dir).await.unwrap();
    assert_eq!(report.version, Some(version));
    let log = dir.join("_delta_log");
    assert!(
        log.join(format!("{version:020}.checkpoint.parquet"))
            .exists()
    );
    let last: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(log.join("_last_checkpoint")).unwrap())
            .unwrap();
    assert_eq!(last["version"], version);
    // The commits up to it are no longer needed to read the table.
    for version in 0..=version {
        std::fs::remove_file(log.join(format!("{version:020}.json"))).unwrap();
    }
    assert_eq!(
        query(&dir, "SELECT count(*) FROM t").await,
        texts(&[&["30"]])
    );
    let tables = maintenance::table_dirs(&lab.lake, None).unwrap();
    assert_eq!(
        tables,
        [("park".to_owned(), "gate".to_owned(), dir.clone())]
    );
}
