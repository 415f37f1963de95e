//! The OpenAPI 3 document of the status API, written by hand next to the routes it describes.
use serde_json::{json, Value};

fn error_responses(codes: &[(&str, &str)]) -> Value {
    let mut responses = serde_json::Map::new();
    for (status, description) in codes {
        responses.insert(
            status.to_string(),
            json!({ "description": description, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }),
        );
    }
    Value::Object(responses)
}

fn ok_json(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn merge(mut base: Value, extra: Value) -> Value {
    if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
        base.extend(extra);
    }
    base
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// A write operation on a backend: bearer token, path parameters, the usual errors.
fn backend_write(summary: &str, body: Option<Value>) -> Value {
    let mut operation = json!({
        "summary": summary,
        "security": [{ "bearer": [] }],
        "parameters": [{ "$ref": "#/components/parameters/service" }, { "$ref": "#/components/parameters/backend" }],
        "responses": merge(
            json!({ "200": ok_json("done", schema_ref("ChangeResult")) }),
            error_responses(&[
                ("400", "invalid_body"),
                ("401", "unauthorized: missing or wrong token"),
                ("403", "writes_disabled: no api.token_file configured"),
                ("404", "service_not_found / backend_not_found"),
                ("409", "conflict"),
                ("422", "invalid_value"),
            ]),
        ),
    });
    if let (Some(body), Some(op)) = (body, operation.as_object_mut()) {
        op.insert(
            "requestBody".into(),
            json!({ "required": true, "content": { "application/json": { "schema": body } } }),
        );
    }
    operation
}

pub fn document() -> Value {
    let not_found = error_responses(&[("404", "service_not_found")]);
    let nat_properties = json!({
        "in_use": { "type": "integer", "nullable": true, "description": "ports held by live flows, as last counted (null before the first count)" },
        "available": { "type": "integer", "description": "nat_port_min..=nat_port_max towards each backend, once per snat address" },
        "snat_addresses": { "type": "array", "items": { "type": "string" }, "description": "the addresses backends see connections come from" },
        "exhausted_drops": { "type": "integer", "description": "new flows dropped as drop_nat_ports_exhausted" },
        "complete": { "type": "boolean", "description": "false: the count stopped at its time budget, in_use is a lower bound" },
        "counted_s_ago": { "type": "number", "nullable": true } });
    let mut nat_status_properties = nat_properties.clone();
    nat_status_properties["service"] = json!({ "type": "string" });
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "lb status API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "State and counters of the XDP load balancer agent, and runtime backend changes. \
                Errors are {\"error\": {\"code\", \"message\"}}; codes are stable: not_found, method_not_allowed, \
                invalid_body, invalid_query, unauthorized, writes_disabled, service_not_found, backend_not_found, \
                conflict, invalid_value, invalid_config, internal, host_not_allowed (403: Host is not the \
                API's address or a name in api.allowed_hosts), host_required (400). Writes need the bearer \
                token; on a non-loopback api.bind (HTTPS) every request but /healthz needs it."
        },
        "paths": {
            "/healthz": { "get": { "summary": "Liveness of the agent", "responses": { "200": ok_json("alive", json!({ "type": "object", "properties": { "status": { "type": "string" } } })) } } },
            "/metrics": { "get": { "summary": "Prometheus text exposition", "responses": { "200": { "description": "metrics", "content": { "text/plain": { "schema": { "type": "string" } } } } } } },
            "/ui": { "get": { "summary": "The dashboard (read-only HTML page; polls the read endpoints)", "responses": { "200": { "description": "the page", "content": { "text/html": { "schema": { "type": "string" } } } } } } },
            "/ui/{asset}": { "get": {
                "summary": "A file of the dashboard (app.js, style.css, index.html)",
                "parameters": [{ "name": "asset", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": merge(
                    json!({ "200": { "description": "the file", "content": {
                        "text/javascript": { "schema": { "type": "string" } },
                        "text/css": { "schema": { "type": "string" } },
                        "text/html": { "schema": { "type": "string" } } } } }),
                    error_responses(&[("404", "not_found: no such file")])
                )
            } },
            "/api/v1/openapi.json": { "get": { "summary": "This document", "responses": { "200": ok_json("OpenAPI 3 document", json!({ "type": "object" })) } } },
            "/api/v1/status": { "get": { "summary": "Agent, data path and traffic totals", "responses": { "200": ok_json("status", schema_ref("Status")) } } },
            "/api/v1/services": { "get": { "summary": "Every service with its counters", "responses": { "200": ok_json("services", json!({ "type": "array", "items": schema_ref("Service") })) } } },
            "/api/v1/services/{service}": { "get": {
                "summary": "One service",
                "parameters": [{ "$ref": "#/components/parameters/service" }],
                "responses": merge(json!({ "200": ok_json("service", schema_ref("Service")) }), not_found.clone())
            } },
            "/api/v1/services/{service}/backends": {
                "get": {
                    "summary": "Backends of a service: state, health, counters",
                    "parameters": [{ "$ref": "#/components/parameters/service" }],
                    "responses": merge(json!({ "200": ok_json("backends", schema_ref("BackendList")) }), not_found)
                },
                "post": {
                    "summary": "Add a backend (it enters the rotation after its health check passes)",
                    "security": [{ "bearer": [] }],
                    "parameters": [{ "$ref": "#/components/parameters/service" }],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": schema_ref("AddBackend") } } },
                    "responses": merge(
                        json!({ "201": ok_json("added", schema_ref("ChangeResult")) }),
                        error_responses(&[("400", "invalid_body"), ("401", "unauthorized"), ("403", "writes_disabled"), ("404", "service_not_found"), ("409", "conflict"), ("422", "invalid_value")]),
                    )
                }
            },
            "/api/v1/services/{service}/backends/{backend}": { "delete": backend_write("Remove a backend now (its flows are re-balanced; drain first to let them finish)", None) },
            "/api/v1/services/{service}/backends/{backend}/drain": { "post": backend_write("Drain: no new flows, existing ones finish", None) },
            "/api/v1/services/{service}/backends/{backend}/enable": { "post": backend_write("Undo a drain", None) },
            "/api/v1/services/{service}/backends/{backend}/weight": { "put": backend_write("Change the weight (1..100)", Some(schema_ref("Weight"))) },
            "/api/v1/flows": { "get": {
                "summary": "Live flows, paged in the flow table's order",
                "parameters": [
                    { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 1000, "default": 100 } },
                    { "name": "table", "in": "query", "description": "connections (completed TCP handshakes) or unverified (TCP before the client's ACK, and UDP)", "schema": { "type": "string", "enum": ["connections", "unverified"], "default": "connections" } },
                    { "name": "cursor", "in": "query", "description": "next_cursor of the previous page", "schema": { "type": "string" } }
                ],
                "responses": merge(json!({ "200": ok_json("a page of flows", schema_ref("FlowPage")) }), error_responses(&[("400", "invalid_query")]))
            } },
            "/api/v1/firewall/rules": {
                "get": {
                    "summary": "Firewall rules with their counters (packets, bytes, last hit), and drops by reason",
                    "responses": { "200": ok_json("rules", schema_ref("FirewallRules")) }
                },
                "post": {
                    "summary": "Add a rule on source prefixes (until the next reload); the rule set is swapped whole",
                    "security": [{ "bearer": [] }],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": schema_ref("AddRule") } } },
                    "responses": merge(
                        json!({ "200": ok_json("added", schema_ref("ChangeResult")) }),
                        error_responses(&[("400", "invalid_body"), ("401", "unauthorized"), ("403", "writes_disabled"), ("409", "conflict"), ("422", "invalid_value")]),
                    )
                }
            },
            "/api/v1/firewall/rules/{rule}": { "delete": {
                "summary": "Remove a rule (a config-file rule comes back at the next reload)",
                "security": [{ "bearer": [] }],
                "parameters": [{ "name": "rule", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": merge(
                    json!({ "200": ok_json("removed", schema_ref("ChangeResult")) }),
                    error_responses(&[("401", "unauthorized"), ("403", "writes_disabled"), ("404", "rule_not_found")]),
                )
            } },
            "/api/v1/reload": { "post": {
                "summary": "Re-read the config file and apply the difference (flows kept); an invalid file is refused",
                "security": [{ "bearer": [] }],
                "responses": merge(
                    json!({ "200": ok_json("reloaded", schema_ref("ChangeResult")) }),
                    error_responses(&[("401", "unauthorized"), ("403", "writes_disabled"), ("422", "invalid_config")]),
                )
            } },
            "/api/v1/database/promote": { "post": {
                "summary": "Make a database node the primary whatever database.failover says (the operator takes responsibility for writes it may lack); answers when done",
                "security": [{ "bearer": [] }],
                "requestBody": { "required": true, "content": { "application/json": { "schema": schema_ref("PromoteRequest") } } },
                "responses": merge(
                    json!({ "200": ok_json("promoted", schema_ref("ChangeResult")) }),
                    error_responses(&[("400", "invalid_body"), ("401", "unauthorized"), ("403", "writes_disabled"), ("409", "promotion_failed"), ("422", "force_required"), ("503", "watch_restarted"), ("504", "promotion_pending")]),
                )
            } }
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "description": "the first line of api.token_file" } },
            "parameters": {
                "service": { "name": "service", "in": "path", "required": true, "schema": { "type": "string" } },
                "backend": { "name": "backend", "in": "path", "required": true, "schema": { "type": "string" } }
            },
            "schemas": {
                "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "object", "required": ["code", "message"], "properties": { "code": { "type": "string" }, "message": { "type": "string" } } } } },
                "ChangeResult": { "type": "object", "properties": { "ok": { "type": "boolean" }, "message": { "type": "string" } } },
                "FirewallRules": { "type": "object", "properties": {
                    "rules": { "type": "array", "items": { "type": "object", "properties": {
                        "id": { "type": "integer" }, "name": { "type": "string" }, "kind": { "type": "object" },
                        "action": { "type": "string", "enum": ["allow", "drop", "log"] },
                        "prefixes": { "type": "array", "items": { "type": "string" } }, "runtime": { "type": "boolean" },
                        "packets": { "type": "integer" }, "bytes": { "type": "integer" },
                        "last_hit_s_ago": { "type": "number", "nullable": true } } } },
                    "drops": { "type": "array", "items": { "type": "object", "properties": {
                        "verdict": { "type": "string" }, "packets": { "type": "integer" }, "bytes": { "type": "integer" } } } } } },
                "AddRule": { "type": "object", "required": ["name", "sources", "action"], "additionalProperties": false, "properties": {
                    "name": { "type": "string" },
                    "sources": { "type": "array", "minItems": 1, "items": { "type": "string", "description": "CIDR prefix or address, v4 or v6" } },
                    "action": { "type": "string", "enum": ["allow", "drop", "log"] } } },
                "Weight": { "type": "object", "required": ["weight"], "additionalProperties": false, "properties": { "weight": { "type": "integer", "minimum": 1, "maximum": 100 } } },
                "PromoteRequest": { "type": "object", "required": ["node", "force"], "additionalProperties": false, "properties": {
                    "node": { "type": "string" }, "force": { "type": "boolean", "description": "must be true" } } },
                "AddBackend": { "type": "object", "required": ["name", "address"], "additionalProperties": false, "properties": {
                    "name": { "type": "string" }, "address": { "type": "string", "description": "IPv4 or IPv6, the VIP's family" },
                    "port": { "type": "integer", "description": "default: the service port" }, "weight": { "type": "integer", "minimum": 1, "maximum": 100, "default": 1 } } },
                "Status": { "type": "object", "properties": {
                    "version": { "type": "string" }, "pid": { "type": "integer" }, "uptime_s": { "type": "integer" }, "started_at": { "type": "integer" },
                    "interface": { "type": "string" }, "attach": { "type": "string", "enum": ["native", "generic", "generic_fallback", "replaced_pinned", "detached"] },
                    "pin_path": { "type": "string" }, "adopted": { "type": "boolean" }, "config_path": { "type": "string" }, "api_bind": { "type": "string" },
                    "writes_enabled": { "type": "boolean" }, "reloads": { "type": "integer" },
                    "last_reload": { "type": "object", "nullable": true, "properties": { "at": { "type": "integer" }, "ok": { "type": "boolean" }, "message": { "type": "string" } } },
                    "services": { "type": "integer" },
                    "backends": { "type": "object", "properties": { "total": { "type": "integer" }, "active": { "type": "integer" }, "draining": { "type": "integer" }, "down": { "type": "integer" }, "standby": { "type": "integer", "description": "out of a database VIP because of their role" } } },
                    "traffic": { "type": "object", "properties": { "packets": { "type": "integer" }, "bytes": { "type": "integer" }, "new_flows": { "type": "integer" }, "dropped_packets": { "type": "integer" } } },
                    "verdicts": { "type": "array", "items": { "type": "object", "properties": { "verdict": { "type": "string" }, "packets": { "type": "integer" }, "bytes": { "type": "integer" } } } },
                    "database": { "type": "object", "nullable": true, "description": "null without a [database] section", "properties": {
                        "write_service": { "type": "string" }, "read_service": { "type": "string", "nullable": true },
                        "primary": { "type": "string", "nullable": true }, "write": { "type": "string", "nullable": true },
                        "read": { "type": "array", "items": { "type": "string" } }, "failovers": { "type": "integer" },
                        "failover_policy": { "type": "string", "enum": ["safe", "available", "off"] },
                        "failover_blocked": { "type": "string", "nullable": true, "description": "why there is no writable primary and the agent will not make one on its own" },
                        "memory_error": { "type": "string", "nullable": true, "description": "the watch could not save its memory (database.state_file)" },
                        "last_failover": { "type": "object", "nullable": true, "properties": { "from": { "type": "string" }, "to": { "type": "string" }, "at_unix": { "type": "integer" }, "duration_ms": { "type": "integer" }, "forced": { "type": "boolean" } } },
                        "nodes": { "type": "array", "items": { "type": "object", "properties": {
                            "name": { "type": "string" }, "address": { "type": "string" },
                            "role": { "type": "string", "enum": ["primary", "replica", "lagging", "standby", "fenced", "diverged", "down", "unknown"] },
                            "reachable": { "type": "boolean" }, "read_only": { "type": "boolean", "nullable": true }, "lag_s": { "type": "integer", "nullable": true },
                            "gtid": { "type": "string", "nullable": true }, "semi_sync": { "type": "boolean", "nullable": true },
                            "replicating_from": { "type": "string", "nullable": true }, "error": { "type": "string", "nullable": true } } } } } },
                    "map_memory": { "type": "object", "nullable": true, "description": "kernel memory of every map (memlock of its fdinfo), largest first", "properties": {
                        "total_bytes": { "type": "integer" }, "budget_bytes": { "type": "integer", "description": "agent.map_memory_budget_mib in bytes" },
                        "maps": { "type": "array", "items": { "type": "object", "properties": {
                            "name": { "type": "string" }, "bytes": { "type": "integer" }, "max_entries": { "type": "integer" },
                            "wanted_entries": { "type": "integer", "description": "present when the config wants another size than the loaded map has: a clean stop and start applies it" } } } } } },
                    "host_addresses": { "type": "array", "items": { "type": "string" }, "description": "the interface's addresses the host policy protects, followed as they change" },
                    "nat": { "type": "array", "description": "each NAT service's ports", "items": { "type": "object", "properties": nat_status_properties } } } },
                "Service": { "type": "object", "properties": {
                    "name": { "type": "string" }, "vip": { "type": "string" }, "port": { "type": "integer" }, "protocol": { "type": "string", "enum": ["tcp", "udp"] },
                    "mode": { "type": "string", "enum": ["dsr", "nat"] }, "algorithm": { "type": "string" }, "health_check": { "type": "string", "nullable": true },
                    "backends": { "type": "integer" }, "in_rotation": { "type": "integer" },
                    "packets": { "type": "integer" }, "bytes": { "type": "integer" }, "new_flows": { "type": "integer" },
                    "nat_ports": { "type": "object", "nullable": true, "description": "NAT mode only", "properties": nat_properties } } },
                "BackendList": { "type": "object", "properties": { "service": { "type": "string" }, "backends": { "type": "array", "items": schema_ref("Backend") } } },
                "Backend": { "type": "object", "properties": {
                    "name": { "type": "string" }, "id": { "type": "integer" }, "address": { "type": "string" }, "port": { "type": "integer" }, "weight": { "type": "integer" },
                    "state": { "type": "string", "enum": ["active", "draining", "down", "standby"] }, "admin": { "type": "string", "enum": ["enabled", "draining"] },
                    "mac": { "type": "string", "nullable": true },
                    "health": { "type": "object", "nullable": true, "properties": {
                        "kind": { "type": "string" }, "up": { "type": "boolean" }, "checks": { "type": "integer" }, "failures": { "type": "integer" },
                        "last_ok": { "type": "boolean", "nullable": true }, "last_detail": { "type": "string", "nullable": true },
                        "last_latency_ms": { "type": "number", "nullable": true }, "since": { "type": "integer" } } },
                    "packets": { "type": "integer" }, "bytes": { "type": "integer" }, "new_flows": { "type": "integer" } } },
                "FlowPage": { "type": "object", "properties": { "next_cursor": { "type": "string", "nullable": true }, "flows": { "type": "array", "items": { "type": "object", "properties": {
                    "client": { "type": "string" }, "vip": { "type": "string" }, "protocol": { "type": "string" },
                    "service": { "type": "string", "nullable": true }, "backend": { "type": "string", "nullable": true }, "nat_port": { "type": "integer", "nullable": true },
                    "state": { "type": "string", "enum": ["opening", "established", "closing", "udp", "unknown"] }, "idle_seconds": { "type": "integer" } } } } } }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_reference_resolves() {
        let document = super::document();
        let text = document.to_string();
        for reference in text.split("\"$ref\":\"").skip(1) {
            let target = reference.split('"').next().unwrap_or_default();
            let path: Vec<&str> = target.trim_start_matches("#/").split('/').collect();
            let mut node = &document;
            for part in &path {
                node = node
                    .get(part)
                    .unwrap_or_else(|| panic!("unresolved $ref {target}"));
            }
        }
        assert_eq!(document["openapi"], "3.0.3");
    }
}
