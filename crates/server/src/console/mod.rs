//! The web console: three files embedded in the binary (no build step, no Node toolchain),
//! served by every node at `/ui/`. The page logs in with a tenant, user and API key (kept in the
//! browser tab's session storage and sent as Coopr's headers) and reads the same REST API as
//! the CLI, refreshing every second:
//!
//! ```text
//!  Datacenters  GET /v2/admin/shards (leases), /v2/admin/dcs (every node);
//!               POST /v2/admin/dcs/{dc}/drain|undrain                          superadmin
//!  Shard map    GET /v2/admin/shards + /v2/admin/replication;
//!               POST /v2/admin/shards/{shard}/handover[/abort]                superadmin
//!  Replication  GET /v2/admin/replication (lag chart sampled by the page)      superadmin
//!  Clusters     GET/POST /v2/clusters, GET/DELETE /v2/clusters/{id}, .../plans any tenant
//!  Events       GET /v2/admin/shards (ownership history), lost-operations     superadmin
//! ```
//!
//! Every action asks for confirmation. Pages with a form draw it once and refresh only their
//! live parts, so what a user typed stays.

use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The files change with the binary: a browser revalidates on every load.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub fn routes() -> crate::api::routes::Routes {
    use axum::http::Method;
    crate::api::routes::Routes::new("console")
        .route(
            "/",
            get(|| async { Redirect::to("/ui/") }),
            &[(Method::GET, "Redirects to the console")],
        )
        .route(
            "/ui",
            get(|| async { Redirect::to("/ui/") }),
            &[(Method::GET, "Redirects to the console")],
        )
        .route(
            "/ui/",
            get(|| async { file("text/html; charset=utf-8", INDEX) }),
            &[(Method::GET, "The web console (HTML)")],
        )
        .route(
            "/ui/app.js",
            get(|| async { file("text/javascript; charset=utf-8", SCRIPT) }),
            &[(Method::GET, "The console's script")],
        )
        .route(
            "/ui/style.css",
            get(|| async { file("text/css; charset=utf-8", STYLE) }),
            &[(Method::GET, "The console's stylesheet")],
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file the page loads is one the routes serve.
    #[test]
    fn the_page_loads_what_is_served() {
        for asset in ["/ui/app.js", "/ui/style.css"] {
            assert!(INDEX.contains(asset), "index.html does not load {asset}");
        }
    }
}
