//! The database watch on the wire: its status, and the operator's promotion.

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, State},
    http::StatusCode,
    Json,
};

use crate::{
    db,
    state::{lock, SharedState},
};

use super::*;

/// The wire form of the database watch's last report: the one place the API's format meets
/// the watch's own types.
pub(super) fn database_status(status: &db::DatabaseStatus) -> DatabaseStatus {
    DatabaseStatus {
        write_service: status.write_service.clone(),
        read_service: status.read_service.clone(),
        failover_policy: match status.policy {
            db::Policy::Safe => "safe",
            db::Policy::Available => "available",
            db::Policy::Off => "off",
        }
        .to_string(),
        primary: status.primary.clone(),
        write: status.write.clone(),
        read: status.read.clone(),
        failover_blocked: status.blocked.clone(),
        failovers: status.failovers,
        last_failover: status.last_failover.as_ref().map(|f| FailoverRecord {
            from: f.from.clone(),
            to: f.to.clone(),
            at_unix: f.at_unix,
            duration_ms: f.duration_ms,
            forced: f.forced,
        }),
        memory_error: status.memory_error.clone(),
        nodes: status
            .nodes
            .iter()
            .map(|node| DatabaseNode {
                name: node.name.clone(),
                address: node.address.clone(),
                role: match node.role {
                    db::Role::Primary => DatabaseRole::Primary,
                    db::Role::Replica => DatabaseRole::Replica,
                    db::Role::Lagging => DatabaseRole::Lagging,
                    db::Role::Standby => DatabaseRole::Standby,
                    db::Role::Fenced => DatabaseRole::Fenced,
                    db::Role::Diverged => DatabaseRole::Diverged,
                    db::Role::Down => DatabaseRole::Down,
                    db::Role::Unknown => DatabaseRole::Unknown,
                },
                reachable: node.reachable,
                read_only: node.read_only,
                lag_s: node.lag_s,
                gtid: node.gtid.clone(),
                semi_sync: node.semi_sync,
                replicating_from: node.replicating_from.clone(),
                error: node.error.clone(),
            })
            .collect(),
    }
}

/// How long a promotion may take before the answer gives up waiting (the watch carries on).
pub(super) const PROMOTE_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// `lb db promote NODE --force`: the operator's promotion, for when safe failover refuses.
pub(super) async fn promote_database_node(
    _: Authorized,
    State(state): State<SharedState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ChangeResult>, ApiError> {
    let request: PromoteRequest = json_body(body)?;
    if !request.force {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "force_required",
            "a promotion by hand may lose writes the old primary acknowledged: set \"force\": true (`lb db promote NODE --force`) to take responsibility",
        ));
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    let command = db::Command::Promote {
        node: request.node.clone(),
        reply,
    };
    lock(&state)
        .database_command(command)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "no_database_watch", e))?;
    match tokio::time::timeout(PROMOTE_ANSWER_TIMEOUT, answer).await {
        Ok(Ok(Ok(message))) => Ok(done(message)),
        Ok(Ok(Err(message))) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "promotion_failed",
            message,
        )),
        Ok(Err(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "watch_restarted",
            "the database watch was replaced (a reload) before it promoted; check `lb status` and try again",
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "promotion_pending",
            format!(
                "no answer within {} s; the promotion may still finish: check `lb status`",
                PROMOTE_ANSWER_TIMEOUT.as_secs()
            ),
        )),
    }
}
