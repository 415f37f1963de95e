//! The dashboard at `/ui`: one HTML page, its script and its stylesheet, embedded in the binary
//! (no internet, no CDN). The page only reads: it polls the read endpoints of this API and
//! computes rates in the browser from counter deltas, so it needs no token and offers no writes.
use axum::{
    extract::Path,
    http::header,
    response::{IntoResponse, Response},
    routing::get,
    Router,
};

use super::{ApiError, StatusCode};

/// An embedded file: its name under `/ui/`, content type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_str!("ui/index.html"),
};

const ASSETS: &[Asset] = &[
    INDEX,
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("ui/app.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("ui/style.css"),
    },
];

/// Everything comes from this origin; inline script and style are refused, so a counter value
/// or a backend name that reaches the page can never run as code.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The dashboard's routes, for any router state (they use none).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/{asset}", get(asset))
}

async fn index() -> Response {
    serve(&INDEX)
}

async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    ASSETS
        .iter()
        .find(|a| a.name == name)
        .map(serve)
        .ok_or_else(|| {
            let known: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "no dashboard file `{name}`; the dashboard has {}",
                    known.join(", ")
                ),
            )
        })
}

fn serve(asset: &Asset) -> Response {
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            // The files change with the binary: always revalidate, never show a stale script.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        ],
        asset.body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::{
        body::{to_bytes, Body},
        http::{HeaderMap, Request},
    };
    use tower::ServiceExt as _;

    use super::*;

    async fn send(method: &str, path: &str) -> (StatusCode, HeaderMap, String) {
        let router: Router = super::super::with_fallbacks(routes());
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap_or_else(|e| panic!("{e}"));
        let response = router
            .oneshot(request)
            .await
            .unwrap_or_else(|never| match never {});
        let (parts, body) = response.into_parts();
        let body = to_bytes(body, 1 << 20)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    fn header_text(headers: &HeaderMap, name: header::HeaderName) -> &str {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    #[tokio::test]
    async fn the_page_is_html_and_loads_its_embedded_script_and_stylesheet() {
        for path in ["/ui", "/ui/", "/ui/index.html"] {
            let (status, headers, body) = send("GET", path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert_eq!(
                header_text(&headers, header::CONTENT_TYPE),
                "text/html; charset=utf-8",
                "{path}"
            );
            assert!(
                header_text(&headers, header::CONTENT_SECURITY_POLICY)
                    .contains("script-src 'self'"),
                "{path}"
            );
            assert!(
                body.contains(r#"<script src="/ui/app.js""#),
                "{path}: {body}"
            );
            assert!(body.contains(r#"href="/ui/style.css""#), "{path}: {body}");
        }
    }

    #[tokio::test]
    async fn assets_are_served_with_their_content_types() {
        let (status, headers, body) = send("GET", "/ui/app.js").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            header_text(&headers, header::CONTENT_TYPE),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            header_text(&headers, header::X_CONTENT_TYPE_OPTIONS),
            "nosniff"
        );
        // The script polls the read endpoints it is built on.
        for endpoint in [
            "/api/v1/status",
            "/api/v1/services",
            "/api/v1/firewall/rules",
        ] {
            assert!(body.contains(endpoint), "app.js does not read {endpoint}");
        }
        let (status, headers, body) = send("GET", "/ui/style.css").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            header_text(&headers, header::CONTENT_TYPE),
            "text/css; charset=utf-8"
        );
        assert!(!body.is_empty());
    }

    #[tokio::test]
    async fn the_page_offers_no_write() {
        for asset in ASSETS {
            for write in [
                "method: \"POST\"",
                "method: \"PUT\"",
                "method: \"DELETE\"",
                "<form",
                "Authorization",
            ] {
                assert!(
                    !asset.body.contains(write),
                    "{} contains {write}",
                    asset.name
                );
            }
        }
        let (status, _, body) = send("POST", "/ui").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(body.contains("\"method_not_allowed\""), "{body}");
    }

    #[tokio::test]
    async fn an_unknown_asset_is_a_json_404() {
        for path in ["/ui/missing.js", "/ui/..%2Fmod.rs", "/ui/app.js/more"] {
            let (status, headers, body) = send("GET", path).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(
                header_text(&headers, header::CONTENT_TYPE),
                "application/json",
                "{path}"
            );
            let json: serde_json::Value =
                serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
            assert_eq!(json["error"]["code"], "not_found", "{path}: {body}");
        }
    }
}
