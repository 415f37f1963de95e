//! `GET /api/v1/flows`: the flow tables a page at a time, behind an opaque cursor.
use std::{collections::HashMap, net::IpAddr};

use axum::{
    extract::{Query, State},
    http::StatusCode,
    Json,
};
use lb_common::maps::{FlowKey, FAMILY_V4, PROTO_TCP};

use crate::{
    services::words_addr,
    state::{lock, SharedState},
};

use super::*;

pub(super) async fn flows(
    State(state): State<SharedState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<FlowPage>, ApiError> {
    let bad_query =
        |message: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message);
    if let Some(unknown) = query
        .keys()
        .find(|k| !matches!(k.as_str(), "limit" | "cursor" | "table"))
    {
        return Err(bad_query(format!(
            "unknown query parameter `{unknown}`; use limit, cursor and table"
        )));
    }
    let unverified = match query.get("table").map(String::as_str) {
        None | Some("connections") => false,
        Some("unverified") => true,
        Some(other) => {
            return Err(bad_query(format!(
                "table `{other}` is not one of connections (the default) and unverified"
            )))
        }
    };
    let limit = match query.get("limit") {
        None => FLOWS_DEFAULT_LIMIT,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=FLOWS_MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(bad_query(format!(
                    "limit `{text}` must be a number from 1 to {FLOWS_MAX_LIMIT}"
                )))
            }
        },
    };
    let cursor = match query.get("cursor") {
        None => None,
        Some(text) => Some(
            decode_cursor(text)
                .ok_or_else(|| bad_query("cursor is not one this API returned".into()))?,
        ),
    };
    let agent = lock(&state);
    let dataplane = agent.dataplane();
    let page = if unverified {
        dataplane.unverified_flows(cursor.as_ref(), limit)
    } else {
        dataplane.flows(cursor.as_ref(), limit)
    }
    .map_err(from_anyhow)?;
    let now = dataplane.flow_clock_now().map_err(from_anyhow)?;
    let flows = page
        .flows
        .iter()
        .map(|(key, flow)| {
            let service = agent.services().iter().find(|s| s.id == flow.service_id);
            let backend = service.and_then(|s| {
                s.backends
                    .iter()
                    .find(|b| b.id == flow.backend_id && b.generation == flow.backend_generation)
            });
            FlowInfo {
                client: endpoint(words_addr(key.src, key.family), u16::from_be(key.src_port)),
                vip: endpoint(words_addr(key.dst, key.family), u16::from_be(key.dst_port)),
                protocol: if key.proto == PROTO_TCP { "tcp" } else { "udp" }.to_string(),
                service: service.map(|s| s.name.clone()),
                backend: backend.map(|b| b.name.clone()),
                nat_port: (flow.nat_port != 0).then(|| u16::from_be(flow.nat_port)),
                state: state_name(flow.state).to_string(),
                idle_seconds: now.saturating_sub(flow.last_seen),
            }
        })
        .collect();
    Ok(Json(FlowPage {
        flows,
        next_cursor: page.next.as_ref().map(encode_cursor),
    }))
}

pub(super) fn state_name(state: u8) -> &'static str {
    match state {
        lb_common::maps::STATE_OPENING => "opening",
        lb_common::maps::STATE_ESTABLISHED => "established",
        lb_common::maps::STATE_CLOSING => "closing",
        lb_common::maps::STATE_UDP => "udp",
        _ => "unknown",
    }
}

pub(super) fn endpoint(addr: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(addr, port).to_string()
}

/// A flow key as hex: opaque to clients, exact for the kernel's get-next-key.
pub(super) fn encode_cursor(key: &FlowKey) -> String {
    let mut bytes = Vec::with_capacity(40);
    for word in key.src.iter().chain(&key.dst) {
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    bytes.extend_from_slice(&key.src_port.to_ne_bytes());
    bytes.extend_from_slice(&key.dst_port.to_ne_bytes());
    bytes.extend_from_slice(&[key.proto, key.family]);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn decode_cursor(text: &str) -> Option<FlowKey> {
    if text.len() != 76 || !text.is_ascii() {
        return None;
    }
    let bytes: Vec<u8> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect::<Option<_>>()?;
    let word = |i: usize| u32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let key = FlowKey {
        src: [word(0), word(4), word(8), word(12)],
        dst: [word(16), word(20), word(24), word(28)],
        src_port: u16::from_ne_bytes([bytes[32], bytes[33]]),
        dst_port: u16::from_ne_bytes([bytes[34], bytes[35]]),
        proto: bytes[36],
        family: bytes[37],
        _pad: [0; 2],
    };
    (key.family == FAMILY_V4 || key.family == lb_common::maps::FAMILY_V6).then_some(key)
}
