// The lb dashboard: polls the agent's read endpoints, keeps a short history of rates computed
// from counter differences between polls, and draws it as hand-written SVG. Read-only.
"use strict";

(() => {
  const POLL_MS = 1000;
  // Samples kept for the chart: two minutes at one poll a second.
  const HISTORY = 120;
  const PALETTE_SIZE = 8;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const CHART = { width: 600, height: 180, left: 52, right: 12, top: 8, bottom: 20 };

  const state = {
    polls: 0,
    // The previous poll's counters: time and, per service/backend id, packets and new flows.
    previous: null,
    // One entry per poll after the first: { at, seconds (since the poll before),
    // rates: Map(key -> {service, backend, pps, fps}) }.
    samples: [],
    colors: new Map(),
    scope: "",
  };

  // --- small DOM helpers (text only: nothing from the API is parsed as HTML) ---

  function h(tag, attrs, ...children) {
    const element = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined && value !== false) element.setAttribute(name, String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      element.append(child instanceof Node ? child : String(child));
    }
    return element;
  }

  function svg(tag, attrs, ...children) {
    const element = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) element.setAttribute(name, String(value));
    for (const child of children) element.append(child instanceof Node ? child : String(child));
    return element;
  }

  function replace(id, ...children) {
    document.getElementById(id).replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
  }

  function table(headers, rows, attrs) {
    return h("table", attrs, h("thead", null, h("tr", null, headers.map((x) => h("th", null, x)))), h("tbody", null, rows));
  }

  function badge(text, kind) {
    return h("span", { class: `badge ${kind}` }, text);
  }

  // --- formatting ---

  function rate(value) {
    if (value === null || value === undefined) return "–";
    if (value >= 1e6) return `${(value / 1e6).toFixed(1)}M`;
    if (value >= 1e4) return `${(value / 1e3).toFixed(1)}k`;
    if (value >= 100) return value.toFixed(0);
    return value.toFixed(1);
  }

  function count(value) {
    return Number(value).toLocaleString("en-US");
  }

  function duration(seconds) {
    const s = Math.floor(seconds);
    if (s < 120) return `${s} s`;
    if (s < 7200) return `${Math.floor(s / 60)} min`;
    if (s < 172800) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d`;
  }

  function clock(unixSeconds) {
    return new Date(unixSeconds * 1000).toLocaleTimeString("en-GB");
  }

  // --- fetching ---

  async function getJson(path) {
    const response = await fetch(path, { cache: "no-store" });
    const text = await response.text();
    let body;
    try {
      body = JSON.parse(text);
    } catch {
      throw new Error(`${path}: HTTP ${response.status}, not JSON`);
    }
    if (!response.ok) {
      const error = body && body.error;
      throw new Error(`${path}: ${error ? `${error.code}: ${error.message}` : `HTTP ${response.status}`}`);
    }
    return body;
  }

  async function fetchAll() {
    const [status, services, firewall] = await Promise.all([
      getJson("/api/v1/status"),
      getJson("/api/v1/services"),
      getJson("/api/v1/firewall/rules"),
    ]);
    const backends = await Promise.all(
      services.map((s) => getJson(`/api/v1/services/${encodeURIComponent(s.name)}/backends`)),
    );
    return { at: performance.now(), status, services, backends, firewall };
  }

  // --- rates from counter differences ---

  function counters(snapshot) {
    const byBackend = new Map();
    for (const list of snapshot.backends) {
      for (const b of list.backends) {
        byBackend.set(`${list.service}/${b.name}/${b.id}`, { service: list.service, backend: b.name, packets: b.packets, flows: b.new_flows });
      }
    }
    const drops = new Map(snapshot.firewall.drops.map((d) => [d.verdict, d.packets]));
    const rules = new Map(snapshot.firewall.rules.map((r) => [`${r.id}/${r.name}`, r.packets]));
    const traffic = snapshot.status.traffic;
    return { at: snapshot.at, byBackend, drops, rules, traffic };
  }

  // A counter that went down was reset (agent restarted with fresh maps): no rate this time.
  function perSecond(now, before, seconds) {
    if (before === undefined || now < before || seconds <= 0) return null;
    return (now - before) / seconds;
  }

  function computeRates(current, previous) {
    const seconds = previous ? (current.at - previous.at) / 1000 : 0;
    const backends = new Map();
    for (const [key, c] of current.byBackend) {
      const p = previous && previous.byBackend.get(key);
      backends.set(key, {
        service: c.service,
        backend: c.backend,
        pps: p ? perSecond(c.packets, p.packets, seconds) : null,
        fps: p ? perSecond(c.flows, p.flows, seconds) : null,
      });
    }
    const of = (map, key, value) => (previous ? perSecond(value, map.get(key), seconds) : null);
    const drops = new Map([...current.drops].map(([k, v]) => [k, of(previous && previous.drops, k, v)]));
    const rules = new Map([...current.rules].map(([k, v]) => [k, of(previous && previous.rules, k, v)]));
    const t = current.traffic;
    const pt = previous && previous.traffic;
    const totals = {
      pps: pt ? perSecond(t.packets, pt.packets, seconds) : null,
      fps: pt ? perSecond(t.new_flows, pt.new_flows, seconds) : null,
      dps: pt ? perSecond(t.dropped_packets, pt.dropped_packets, seconds) : null,
    };
    return { seconds, backends, drops, rules, totals };
  }

  // --- panels ---

  function renderHeader(status) {
    const writes = status.writes_enabled ? "writes need the token" : "writes disabled";
    document.getElementById("agent").textContent =
      `${status.version} on ${status.interface} (${status.attach}), pid ${status.pid}, up ${duration(status.uptime_s)}, ${writes}`;
  }

  function tile(label, value, id) {
    return h("div", { class: "tile", id }, h("div", { class: "tile-value" }, value), h("div", { class: "tile-label" }, label));
  }

  function renderOverview(status, rates) {
    const b = status.backends;
    replace(
      "overview",
      tile("services", String(status.services), "tile-services"),
      tile(`backends: ${b.active} active, ${b.draining} draining, ${b.down} down${b.standby ? `, ${b.standby} standby` : ""}`, String(b.total), "tile-backends"),
      tile("packets / s", rate(rates.totals.pps), "tile-pps"),
      tile("new flows / s", rate(rates.totals.fps), "tile-fps"),
      tile("dropped / s", rate(rates.totals.dps), "tile-dps"),
      tile("packets seen", count(status.traffic.packets), "tile-packets"),
    );
  }

  function healthCell(health, dbNode) {
    // Database services: the agent's [database] watch decides by the node's role.
    if (!health && dbNode) return h("td", null, `database: ${dbNode.role}${dbNode.error ? " (" + dbNode.error + ")" : ""}`);
    if (!health) return h("td", { class: "muted" }, "no check (counts as up)");
    const last = health.last_ok === null || health.last_ok === undefined ? "not checked yet" : health.last_ok ? "ok" : "failed";
    const latency = health.last_latency_ms === null || health.last_latency_ms === undefined ? "" : `, ${health.last_latency_ms.toFixed(1)} ms`;
    const detail = health.last_detail ? `: ${health.last_detail}` : "";
    return h(
      "td",
      { class: "health", "data-up": String(health.up), title: `${count(health.checks)} checks, ${count(health.failures)} failed; ${health.up ? "up" : "down"} since ${clock(health.since)}` },
      badge(health.up ? "up" : "down", health.up ? "good" : "bad"),
      ` ${health.kind} ${last}${detail}${latency}`,
      health.failures ? h("div", { class: "error-text small" }, `${count(health.failures)} of ${count(health.checks)} checks failed`) : null,
    );
  }

  const STATE_KIND = { active: "good", draining: "warn", down: "bad", standby: "info" };

  function renderServices(services, lists, rates, database) {
    const dbNodes = new Map(((database && database.nodes) || []).map((n) => [n.name, n]));
    const dbServices = new Set(database ? [database.write_service, database.read_service] : []);
    const blocks = services.map((service, i) => {
      const list = lists[i];
      const rows = list.backends.map((b) => {
        const r = rates.backends.get(`${list.service}/${b.name}/${b.id}`) || {};
        return h(
          "tr",
          { "data-service": service.name, "data-backend": b.name, "data-state": b.state },
          h("td", null, h("span", { class: `swatch ${colorOf(b.name)}` }), b.name),
          h("td", null, `${b.address}:${b.port}`),
          h("td", { class: "num" }, String(b.weight)),
          h("td", { class: "state" }, badge(b.state, STATE_KIND[b.state] || "warn"), b.admin === "draining" && b.state !== "draining" ? " (admin: draining)" : null),
          healthCell(b.health, dbServices.has(list.service) ? dbNodes.get(b.name) : undefined),
          h("td", { class: "num pps" }, rate(r.pps)),
          h("td", { class: "num fps" }, rate(r.fps)),
          h("td", { class: "num" }, count(b.packets)),
          h("td", { class: "num" }, count(b.new_flows)),
        );
      });
      const title = `${service.name}`;
      const about = `${service.vip.includes(":") ? `[${service.vip}]` : service.vip}:${service.port}/${service.protocol}, ${service.mode}, ${service.algorithm.replace("_", " ")}, health ${service.health_check || "none"}, ${service.in_rotation}/${service.backends} in rotation`;
      return h(
        "div",
        { class: "service", "data-service": service.name },
        h("h3", null, title, h("span", { class: "muted" }, `  ${about}`)),
        table(["backend", "address", "weight", "state", "health: last check", "pkts/s", "flows/s", "packets", "flows"], rows),
      );
    });
    replace("services", blocks.length ? blocks : [h("p", { class: "muted" }, "no services configured")]);
  }

  function renderFirewall(firewall, rates) {
    const reason = (verdict) => verdict.replace(/^drop_/, "").replaceAll("_", " ");
    const dropped = firewall.drops.filter((d) => d.packets > 0).sort((a, b) => b.packets - a.packets || a.verdict.localeCompare(b.verdict));
    const never = firewall.drops.filter((d) => d.packets === 0);
    const most = Math.max(1, ...dropped.map((d) => d.packets));
    const dropRows = dropped.map((d) =>
      h(
        "tr",
        { "data-reason": d.verdict },
        h("td", null, reason(d.verdict)),
        h("td", { class: "num" }, count(d.packets)),
        h("td", { class: "num" }, rate(rates.drops.get(d.verdict))),
        h("td", { class: "bar-cell" }, h("meter", { min: 0, max: most, value: d.packets })),
      ),
    );
    // Reasons with no drop yet take one line, so the ones that matter stay in view.
    const none = never.length
      ? h("p", { class: "muted small" }, "none yet: ", never.map((d, i) => h("span", { "data-reason": d.verdict }, `${i ? ", " : ""}${reason(d.verdict)}`)))
      : null;
    replace(
      "drops",
      dropRows.length ? table(["reason", "packets", "/ s", ""], dropRows, { class: "drops" }) : h("p", null, "no packet dropped"),
      none,
    );
    const hit = firewall.rules.filter((r) => r.packets > 0).sort((a, b) => b.packets - a.packets);
    const ruleRows = hit.map((r) =>
      h(
        "tr",
        { "data-rule": r.name },
        h("td", null, r.name, r.runtime ? h("span", { class: "muted" }, " (runtime)") : null),
        h("td", null, badge(r.action, r.action === "drop" ? "bad" : r.action === "log" ? "warn" : "good")),
        h("td", { class: "num" }, count(r.packets)),
        h("td", { class: "num" }, rate(rates.rules.get(`${r.id}/${r.name}`))),
        h("td", { class: "num muted" }, r.last_hit_s_ago === null ? "never" : `${r.last_hit_s_ago.toFixed(0)} s ago`),
      ),
    );
    replace(
      "rules",
      hit.length
        ? table(["rule", "action", "packets", "/ s", "last hit"], ruleRows)
        : h("p", { class: "muted" }, firewall.rules.length ? `none of the ${firewall.rules.length} rules has matched yet` : "no rules configured"),
    );
  }

  const ROLE_KIND = { primary: "good", replica: "info", standby: "info", lagging: "warn", down: "bad", fenced: "bad", diverged: "bad", unknown: "warn" };

  // `database` of GET /api/v1/status: null or absent when the agent manages no database.
  function renderDatabase(database) {
    if (database === null || database === undefined) {
      replace("database", h("p", { class: "muted", id: "database-none" }, "no database configured"));
      return;
    }
    const last = database.last_failover;
    const summary = h(
      "p",
      { id: "database-summary", "data-primary": database.primary || "" },
      "primary ",
      database.primary ? h("strong", null, database.primary) : badge("none", "bad"),
      ` · failovers ${count(database.failovers)}`,
      last ? ` · last: ${last.from} → ${last.to} in ${(last.duration_ms / 1000).toFixed(2)} s at ${clock(last.at_unix)}${last.forced ? " (forced)" : ""}` : "",
      database.failover_policy ? ` · failover: ${database.failover_policy}` : "",
    );
    // Safe failover refused (or none is allowed): the write VIP is empty and this says why.
    const blocked = database.failover_blocked
      ? h("p", { id: "database-blocked", class: "error-text" }, badge("no writable primary", "bad"), ` ${database.failover_blocked}`)
      : null;
    const yesNo = (v) => (v === null || v === undefined ? "–" : v ? "yes" : "no");
    const rows = (database.nodes || []).map((n) =>
      h(
        "tr",
        { "data-node": n.name, "data-role": n.role },
        h("td", null, n.name),
        h("td", null, n.address),
        h("td", null, badge(n.role, ROLE_KIND[n.role] || "warn")),
        h("td", null, n.reachable ? "yes" : badge("no", "bad")),
        h("td", null, yesNo(n.read_only)),
        h("td", { class: "num" }, n.lag_s === null || n.lag_s === undefined ? "–" : `${n.lag_s} s`),
        h("td", { class: "mono" }, n.gtid || "–"),
        h("td", { class: "error-text" }, n.error || ""),
      ),
    );
    replace("database", summary, blocked, table(["node", "address", "role", "reachable", "read-only", "lag", "GTID", "error"], rows));
  }

  // --- chart ---

  function colorOf(name) {
    if (!state.colors.has(name)) state.colors.set(name, `c${state.colors.size % PALETTE_SIZE}`);
    return state.colors.get(name);
  }

  // Series for the chosen scope: by backend name over every service, or one service's backends.
  function seriesOf(metric) {
    const names = new Set();
    for (const sample of state.samples) {
      for (const r of sample.rates.values()) if (!state.scope || r.service === state.scope) names.add(r.backend);
    }
    return [...names].sort().map((name) => ({
      name,
      points: state.samples.map((sample) => {
        let total = null;
        for (const r of sample.rates.values()) {
          if (r.backend !== name || (state.scope && r.service !== state.scope) || r[metric] === null) continue;
          total = (total || 0) + r[metric];
        }
        return { at: sample.at, value: total };
      }),
    }));
  }

  // A round axis maximum (1, 2 or 5 times a power of ten) at or above `value`.
  function niceMax(value) {
    if (!(value > 0)) return 1;
    const power = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 5, 10]) if (value <= step * power) return step * power;
    return 10 * power;
  }

  function drawChart(id, metric) {
    const element = document.getElementById(id);
    const series = seriesOf(metric);
    const now = performance.now();
    const span = HISTORY * POLL_MS;
    const max = niceMax(Math.max(0, ...series.flatMap((s) => s.points.map((p) => p.value || 0))));
    const plotWidth = CHART.width - CHART.left - CHART.right;
    const plotHeight = CHART.height - CHART.top - CHART.bottom;
    const x = (at) => CHART.left + plotWidth * (1 - (now - at) / span);
    const y = (value) => CHART.top + plotHeight * (1 - value / max);
    const parts = [];
    for (let i = 0; i <= 4; i++) {
      const value = (max * i) / 4;
      parts.push(svg("line", { class: "grid", x1: CHART.left, x2: CHART.width - CHART.right, y1: y(value), y2: y(value) }));
      parts.push(svg("text", { class: "axis", x: CHART.left - 6, y: y(value) + 4, "text-anchor": "end" }, rate(value)));
    }
    for (const seconds of [120, 90, 60, 30, 0]) {
      parts.push(svg("text", { class: "axis", x: x(now - seconds * 1000), y: CHART.height - 6, "text-anchor": "middle" }, seconds ? `-${seconds} s` : "now"));
    }
    for (const s of series) {
      let d = "";
      let pen = false;
      let drawn = 0;
      let last = null;
      let peak = 0;
      for (const p of s.points) {
        if (p.value === null || now - p.at > span) {
          pen = false;
          continue;
        }
        d += `${pen ? "L" : "M"}${x(p.at).toFixed(1)},${y(p.value).toFixed(1)}`;
        pen = true;
        drawn += 1;
        last = p.value;
        peak = Math.max(peak, p.value);
      }
      parts.push(
        svg("path", {
          class: `series ${colorOf(s.name)}`,
          d: d || "M0,0",
          "data-backend": s.name,
          "data-points": drawn,
          "data-last": last === null ? "" : last.toFixed(3),
          "data-max": peak.toFixed(3),
        }),
      );
    }
    element.replaceChildren(...parts);
    element.dataset.samples = String(state.samples.length);
    element.dataset.max = String(max);
    return series;
  }

  function renderCharts() {
    const series = drawChart("chart-packets", "pps");
    drawChart("chart-flows", "fps");
    replace(
      "legend",
      series.map((s) => {
        const last = [...s.points].reverse().find((p) => p.value !== null);
        return h("li", { "data-backend": s.name }, h("span", { class: `swatch ${colorOf(s.name)}` }), `${s.name} ${last ? rate(last.value) : "–"} pkts/s`);
      }),
    );
  }

  function renderScopeChoices(services) {
    const select = document.getElementById("chart-scope");
    const wanted = ["", ...services.map((s) => s.name)];
    const have = [...select.options].map((o) => o.value);
    if (wanted.join("\n") === have.join("\n")) return;
    select.replaceChildren(...wanted.map((name) => h("option", { value: name }, name || "all services (by backend name)")));
    if (!wanted.includes(state.scope)) state.scope = "";
    select.value = state.scope;
  }

  // --- the loop ---

  function showError(message) {
    const banner = document.getElementById("error");
    banner.hidden = false;
    banner.textContent = `The agent did not answer: ${message}. Showing the last data; retrying every second.`;
    document.body.dataset.error = message;
    const badgeElement = document.getElementById("poll-state");
    badgeElement.textContent = "stale";
    badgeElement.className = "badge bad";
  }

  function clearError() {
    document.getElementById("error").hidden = true;
    delete document.body.dataset.error;
    const badgeElement = document.getElementById("poll-state");
    badgeElement.textContent = `live · ${new Date().toLocaleTimeString("en-GB")}`;
    badgeElement.className = "badge good";
  }

  async function tick() {
    const started = performance.now();
    try {
      const snapshot = await fetchAll();
      const current = counters(snapshot);
      const rates = computeRates(current, state.previous);
      if (state.previous) {
        state.samples.push({ at: current.at, seconds: rates.seconds, rates: rates.backends });
        if (state.samples.length > HISTORY) state.samples.shift();
      }
      state.previous = current;
      renderHeader(snapshot.status);
      renderOverview(snapshot.status, rates);
      renderServices(snapshot.services, snapshot.backends, rates, snapshot.status.database);
      renderFirewall(snapshot.firewall, rates);
      renderDatabase(snapshot.status.database);
      renderScopeChoices(snapshot.services);
      renderCharts();
      state.polls += 1;
      document.body.dataset.polls = String(state.polls);
      clearError();
    } catch (error) {
      showError(error.message || String(error));
    }
    setTimeout(tick, Math.max(100, POLL_MS - (performance.now() - started)));
  }

  document.getElementById("chart-scope").addEventListener("change", (event) => {
    state.scope = event.target.value;
    renderCharts();
  });

  // For tests and the curious: the database panel can be rendered from any object of its shape.
  window.lbDashboard = { renderDatabase, state };
  tick();
})();
