//! SQL over the lake: `nublar query` on a data directory, and the node's
//! `GET|POST /api/v3/query_sql`.
//!
//! Both read the Delta tables directly (readers never need the node: Delta lets them read
//! beside a writer), each table at its latest committed version when the query starts.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use nublar_ingest::{Action, Gateway};
use nublar_lake::query::{Format, QueryConfig, QueryError};

/// The database the simulator and the demo write to, and queries read by default.
pub const DEFAULT_DB: &str = "park";

/// `nublar query "SQL"`
#[derive(clap::Args)]
pub struct QueryArgs {
    /// The SQL; each table is a measurement of the database, named as sent
    /// (quote names with upper case or other characters: "Temp C").
    sql: String,
    /// The database whose tables the query sees.
    #[arg(long, default_value = DEFAULT_DB)]
    db: String,
    /// table, csv, json (an array of objects), jsonl, or parquet.
    #[arg(long, default_value = "table")]
    format: String,
    /// Write the result to this file instead of standard output.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Cancel the query after this many seconds.
    #[arg(long, default_value_t = 30.0)]
    time_limit_seconds: f64,
    /// Refuse a result larger than this, in memory or as written.
    #[arg(long, default_value_t = QueryConfig::default().result_bytes_max)]
    result_bytes_max: usize,
}

pub fn run(data: &Path, args: QueryArgs) -> anyhow::Result<()> {
    let format: Format = args
        .format
        .parse()
        .map_err(|message: String| anyhow::anyhow!(message))?;
    anyhow::ensure!(
        args.time_limit_seconds > 0.0 && args.time_limit_seconds.is_finite(),
        "--time-limit-seconds must be more than 0"
    );
    use std::io::IsTerminal;
    if format == Format::Parquet && args.output.is_none() && std::io::stdout().is_terminal() {
        anyhow::bail!("Parquet is binary: give --output FILE or redirect standard output");
    }
    let lake = data.join("lake");
    let config = QueryConfig {
        time_limit: std::time::Duration::from_secs_f64(args.time_limit_seconds),
        result_bytes_max: args.result_bytes_max,
        ..QueryConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let started = std::time::Instant::now();
    let result = runtime.block_on(nublar_lake::query::query(
        &lake, &args.db, &args.sql, &config,
    ));
    let result = match result {
        Ok(result) => result,
        Err(QueryError::Sql(message)) => anyhow::bail!("{message}"),
        Err(error) => return Err(error.into()),
    };
    let bytes = nublar_lake::query::render_within(&result, format, &config, started)?;
    match &args.output {
        Some(path) => {
            std::fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("{} rows written to {}", result.rows(), path.display());
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&bytes)?;
            stdout.flush()?;
            if format == Format::Table {
                eprintln!("{} rows", result.rows());
            }
        }
    }
    Ok(())
}

/// What the query route needs.
#[derive(Clone)]
pub struct QueryService {
    pub gateway: Gateway,
    pub lake_dir: PathBuf,
    pub config: QueryConfig,
    /// One permit per query allowed to run at once.
    pub permits: Arc<tokio::sync::Semaphore>,
    /// Queries run here, apart from the runtime that serves ingest, so that a long scan never
    /// holds a thread an acknowledgement is waiting for.
    pub runtime: tokio::runtime::Handle,
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct QueryParameters {
    db: Option<String>,
    q: Option<String>,
    format: Option<String>,
}

pub fn routes(service: QueryService) -> axum::Router {
    axum::Router::new()
        .route(
            "/api/v3/query_sql",
            axum::routing::get(query_get).post(query_post),
        )
        .with_state(service)
}

async fn query_get(
    State(service): State<QueryService>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(parameters): Query<QueryParameters>,
    headers: HeaderMap,
) -> Response {
    answer(&service, peer, &headers, parameters).await
}

/// POST takes the parameters as a JSON body, as InfluxDB 3 clients send them, or in the URL.
async fn query_post(
    State(service): State<QueryService>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(in_url): Query<QueryParameters>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let parameters = if body.iter().all(u8::is_ascii_whitespace) {
        in_url
    } else {
        match serde_json::from_slice::<QueryParameters>(&body) {
            Ok(in_body) => QueryParameters {
                db: in_body.db.or(in_url.db),
                q: in_body.q.or(in_url.q),
                format: in_body.format.or(in_url.format),
            },
            Err(error) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    &format!("the body must be a JSON object with db, q and format: {error}"),
                );
            }
        }
    };
    answer(&service, peer, &headers, parameters).await
}

/// `message` with the lake's directory written as `<lake>`: a client with a read token learns
/// which table or file failed, not where the node keeps its data. The node's log has it whole.
fn without_server_paths(message: &str, lake_dir: &std::path::Path) -> String {
    let full = lake_dir.display().to_string();
    // Object store paths leave out the leading `/`.
    let relative = full.trim_start_matches('/');
    let mut out = message.replace(&full, "<lake>");
    if !relative.is_empty() {
        out = out.replace(relative, "<lake>");
    }
    out
}

fn error_response(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

async fn answer(
    service: &QueryService,
    peer: SocketAddr,
    headers: &HeaderMap,
    parameters: QueryParameters,
) -> Response {
    let Some(db) = parameters.db.filter(|db| !db.is_empty()) else {
        return error_response(StatusCode::BAD_REQUEST, "missing db: the database to query");
    };
    if let Err(denied) = service
        .gateway
        .authorize(peer.ip(), headers, Action::Read(&db))
    {
        return error_response(denied.status(), denied.message());
    }
    let Some(sql) = parameters.q.filter(|q| !q.trim().is_empty()) else {
        return error_response(StatusCode::BAD_REQUEST, "missing q: the SQL to run");
    };
    let format = match parameters
        .format
        .as_deref()
        .unwrap_or("json")
        .parse::<Format>()
    {
        Ok(format) => format,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, &message),
    };
    let Ok(permit) = service.permits.clone().try_acquire_owned() else {
        let mut response = error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "as many queries as query.concurrency_max allows are running; try again",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    let lake_dir = service.lake_dir.clone();
    let config = service.config.clone();
    let ran = service.runtime.spawn(async move {
        let _permit = permit;
        let started = std::time::Instant::now();
        let result = nublar_lake::query::query(&lake_dir, &db, &sql, &config).await?;
        let bytes = nublar_lake::query::render_within(&result, format, &config, started)?;
        Ok::<_, QueryError>(bytes)
    });
    match ran.await {
        Ok(Ok(bytes)) => ([(header::CONTENT_TYPE, format.content_type())], bytes).into_response(),
        Ok(Err(error @ QueryError::Lake(_))) => {
            let message = error.to_string();
            tracing::error!(%message, "a query could not read the lake");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &without_server_paths(&message, &service.lake_dir),
            )
        }
        Ok(Err(error)) => error_response(StatusCode::BAD_REQUEST, &error.to_string()),
        Err(error) => error_response(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    }
}
