// WarrenMQ management UI: a small hash-routed page over the management HTTP API.
// Credentials live in sessionStorage and go out as HTTP basic auth on every call; the
// X-Requested-With header keeps the browser from popping its own login dialog on a 401.
"use strict";

const REFRESH_MS = 5000;
const MOVING_REFRESH_MS = 1000;  // a page showing a move under way follows it closely
let timer = null;
let nextRefresh = null;  // a page may ask for its next refresh sooner
const notes = {};  // how a move or rebalance started from a page ended, by vhost

// --- API -------------------------------------------------------------------------------
function credentials() { return sessionStorage.getItem("warren.auth"); }

async function api(method, path, body) {
  const headers = { "Authorization": "Basic " + credentials(), "X-Requested-With": "XMLHttpRequest" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (resp.status === 401 && path === "/api/whoami") throw new Error("Login failed");
  const text = await resp.text();
  const data = text ? JSON.parse(text) : null;
  if (!resp.ok) throw new Error((data && data.reason) || resp.statusText);
  return data;
}

const enc = encodeURIComponent;

// --- DOM helpers (textContent only: names come from clients and must not become HTML) ---
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) e.append(c instanceof Node ? c : String(c ?? ""));
  return e;
}

function fmt(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

function bytes(n) {
  if (n === null || n === undefined) return "?";
  const units = ["bytes", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i ? n.toFixed(1) + " " + units[i] : n + " bytes";
}

// a move under way, as its owner follows it (GET /api/cluster/vhosts/NAME?shard=K "move")
function moveText(m) {
  if (!m) return "";
  if (m.phase === "drain") return `to ${m.target}: in sync, publishers paused for the last records`;
  if (!m.connected || !m.lag) return `to ${m.target}: waiting for it to connect to the owner`;
  const parts = [];
  if (m.copied_bytes) parts.push(bytes(m.copied_bytes) + (m.snapshot_bytes ? " of about " + bytes(m.snapshot_bytes) : "") + " copied");
  parts.push(`${m.lag.records} records (${bytes(m.lag.bytes)}) behind`);
  parts.push(m.eta_s === null || m.eta_s === undefined ? "time left unknown yet" : `about ${m.eta_s} s left`);
  return `to ${m.target}: ` + parts.join(", ");
}

function moveCell(m) {
  if (!m) return "";
  const text = el("span", { class: "move-progress" }, moveText(m));
  if (!m.snapshot_bytes || m.phase !== "sync") return text;
  return el("span", {}, el("progress", { max: m.snapshot_bytes, value: Math.min(m.copied_bytes, m.snapshot_bytes) }), " ", text);
}

function lagText(lag) {
  return Object.entries(lag || {}).sort().map(([n, l]) => `${n}: ${l.records} records (${bytes(l.bytes)})`).join("; ");
}

function rate(obj, key) {
  const d = obj && obj[key + "_details"];
  return d ? d.rate.toFixed(1) + "/s" : "";
}

// columns: [header, row => value, numeric?]
function table(id, columns, rows) {
  return el("table", { id },
    el("thead", {}, el("tr", {}, columns.map(([h, , n]) => el("th", { class: n ? "num" : null }, h)))),
    el("tbody", {}, rows.length ? rows.map(r => el("tr", {}, columns.map(([, f, n]) => {
      const v = f(r);
      return el("td", { class: n ? "num" : null }, v instanceof Node ? v : fmt(v));
    }))) : el("tr", {}, el("td", { colspan: columns.length }, "None"))));
}

function field(label, input) { return el("label", {}, label, input); }

function form(id, children, onsubmit) {
  const status = el("span", { class: "status", id: id + "-status" });
  const f = el("form", { id, class: "inline" }, children, status);
  f.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    status.className = "status";
    status.textContent = "";
    try {
      const msg = await onsubmit(f);
      status.className = "status ok";
      status.textContent = msg || "Done";
    } catch (e) {
      status.className = "status error";
      status.textContent = e.message;
    }
  });
  return f;
}

function vhostSelect(id, vhosts) {
  return el("select", { id }, vhosts.map(v => el("option", { value: v.name }, v.name)));
}

// --- charts: a line chart of the sampler's history on a canvas --------------------------
function chart(id, history, series) {
  const c = el("canvas", { id, class: "chart", width: 640, height: 180 });
  const ctx = c.getContext("2d");
  const w = c.width, h = c.height, pad = 30;
  const max = Math.max(1, ...history.flatMap(p => series.map(([k]) => p[k] || 0)));
  ctx.fillStyle = "#666"; ctx.font = "11px sans-serif";
  ctx.fillText(max.toFixed(1), 2, 12); ctx.fillText("0", 2, h - pad + 4);
  ctx.strokeStyle = "#ddd"; ctx.beginPath(); ctx.moveTo(pad, h - pad); ctx.lineTo(w, h - pad); ctx.stroke();
  for (const [key, color] of series) {
    ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
    history.forEach((p, i) => {
      const x = pad + (w - pad) * (history.length > 1 ? i / (history.length - 1) : 1);
      const y = (h - pad) - (h - pad - 10) * ((p[key] || 0) / max);
      i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
    });
    ctx.stroke();
  }
  const legend = el("div", { class: "legend" }, series.map(([k, color, label]) =>
    el("span", {}, el("i", { style: "background:" + color }), label || k)));
  return el("div", {}, c, legend);
}

// --- pages -----------------------------------------------------------------------------
const pages = {
  async "" () {
    const o = await api("GET", "/api/overview");
    const t = o.object_totals, q = o.queue_totals, m = o.message_stats || {};
    const card = (k, v) => el("div", { class: "card" }, el("div", { class: "v" }, fmt(v)), el("div", { class: "k" }, k));
    return [
      el("h1", {}, "Overview"),
      el("p", {}, `${o.product_name} ${o.product_version} on node ${o.node}, cluster ${o.cluster_name}`),
      el("div", { class: "cards", id: "totals" },
        card("Connections", t.connections), card("Channels", t.channels), card("Exchanges", t.exchanges),
        card("Queues", t.queues), card("Consumers", t.consumers)),
      el("h2", {}, "Queued messages"),
      el("div", { class: "cards" }, card("Ready", q.messages_ready), card("Unacked", q.messages_unacknowledged), card("Total", q.messages)),
      chart("chart-queued", o.rates_history || [], [["messages_ready", "#c49a00", "Ready"], ["messages_unacknowledged", "#3b6fb6", "Unacked"]]),
      el("h2", {}, "Message rates"),
      el("div", { class: "cards", id: "rates" },
        card("Publish", rate(m, "publish")), card("Deliver / get", rate(m, "deliver_get")),
        card("Ack", rate(m, "ack")), card("Redeliver", rate(m, "redeliver"))),
      chart("chart-rates", o.rates_history || [], [["publish", "#c49a00", "Publish"], ["deliver_get", "#3b6fb6", "Deliver"], ["ack", "#2e7d32", "Ack"]]),
    ];
  },

  async connections() {
    const rows = await api("GET", "/api/connections");
    return [el("h1", {}, "Connections"), table("connections-table", [
      ["Name", r => r.name], ["User", r => r.user], ["Vhost", r => r.vhost],
      ["State", r => r.state], ["Channels", r => r.channels, 1],
      ["From client", r => rate(r, "recv_oct"), 1], ["To client", r => rate(r, "send_oct"), 1],
      ["", r => el("button", { class: "danger", onclick: async () => {
        if (!confirm("Close " + r.name + "?")) return;
        await api("DELETE", "/api/connections/" + enc(r.name)); render();
      } }, "Close")],
    ], rows)];
  },

  async channels() {
    const rows = await api("GET", "/api/channels");
    return [el("h1", {}, "Channels"), table("channels-table", [
      ["Channel", r => r.name], ["User", r => r.user], ["Vhost", r => r.vhost],
      ["Mode", r => (r.confirm ? "C" : "") + (r.transactional ? "T" : "")],
      ["Prefetch", r => r.prefetch_count, 1], ["Consumers", r => r.consumer_count, 1],
      ["Unacked", r => r.messages_unacknowledged, 1],
      ["Publish", r => rate(r.message_stats, "publish"), 1], ["Deliver", r => rate(r.message_stats, "deliver_get"), 1],
      ["Ack", r => rate(r.message_stats, "ack"), 1],
    ], rows)];
  },

  async exchanges() {
    const [rows, vhosts] = await Promise.all([api("GET", "/api/exchanges"), api("GET", "/api/vhosts")]);
    return [el("h1", {}, "Exchanges"), table("exchanges-table", [
      ["Vhost", r => r.vhost], ["Name", r => el("a", { href: `#/exchange/${enc(r.vhost)}/${enc(r.name || "amq.default")}` }, r.name || "(AMQP default)")],
      ["Type", r => r.type], ["Features", r => [r.durable ? "D" : "", r.auto_delete ? "AD" : "", r.internal ? "I" : ""].join(" ").trim()],
      ["In", r => rate(r.message_stats, "publish_in"), 1], ["Out", r => rate(r.message_stats, "publish_out"), 1],
    ], rows),
    el("h2", {}, "Add a new exchange"),
    form("declare-exchange", [
      field("Vhost", vhostSelect("declare-exchange-vhost", vhosts)),
      field("Name", el("input", { id: "declare-exchange-name", required: true })),
      field("Type", el("select", { id: "declare-exchange-type" }, ["direct", "fanout", "topic", "headers"].map(t => el("option", {}, t)))),
      field("Durable", el("select", { id: "declare-exchange-durable" }, el("option", { value: "true" }, "Durable"), el("option", { value: "false" }, "Transient"))),
      el("button", { type: "submit", id: "declare-exchange-submit" }, "Add exchange"),
    ], async (f) => {
      const v = f.querySelector("#declare-exchange-vhost").value, n = f.querySelector("#declare-exchange-name").value;
      await api("PUT", `/api/exchanges/${enc(v)}/${enc(n)}`, { type: f.querySelector("#declare-exchange-type").value,
        durable: f.querySelector("#declare-exchange-durable").value === "true" });
      setTimeout(render, 300);
      return `Exchange ${n} declared`;
    })];
  },

  async exchange(vhost, name) {
    const x = await api("GET", `/api/exchanges/${enc(vhost)}/${enc(name)}`);
    const bindings = await api("GET", `/api/exchanges/${enc(vhost)}/${enc(name)}/bindings/source`);
    return [el("h1", {}, `Exchange ${x.name || "(AMQP default)"} in ${vhost}`),
      el("p", {}, `Type ${x.type}, ${x.durable ? "durable" : "transient"}`),
      el("h2", {}, "Bindings"),
      table("exchange-bindings", [["To", r => r.destination], ["Kind", r => r.destination_type], ["Routing key", r => r.routing_key], ["Arguments", r => r.arguments]], bindings),
      el("h2", {}, "Publish message"), publishForm(vhost, name, "")];
  },

  async queues() {
    const [rows, vhosts] = await Promise.all([api("GET", "/api/queues"), api("GET", "/api/vhosts")]);
    return [el("h1", {}, "Queues"), table("queues-table", [
      ["Vhost", r => r.vhost], ["Name", r => el("a", { href: `#/queue/${enc(r.vhost)}/${enc(r.name)}` }, r.name)],
      ["Type", r => r.type],
      ["Features", r => [r.durable ? "D" : "", r.auto_delete ? "AD" : "", r.exclusive ? "Excl" : ""].join(" ").trim()],
      ["Policy", r => r.policy], ["State", r => r.state],
      ["Node", r => r.node], ["Shard", r => r.shard, 1],
      ["Ready", r => r.messages_ready, 1], ["Unacked", r => r.messages_unacknowledged, 1], ["Total", r => r.messages, 1],
      ["Consumers", r => r.consumers, 1],
      ["Incoming", r => rate(r.message_stats, "publish"), 1], ["Deliver / get", r => rate(r.message_stats, "deliver_get"), 1],
      ["Ack", r => rate(r.message_stats, "ack"), 1],
    ], rows),
    el("h2", {}, "Add a new queue"),
    form("declare-queue", [
      field("Vhost", vhostSelect("declare-queue-vhost", vhosts)),
      field("Name", el("input", { id: "declare-queue-name", required: true })),
      field("Type", el("select", { id: "declare-queue-type" }, el("option", { value: "classic" }, "Classic"), el("option", { value: "quorum" }, "Quorum"))),
      field("Durability", el("select", { id: "declare-queue-durable" }, el("option", { value: "true" }, "Durable"), el("option", { value: "false" }, "Transient"))),
      field("Arguments (JSON)", el("input", { id: "declare-queue-arguments", placeholder: '{"x-max-length": 1000}' })),
      el("button", { type: "submit", id: "declare-queue-submit" }, "Add queue"),
    ], async (f) => {
      const v = f.querySelector("#declare-queue-vhost").value, n = f.querySelector("#declare-queue-name").value;
      const raw = f.querySelector("#declare-queue-arguments").value.trim();
      const args = raw ? JSON.parse(raw) : {}, type = f.querySelector("#declare-queue-type").value;
      if (type !== "classic" && !("x-queue-type" in args)) args["x-queue-type"] = type;
      await api("PUT", `/api/queues/${enc(v)}/${enc(n)}`, { durable: f.querySelector("#declare-queue-durable").value === "true",
        auto_delete: false, arguments: args });
      setTimeout(render, 300);
      return `Queue ${n} declared`;
    })];
  },

  async queue(vhost, name) {
    const q = await api("GET", `/api/queues/${enc(vhost)}/${enc(name)}`);
    const results = el("div", { id: "get-results" });
    return [el("h1", {}, `Queue ${q.name} in ${vhost}`),
      el("div", { class: "cards", id: "queue-counts" },
        ...[["Ready", q.messages_ready], ["Unacked", q.messages_unacknowledged], ["Total", q.messages], ["Consumers", q.consumers]]
          .map(([k, v]) => el("div", { class: "card" }, el("div", { class: "v", id: "queue-" + k.toLowerCase() }, fmt(v)), el("div", { class: "k" }, k)))),
      el("p", { id: "queue-type" }, `Type ${q.type}` + (q.type === "quorum" ? `, leader ${q.leader}, members ${(q.members || []).join(", ")}` : "")),
      el("p", {}, `${q.durable ? "Durable" : "Transient"}, policy ${q.policy || "none"}, arguments ${fmt(q.arguments)}`),
      el("h2", {}, "Consumers"),
      table("queue-consumers", [["Tag", r => r.consumer_tag], ["Channel", r => r.channel_details.connection_name + " (" + r.channel_details.number + ")"],
        ["Ack required", r => r.ack_required], ["Prefetch", r => r.prefetch_count, 1]], q.consumer_details || []),
      el("h2", {}, "Publish message"), publishForm(vhost, "amq.default", name),
      el("h2", {}, "Get messages"),
      form("get", [
        field("Ack mode", el("select", { id: "get-ackmode" },
          el("option", { value: "ack_requeue_true" }, "Nack message requeue true"),
          el("option", { value: "ack_requeue_false" }, "Ack message requeue false"),
          el("option", { value: "reject_requeue_true" }, "Reject requeue true"),
          el("option", { value: "reject_requeue_false" }, "Reject requeue false"))),
        field("Messages", el("input", { id: "get-count", type: "number", value: "1", min: "1" })),
        el("button", { type: "submit", id: "get-submit" }, "Get message(s)"),
      ], async (f) => {
        const msgs = await api("POST", `/api/queues/${enc(vhost)}/${enc(name)}/get`, {
          count: Number(f.querySelector("#get-count").value), ackmode: f.querySelector("#get-ackmode").value,
          encoding: "auto", truncate: 50000 });
        results.replaceChildren(...msgs.map((m, i) => el("div", { class: "message" },
          el("h3", {}, `Message ${i + 1}`),
          el("p", {}, `Exchange "${m.exchange}", routing key "${m.routing_key}", redelivered ${m.redelivered}, ${m.message_count} left`),
          el("p", {}, "Properties: " + fmt(m.properties)),
          el("pre", { class: "msg payload" }, m.payload))));
        return msgs.length ? `${msgs.length} message(s)` : "Queue is empty";
      }),
      results,
      el("h2", {}, "Purge or delete"),
      el("button", { id: "purge", class: "danger", onclick: async () => { await api("DELETE", `/api/queues/${enc(vhost)}/${enc(name)}/contents`); render(); } }, "Purge messages"),
      " ",
      el("button", { id: "delete-queue", class: "danger", onclick: async () => {
        if (!confirm("Delete queue " + name + "?")) return;
        await api("DELETE", `/api/queues/${enc(vhost)}/${enc(name)}`); location.hash = "#/queues"; } }, "Delete queue")];
  },

  async vhosts() {
    const [rows, nodes] = await Promise.all([api("GET", "/api/vhosts"), api("GET", "/api/nodes")]);
    // a vhost moves with its messages to another node (its owner brings it in sync first)
    const mover = (r) => {
      const pick = el("select", { id: "move-" + r.name }, nodes.filter(n => n.name !== r.owner).map(n => el("option", { value: n.name }, n.name)));
      const status = el("span", { class: "status" });
      const go = el("button", { class: "move", onclick: async () => {
        status.className = "status"; status.textContent = "moving…";
        try {
          const done = await api("POST", `/api/cluster/vhosts/${enc(r.name)}/move`, { node: pick.value });
          status.className = "status ok"; status.textContent = `moved to ${done.owner} (paused ${done.pause_ms} ms)`;
          setTimeout(render, 800);
        } catch (e) { status.className = "status error"; status.textContent = e.message; }
      } }, "Move");
      return r.owner ? el("span", {}, pick, go, status) : "";
    };
    return [el("h1", {}, "Virtual hosts"), table("vhosts-table", [
      ["Name", r => el("a", { href: `#/vhost/${enc(r.name)}` }, r.name)], ["Description", r => r.description], ["Tags", r => (r.tags || []).join(", ")],
      ["Shards", r => r.shards || 1, 1],
      ["Owner", r => r.owner || ""], ["Epoch", r => r.epoch, 1],
      ["Replicas", r => (r.replicas || []).join(", ")], ["In sync", r => (r.in_sync || []).join(", ")],
      ["Available", r => r.available === false ? "no" : "yes"],
      ["Ready", r => r.messages_ready, 1], ["Unacked", r => r.messages_unacknowledged, 1], ["Total", r => r.messages, 1],
      ["Publish", r => rate(r.message_stats, "publish"), 1], ["Deliver", r => rate(r.message_stats, "deliver_get"), 1],
      ["Move to", mover],
    ], rows),
    el("h2", {}, "Add a new virtual host"),
    form("add-vhost", [field("Name", el("input", { id: "add-vhost-name", required: true })),
      field("Description", el("input", { id: "add-vhost-description" })),
      el("button", { type: "submit" }, "Add virtual host")], async (f) => {
      const n = f.querySelector("#add-vhost-name").value;
      await api("PUT", "/api/vhosts/" + enc(n), { description: f.querySelector("#add-vhost-description").value });
      setTimeout(render, 300);
      return `Virtual host ${n} added`;
    })];
  },

  // one vhost's placement: each shard's owner, epoch, copies and lag, and a move under way
  async vhost(name) {
    const [p, nodes] = await Promise.all([api("GET", `/api/cluster/vhosts/${enc(name)}`), api("GET", "/api/nodes")]);
    // a shard's live figures (its replicas' lag, a move) are its owner's: ask each one
    const shards = p.shards ? await Promise.all(p.shards.map(s =>
      api("GET", `/api/cluster/vhosts/${enc(name)}?shard=${s.shard}`).catch(() => s))) : [Object.assign({ shard: 0 }, p)];
    if (shards.some(s => s.move)) nextRefresh = MOVING_REFRESH_MS;
    const note = el("p", { id: "vhost-note", class: notes[name] ? notes[name][0] : "" }, notes[name] ? notes[name][1] : "");
    const act = async (what, path, body, done) => {
      notes[name] = ["status", what + "…"]; render();
      try { notes[name] = ["status ok", done(await api("POST", path, body))]; }
      catch (e) { notes[name] = ["status error", e.message]; }
      render();
    };
    const mover = (s) => {
      const pick = el("select", { id: `move-shard-${s.shard}` }, nodes.filter(n => n.name !== s.owner).map(n => el("option", { value: n.name }, n.name)));
      return el("span", {}, pick, el("button", { class: "move", id: `move-shard-${s.shard}-go`, onclick: () =>
        act(`moving shard ${s.shard} to ${pick.value}`, `/api/cluster/vhosts/${enc(name)}/move`, { node: pick.value, shard: s.shard },
          d => `shard ${s.shard} moved to ${d.owner} (epoch ${d.epoch}, publishers paused ${d.pause_ms} ms` +
            (d.copied_bytes ? `, ${bytes(d.copied_bytes)} copied` : "") + ")") }, "Move"));
    };
    return [el("h1", {}, `Virtual host ${name}`),
      el("p", {}, `${shards.length} shard${shards.length === 1 ? "" : "s"}, ${p.replication_factor} cop${p.replication_factor === 1 ? "y" : "ies"} of each`),
      table("shards-table", [
        ["Shard", s => s.shard, 1], ["Owner", s => s.owner || ""], ["Epoch", s => s.epoch, 1],
        ["Replicas", s => (s.replicas || []).join(", ")], ["In sync", s => (s.in_sync || []).join(", ")],
        ["Lag", s => lagText(s.lag)], ["Available", s => s.available === false ? "no" : "yes"],
        ["Move under way", s => moveCell(s.move)], ["Move to", mover],
      ], shards),
      note,
      el("button", { id: "rebalance", onclick: () => act("rebalancing", `/api/cluster/vhosts/${enc(name)}/rebalance`, {},
        d => d.moves.length ? d.moves.map(m => `shard ${m.shard}: ${m.from} → ${m.to}`).join("; ") : "nothing to move: the shards are spread already") },
        "Rebalance shards over the running nodes")];
  },

  async users() {
    const [users, perms, vhosts] = await Promise.all([api("GET", "/api/users"), api("GET", "/api/permissions"), api("GET", "/api/vhosts")]);
    return [el("h1", {}, "Users"), table("users-table", [
      ["Name", r => r.name], ["Tags", r => r.tags.join(", ")],
      ["Can access", r => perms.filter(p => p.user === r.name).map(p => p.vhost).join(", ") || "No access"],
    ], users),
    el("h2", {}, "Add a user"),
    form("add-user", [field("Username", el("input", { id: "add-user-name", required: true })),
      field("Password", el("input", { id: "add-user-password", type: "password" })),
      field("Tags", el("input", { id: "add-user-tags", placeholder: "administrator, monitoring" })),
      el("button", { type: "submit" }, "Add user")], async (f) => {
      const n = f.querySelector("#add-user-name").value;
      await api("PUT", "/api/users/" + enc(n), { password: f.querySelector("#add-user-password").value, tags: f.querySelector("#add-user-tags").value });
      setTimeout(render, 300);
      return `User ${n} added`;
    }),
    el("h2", {}, "Permissions"),
    table("permissions-table", [["User", r => r.user], ["Vhost", r => r.vhost], ["Configure", r => r.configure], ["Write", r => r.write], ["Read", r => r.read]], perms),
    form("set-permission", [field("User", el("select", { id: "perm-user" }, users.map(u => el("option", {}, u.name)))),
      field("Vhost", vhostSelect("perm-vhost", vhosts)),
      field("Configure", el("input", { id: "perm-configure", value: ".*" })),
      field("Write", el("input", { id: "perm-write", value: ".*" })),
      field("Read", el("input", { id: "perm-read", value: ".*" })),
      el("button", { type: "submit" }, "Set permission")], async (f) => {
      const u = f.querySelector("#perm-user").value, v = f.querySelector("#perm-vhost").value;
      await api("PUT", `/api/permissions/${enc(v)}/${enc(u)}`, { configure: f.querySelector("#perm-configure").value,
        write: f.querySelector("#perm-write").value, read: f.querySelector("#perm-read").value });
      setTimeout(render, 300);
      return "Permission set";
    })];
  },

  async policies() {
    const [rows, vhosts] = await Promise.all([api("GET", "/api/policies"), api("GET", "/api/vhosts")]);
    return [el("h1", {}, "Policies"), table("policies-table", [
      ["Vhost", r => r.vhost], ["Name", r => r.name], ["Pattern", r => r.pattern], ["Apply to", r => r["apply-to"]],
      ["Definition", r => r.definition], ["Priority", r => r.priority, 1],
      ["", r => el("button", { class: "danger", onclick: async () => { await api("DELETE", `/api/policies/${enc(r.vhost)}/${enc(r.name)}`); render(); } }, "Clear")],
    ], rows),
    el("h2", {}, "Add / update a policy"),
    form("set-policy", [field("Vhost", vhostSelect("policy-vhost", vhosts)),
      field("Name", el("input", { id: "policy-name", required: true })),
      field("Pattern", el("input", { id: "policy-pattern", required: true, placeholder: "^amq\\." })),
      field("Apply to", el("select", { id: "policy-apply-to" }, ["all", "queues", "exchanges"].map(t => el("option", {}, t)))),
      field("Priority", el("input", { id: "policy-priority", type: "number", value: "0" })),
      field("Definition (JSON)", el("input", { id: "policy-definition", required: true, placeholder: '{"max-length": 1000}' })),
      el("button", { type: "submit" }, "Add / update policy")], async (f) => {
      const v = f.querySelector("#policy-vhost").value, n = f.querySelector("#policy-name").value;
      await api("PUT", `/api/policies/${enc(v)}/${enc(n)}`, { pattern: f.querySelector("#policy-pattern").value,
        "apply-to": f.querySelector("#policy-apply-to").value, priority: Number(f.querySelector("#policy-priority").value),
        definition: JSON.parse(f.querySelector("#policy-definition").value) });
      setTimeout(render, 300);
      return `Policy ${n} set`;
    })];
  },

  async nodes() {
    const [rows, vhosts] = await Promise.all([api("GET", "/api/nodes"), api("GET", "/api/vhosts")]);
    const mb = (b) => (b / 1048576).toFixed(0) + " MiB";
    return [el("h1", {}, "Nodes"), table("nodes-table", [
      ["Name", r => r.name], ["Running", r => r.running],
      ["Raft role", r => r.leader ? "leader" : (r.running ? "follower" : "down")],
      ["Vhosts owned", r => (r.owned_vhosts || []).join(", ")],
      ["Replica of", r => vhosts.filter(v => (v.replicas || []).includes(r.name))
        .map(v => v.name + ((v.in_sync || []).includes(r.name) ? "" : " (catching up)")).join(", ")],
      ["Memory", r => r.mem_used === undefined ? "" : `${mb(r.mem_used)} of ${mb(r.mem_limit)}${r.mem_alarm ? " (alarm)" : ""}`],
      ["Disk free", r => r.disk_free === undefined ? "" : `${mb(r.disk_free)}${r.disk_free_alarm ? " (alarm)" : ""}`],
      ["File descriptors", r => r.fd_used === undefined ? "" : `${r.fd_used} / ${r.fd_total}`, 1],
      ["Uptime", r => r.uptime === undefined ? "" : Math.round(r.uptime / 1000) + " s", 1],
      ["Raft", r => r.raft ? `${r.raft.state}, term ${r.raft.term}, commit ${r.raft.commit_index}` : ""],
    ], rows)];
  },
};

function publishForm(vhost, exchange, routingKey) {
  return form("publish", [
    field("Routing key", el("input", { id: "publish-routing-key", value: routingKey })),
    field("Delivery mode", el("select", { id: "publish-delivery-mode" }, el("option", { value: "1" }, "1 - Non-persistent"), el("option", { value: "2" }, "2 - Persistent"))),
    field("Headers (JSON)", el("input", { id: "publish-headers", placeholder: '{"x-key": "value"}' })),
    field("Payload", el("textarea", { id: "publish-payload" })),
    el("button", { type: "submit", id: "publish-submit" }, "Publish message"),
  ], async (f) => {
    const raw = f.querySelector("#publish-headers").value.trim();
    const props = { delivery_mode: Number(f.querySelector("#publish-delivery-mode").value) };
    if (raw) props.headers = JSON.parse(raw);
    const r = await api("POST", `/api/exchanges/${enc(vhost)}/${enc(exchange)}/publish`, {
      properties: props, routing_key: f.querySelector("#publish-routing-key").value,
      payload: f.querySelector("#publish-payload").value, payload_encoding: "string" });
    return r.routed ? "Message published." : "Message published, but not routed.";
  });
}

// --- routing, login --------------------------------------------------------------------
async function render() {
  clearTimeout(timer);
  const page = document.getElementById("page");
  const [name, ...args] = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const show = pages[name] || pages[""];
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.getAttribute("href").slice(2) === name);
  }
  // keep a form the user is typing in: refresh only pages without focus in an input
  const typing = page.contains(document.activeElement) && /INPUT|TEXTAREA|SELECT/.test(document.activeElement.tagName);
  if (!typing) {
    try {
      page.replaceChildren(...await show(...args));
    } catch (e) {
      if (e.message === "Login failed") return logout();
      page.replaceChildren(el("p", { class: "error" }, e.message));
    }
  }
  if (name !== "queue" && name !== "exchange") timer = setTimeout(render, nextRefresh || REFRESH_MS);
  nextRefresh = null;
}

function showLoggedIn(user) {
  document.getElementById("login").hidden = true;
  document.getElementById("page").hidden = false;
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = false;
  document.getElementById("who").textContent = `User ${user.name} (${user.tags.join(", ")})`;
  render();
}

function logout() {
  sessionStorage.removeItem("warren.auth");
  clearTimeout(timer);
  document.getElementById("login").hidden = false;
  for (const id of ["page", "nav", "logout"]) document.getElementById(id).hidden = true;
  document.getElementById("who").textContent = "";
}

document.getElementById("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const u = document.getElementById("login-username").value, p = document.getElementById("login-password").value;
  sessionStorage.setItem("warren.auth", btoa(unescape(encodeURIComponent(u + ":" + p))));
  try {
    showLoggedIn(await api("GET", "/api/whoami"));
    document.getElementById("login-error").textContent = "";
  } catch (e) {
    sessionStorage.removeItem("warren.auth");
    document.getElementById("login-error").textContent = e.message;
  }
});
document.getElementById("logout").addEventListener("click", logout);
window.addEventListener("hashchange", render);

(async () => {
  if (!credentials()) return logout();
  try { showLoggedIn(await api("GET", "/api/whoami")); } catch (e) { logout(); }
})();
