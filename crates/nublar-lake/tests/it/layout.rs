//! Each table says which version of nublar's layout it has, and a table of a layout this
//! nublar does not read is refused with both versions named, by the sink and by SQL alike.

use crate::lab;

use lab::Lab;
use nublar_lake::query::{self, QueryConfig};
use nublar_lake::table::{LAYOUT_KEY, LAYOUT_VERSION, Table, app_id};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_the_sink_makes_carries_its_layout_version() {
    let mut lab = Lab::new(1).await;
    lab.send(0, "park", &["weather temp_c=20 1700000000000000000"])
        .await;
    lab.sink_until(lab.config(), 1).await;
    let url =
        deltalake::ensure_table_uri(lab.table_dir("park", "weather").to_string_lossy()).unwrap();
    let table = deltalake::open_table(url).await.unwrap();
    let configuration = table.snapshot().unwrap().metadata().configuration().clone();
    assert_eq!(
        configuration.get(LAYOUT_KEY),
        Some(&LAYOUT_VERSION.to_string()),
        "{configuration:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_a_newer_layout_is_refused_by_the_sink_and_by_sql() {
    let lab = Lab::new(1).await;
    let dir = lab.table_dir("park", "weather");
    std::fs::create_dir_all(&dir).unwrap();
    let url = deltalake::ensure_table_uri(dir.to_string_lossy()).unwrap();
    deltalake::DeltaTable::try_from_url(url)
        .await
        .unwrap()
        .create()
        .with_columns(nublar_lake::buffer::own_columns())
        .with_raise_if_key_not_exists(false)
        .with_configuration([(LAYOUT_KEY, Some("2"))])
        .await
        .unwrap();

    let store = nublar_lake::store::DurableLocalStore::shared();
    let refused = Table::open(&dir, "weather", 1, &[app_id("telemetry", 0)], &store)
        .await
        .err()
        .expect("a newer layout is not opened for writing");
    let message = refused.to_string();
    assert!(
        message.contains(
            "nublar layout is version 2, written by a newer nublar; this one reads version 1"
        ),
        "{message}"
    );

    let refused = query::query(
        &lab.lake,
        "park",
        "SELECT * FROM weather",
        &QueryConfig::default(),
    )
    .await
    .err()
    .expect("a newer layout is not read");
    let message = refused.to_string();
    assert!(message.contains("written by a newer nublar"), "{message}");
}
