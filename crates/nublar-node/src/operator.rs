//! The operator routes every node serves for a token with the admin scope: `nublar log …`
//! against the log the node owns, `nublar bfd status`, and the admin check and argument
//! parsing the other operator routes (lake, replay) share.

use std::net::SocketAddr;
use std::sync::Arc;

use nublar_bfd::Speaker;
use nublar_ingest::Gateway;
use nublar_log::Log;

#[derive(Clone)]
struct Operator {
    gateway: Gateway,
    log: Log,
    stalls: Arc<nublar_bus::Stalls>,
    /// `None` when BFD is not enabled.
    bfd: Option<Arc<Speaker>>,
}

/// The node's operator API, for a token with the admin scope: `nublar log …`
/// commands run against the log this node owns, and `nublar bfd status`.
pub fn operator_routes(
    gateway: Gateway,
    log: Log,
    bfd: Option<Arc<Speaker>>,
    stalls: Arc<nublar_bus::Stalls>,
) -> axum::Router {
    axum::Router::new()
        .route(
            crate::log_command::OPERATOR_PATH,
            axum::routing::post(operator_command),
        )
        .route(
            crate::bfd_command::OPERATOR_PATH,
            axum::routing::post(bfd_status),
        )
        .with_state(Operator {
            gateway,
            log,
            bfd,
            stalls,
        })
}

/// Refuses a sender without the admin scope, as every operator route does.
pub fn check_admin(
    gateway: &Gateway,
    peer: SocketAddr,
    headers: &axum::http::HeaderMap,
) -> Result<(), (axum::http::StatusCode, String)> {
    gateway
        .authorize(peer.ip(), headers, nublar_ingest::Action::Admin)
        .map(|_| ())
        .map_err(|denied| (denied.status(), denied.message().to_owned()))
}

async fn bfd_status(
    axum::extract::State(operator): axum::extract::State<Operator>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    if let Err(refused) = check_admin(&operator.gateway, peer, &headers) {
        return refused.into_response();
    }
    let Some(speaker) = &operator.bfd else {
        return (
            StatusCode::NOT_FOUND,
            "BFD is not enabled on this node ([bfd] enabled = false)",
        )
            .into_response();
    };
    match speaker.sessions().await {
        Ok(sessions) => (StatusCode::OK, crate::bfd_command::render(&sessions)).into_response(),
        Err(stopped) => (StatusCode::SERVICE_UNAVAILABLE, stopped.to_string()).into_response(),
    }
}

async fn operator_command(
    axum::extract::State(operator): axum::extract::State<Operator>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let command = match operator_arguments::<crate::log_command::RemoteLogCommand>(
        &operator.gateway,
        peer,
        &headers,
        &body,
        "log",
    ) {
        Ok(parsed) => parsed.command,
        Err(refused) => return refused.into_response(),
    };
    let (log, stalls) = (operator.log.clone(), operator.stalls.clone());
    let rendered = tokio::task::spawn_blocking(move || {
        crate::log_command::render(&log, Some(&stalls), &command)
    });
    match rendered.await {
        Ok(Ok(text)) => (StatusCode::OK, text).into_response(),
        Ok(Err(error)) => (StatusCode::BAD_REQUEST, format!("{error:#}")).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

/// What an operator route was asked: the admin scope checked, then the body (a JSON array of
/// arguments) parsed as the subcommand `name` would parse them on the command line.
pub fn operator_arguments<P: clap::Parser>(
    gateway: &Gateway,
    peer: SocketAddr,
    headers: &axum::http::HeaderMap,
    body: &[u8],
    name: &str,
) -> Result<P, (axum::http::StatusCode, String)> {
    use axum::http::StatusCode;
    check_admin(gateway, peer, headers)?;
    let args = serde_json::from_slice::<Vec<String>>(body).map_err(|_| {
        (
            StatusCode::BAD_REQUEST,
            "expected a JSON array of arguments".to_owned(),
        )
    })?;
    P::try_parse_from(std::iter::once(name.to_string()).chain(args))
        .map_err(|error| (StatusCode::BAD_REQUEST, error.to_string()))
}
