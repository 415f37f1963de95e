//! Static files: tower-http's `ServeDir` (Last-Modified, If-Modified-Since, Range) plus the one
//! thing it lacks, an ETag with If-None-Match -> 304. Compression is layered outside, in `mod.rs`.
use std::{path::Path, time::UNIX_EPOCH};

use axum::{
    body::Body,
    extract::Request,
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    middleware::{self, Next},
    response::Response,
    Router,
};
use tower_http::services::ServeDir;

/// Every file under `dir` at its path; `index.html` for directories.
pub fn router(dir: &Path) -> Router {
    Router::new()
        .fallback_service(ServeDir::new(dir).append_index_html_on_directories(true))
        .layer(middleware::from_fn(etag))
}

/// Adds a weak ETag (size + modification time, the same on every server holding the same
/// files) and answers If-None-Match with 304. Weak: compression changes the bytes, not the file.
async fn etag(request: Request, next: Next) -> Response {
    let conditional = matches!(*request.method(), Method::GET | Method::HEAD)
        .then(|| request.headers().get(header::IF_NONE_MATCH).cloned())
        .flatten();
    let mut response = next.run(request).await;
    let Some(tag) = entity_tag(&response) else {
        return response;
    };
    if conditional.is_some_and(|given| if_none_match_hits(&given, &tag)) {
        return not_modified(response.headers(), tag);
    }
    response.headers_mut().insert(header::ETAG, tag);
    response
}

/// `W/"<size>-<mtime>"` in hex, for a full (200) or partial (206) answer with a Last-Modified.
fn entity_tag(response: &Response) -> Option<HeaderValue> {
    let headers = response.headers();
    let size: u64 = match response.status() {
        StatusCode::OK => headers
            .get(header::CONTENT_LENGTH)?
            .to_str()
            .ok()?
            .parse()
            .ok()?,
        // "bytes 0-9/1234": the whole file's size is after the slash.
        StatusCode::PARTIAL_CONTENT => headers
            .get(header::CONTENT_RANGE)?
            .to_str()
            .ok()?
            .rsplit_once('/')?
            .1
            .parse()
            .ok()?,
        _ => return None,
    };
    let modified =
        httpdate::parse_http_date(headers.get(header::LAST_MODIFIED)?.to_str().ok()?).ok()?;
    let secs = modified.duration_since(UNIX_EPOCH).ok()?.as_secs();
    HeaderValue::from_str(&format!("W/\"{size:x}-{secs:x}\"")).ok()
}

/// Weak comparison (RFC 9110 13.1.2): `*` or any listed tag equal once `W/` is ignored.
fn if_none_match_hits(given: &HeaderValue, tag: &HeaderValue) -> bool {
    let (Ok(given), Ok(tag)) = (given.to_str(), tag.to_str()) else {
        return false;
    };
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_string();
    given.trim() == "*" || given.split(',').any(|t| opaque(t) == opaque(tag))
}

fn not_modified(headers: &HeaderMap, tag: HeaderValue) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    for name in [header::LAST_MODIFIED, header::CACHE_CONTROL, header::VARY] {
        if let Some(value) = headers.get(&name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response.headers_mut().insert(header::ETAG, tag);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_comparison() {
        let tag = HeaderValue::from_static("W/\"1f-5f\"");
        for (given, hit) in [
            ("W/\"1f-5f\"", true),
            ("\"1f-5f\"", true),
            ("\"x\", W/\"1f-5f\"", true),
            ("*", true),
            ("\"1f-60\"", false),
            ("", false),
        ] {
            assert_eq!(
                if_none_match_hits(&HeaderValue::from_static(given), &tag),
                hit,
                "{given}"
            );
        }
    }
}
