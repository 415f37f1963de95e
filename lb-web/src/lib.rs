//! `lb-web`, the app tier: static files, the notes API, `/healthz`, over HTTP/1.1 and HTTP/2,
//! plain and TLS, with a combined-format access log. Both web servers run this same binary.
pub mod access_log;
pub mod config;
pub mod notes;
pub mod static_files;
pub mod tls;

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context, Result};
use axum::{
    extract::Request,
    http::{header, HeaderValue, StatusCode, Uri},
    middleware,
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower_http::compression::CompressionLayer;

use access_log::AccessLog;
use config::WebConfig;

/// Serves until SIGINT/SIGTERM.
pub async fn run(config: WebConfig) -> Result<()> {
    let log = AccessLog::open(&config.access_log)?;
    let notes = notes::Notes::new(&config.server_name, config.database.as_ref())?;
    tokio::spawn(notes.clone().ensure_table_forever());
    let app = finish(app_router(&config, notes), &config.server_name, &log);
    let listeners = config.http.as_ref().map_or(0, |h| h.listen.len())
        + config.https.as_ref().map_or(0, |h| h.listen.len());
    let fd_limit = lb_serve::raise_fd_limit().context("reading RLIMIT_NOFILE")?;
    let limits = config.limits.for_listeners(listeners, fd_limit)?;
    log::info!(
        "lb-web {}: at most {} connections per listener (file-descriptor limit {fd_limit}), \
         request heads within {:?}, idle connections closed after {:?}",
        config.server_name,
        limits.max_connections,
        limits.header_read_timeout,
        limits.idle_timeout
    );

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(https) = &config.https {
        let acceptor = TlsAcceptor::from(tls::server_config(&https.cert, &https.key)?);
        for address in &https.listen {
            let listener = bind(*address).await?;
            tasks.spawn(lb_serve::serve(
                listener,
                app.clone(),
                limits,
                Some(acceptor.clone()),
            ));
            log::info!("lb-web {}: https on {address}", config.server_name);
        }
    }
    if let Some(http) = &config.http {
        let plain = if http.redirect_to_https {
            let port = config
                .https
                .as_ref()
                .and_then(|h| h.listen.first())
                .map_or(443, SocketAddr::port);
            finish(redirect_router(port), &config.server_name, &log)
        } else {
            app.clone()
        };
        for address in &http.listen {
            let listener = bind(*address).await?;
            tasks.spawn(lb_serve::serve(listener, plain.clone(), limits, None));
            log::info!(
                "lb-web {}: http on {address}{}",
                config.server_name,
                if http.redirect_to_https {
                    " (redirects to https)"
                } else {
                    ""
                }
            );
        }
    }
    println_ready(&config.server_name);

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
        _ = tasks.join_next() => anyhow::bail!("a listener stopped unexpectedly"),
    }
    log::info!("lb-web {}: stopping", config.server_name);
    Ok(())
}

/// The line scripts wait for (in the process log, stderr).
fn println_ready(server_name: &str) {
    eprintln!("lb-web {server_name}: ready");
}

async fn bind(address: SocketAddr) -> Result<TcpListener> {
    lb_serve::bind(address).with_context(|| format!("listening on {address}"))
}

/// `/healthz`, the notes API, and the static files (or 404) for everything else.
fn app_router(config: &WebConfig, notes: Arc<notes::Notes>) -> Router {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .merge(notes::router(notes));
    match &config.static_dir {
        Some(dir) => app.merge(static_files::router(dir)),
        None => app,
    }
}

/// Layers every answer gets: compression (gzip, br by Accept-Encoding), `X-Served-By`,
/// `Server`, and, outermost, the access log.
fn finish(router: Router, server_name: &str, log: &AccessLog) -> Router {
    let served_by = HeaderValue::from_str(&format!("app={server_name}"))
        .unwrap_or(HeaderValue::from_static("app=?"));
    router
        .layer(CompressionLayer::new())
        .layer(middleware::map_response(move |mut response: Response| {
            let served_by = served_by.clone();
            async move {
                let headers = response.headers_mut();
                // The notes API sets a fuller value (with the database node): keep it.
                headers.entry(notes::SERVED_BY).or_insert(served_by);
                headers.insert(header::SERVER, HeaderValue::from_static("lb-web"));
                response
            }
        }))
        .layer(middleware::from_fn_with_state(
            log.clone(),
            access_log::middleware,
        ))
}

async fn healthz() -> &'static str {
    "ok"
}

/// Plain HTTP when redirecting: `/healthz` still answers (health checks), everything else goes
/// to the same host and path over HTTPS with a 308 (method and body kept).
fn redirect_router(https_port: u16) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .fallback(move |request: Request| async move { redirect(&request, https_port) })
}

fn redirect(request: &Request, https_port: u16) -> Response {
    let authority = lb_serve::authority(request);
    let Some(authority) = authority else {
        return (
            StatusCode::BAD_REQUEST,
            "a Host header is needed to redirect to HTTPS\n",
        )
            .into_response();
    };
    let host = match authority.rsplit_once(':') {
        // Not "[::1]" alone: a colon inside brackets is part of the address.
        Some((host, port)) if !port.contains(']') => host.to_string(),
        _ => authority,
    };
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let path = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = format!("https://{host}{port}{path}");
    match (location.parse::<Uri>(), HeaderValue::from_str(&location)) {
        (Ok(_), Ok(value)) => {
            (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, value)]).into_response()
        }
        _ => (
            StatusCode::BAD_REQUEST,
            "cannot build an HTTPS address from this Host\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests;
