//! The admin listener: health now; the approvers' page, the JSON API and metrics build on it.
//! It is a separate listener, never reachable through the proxy.

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tracing::warn;

use crate::Gate;

/// The admin routes.
pub fn router(gate: Arc<Gate>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .with_state(gate)
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Serves the admin listener until the gate shuts down.
pub async fn serve(listener: TcpListener, gate: Arc<Gate>) {
    let cancel = gate.cancel.clone();
    let app = router(gate);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
    {
        warn!(error = %e, "admin listener failed");
    }
}
