// The oz dashboard. Every page is a shell served by oz-server; this script fills it through the REST
// API (/api/v1) and the session WebSocket, signed in by the browser's HttpOnly cookie. Changes carry
// the page's CSRF token. Text is always put in the page as text (textContent), never as HTML.
"use strict";

const body = document.body;
const page = body.dataset.page;
const role = body.dataset.role;
const csrf = body.dataset.csrf;
const API = "/api/v1";
const ENDED = ["SUCCEEDED", "FAILED", "ERROR", "CANCELLED", "BLOCKED"];
// What this page's run lets the signed-in caller do (its sharing and the caller's role, decided on
// the server, which checks every request again).
const canSteer = body.dataset.access === "edit";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

async function api(path, options) {
  const opts = Object.assign({ credentials: "same-origin", headers: {} }, options || {});
  if (opts.method && opts.method !== "GET") {
    opts.headers["x-csrf-token"] = csrf;
    if (opts.json !== undefined) {
      opts.headers["content-type"] = "application/json";
      opts.body = JSON.stringify(opts.json);
    }
  }
  const response = await fetch(API + path, opts);
  if (response.status === 401) {
    window.location.assign("/sign-in");
    throw new Error("signed out");
  }
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const detail = data && (data.detail || data.title) ? data.detail || data.title : response.statusText;
    const error = new Error(detail);
    error.status = response.status;
    throw error;
  }
  return data;
}

function notice(text, kind) {
  const n = document.getElementById("notice");
  n.textContent = text || "";
  n.hidden = !text;
  n.className = "notice " + (kind || "");
}

function when(ts) {
  if (!ts) return "";
  const d = new Date(ts);
  return d.toLocaleString(undefined, { hour12: false });
}

function duration(run) {
  const start = run.started_at || run.created_at;
  if (!start) return "";
  const end = ENDED.includes(run.state) ? new Date(run.updated_at) : new Date();
  let s = Math.max(0, Math.round((end - new Date(start)) / 1000));
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  return (h ? h + "h " : "") + (h || m ? m + "m " : "") + s + "s";
}

function person(p) {
  if (!p) return "";
  return p.display_name || p.name || p.email || p.uid || "";
}

function stateBadge(state) {
  return el("span", { class: "state state-" + String(state).toLowerCase(), text: state });
}

// ---- lists ------------------------------------------------------------------------------------

function table(columns) {
  const head = el("tr", {}, ...columns.map((c) => el("th", { text: c })));
  const rows = el("tbody");
  return { node: el("table", { class: "list" }, el("thead", {}, head), rows), rows };
}

function fillRows(rows, items, cells, empty) {
  rows.replaceChildren();
  if (!items.length) {
    rows.append(el("tr", {}, el("td", { class: "empty", colspan: 99, text: empty })));
    return;
  }
  for (const item of items) rows.append(el("tr", {}, ...cells(item).map((c) => el("td", {}, c))));
}

function runsPage(main) {
  const state = el("select", { id: "filter-state" },
    el("option", { value: "", text: "any state" }),
    ...["QUEUED", "PENDING", "CLAIMED", "INPROGRESS", "SUCCEEDED", "FAILED", "ERROR", "CANCELLED", "BLOCKED"].map(
      (s) => el("option", { value: s, text: s })));
  const source = el("select", { id: "filter-source" },
    el("option", { value: "", text: "any source" }),
    ...["API", "CLI", "LOCAL", "SCHEDULED_AGENT", "WEBHOOK", "LINEAR", "SLACK", "GITHUB_ACTION"].map(
      (s) => el("option", { value: s, text: s })));
  const search = el("input", { id: "filter-q", type: "search", placeholder: "title or prompt" });
  const t = table(["Run", "State", "Source", "Who", "Duration", "Created"]);
  t.node.id = "runs";
  main.append(el("div", { class: "filters" }, state, source, search), t.node);
  async function refresh() {
    const q = new URLSearchParams({ limit: "50" });
    if (state.value) q.set("state", state.value);
    if (source.value) q.set("source", source.value);
    if (search.value.trim()) q.set("q", search.value.trim());
    try {
      const list = await api("/agent/runs?" + q.toString());
      fillRows(t.rows, list.runs || [], (r) => [
        el("a", { href: "/runs/" + encodeURIComponent(r.run_id), class: "run-link", "data-run-id": r.run_id,
          text: r.title || r.prompt || r.run_id }),
        stateBadge(r.state),
        r.source || "",
        person(r.creator),
        duration(r),
        when(r.created_at),
      ], "No runs yet.");
      notice("");
    } catch (e) {
      notice("The runs could not be listed: " + e.message, "error");
    }
  }
  for (const f of [state, source]) f.addEventListener("change", refresh);
  search.addEventListener("input", refresh);
  refresh();
  setInterval(refresh, 1000);
}

function simplePage(main, path, key, columns, cells, empty) {
  const t = table(columns);
  t.node.id = key;
  main.append(t.node);
  async function refresh() {
    try {
      const data = await api(path);
      fillRows(t.rows, data[key] || [], cells, empty);
      notice("");
    } catch (e) {
      notice("This list could not be read: " + e.message, "error");
    }
  }
  refresh();
  setInterval(refresh, 5000);
}

// The workers, their load, and each one's warm pools (sandboxes prepared before their tasks).
function workersPage(main) {
  const workers = table(["Worker", "Connections", "Runs in flight", "Warm sandboxes ready"]);
  workers.node.id = "workers";
  const pools = table(["Worker", "Environment", "Ready", "Warming", "Target", "Oldest ready", "Hits", "Misses", "Memory", "Last error"]);
  pools.node.id = "warm-pools";
  main.append(workers.node, el("h2", { text: "Warm pools" }), pools.node);
  const age = (secs) => (secs === undefined || secs === null ? "" : secs < 120 ? secs + " s" : Math.round(secs / 60) + " min");
  const mib = (bytes) => (bytes === undefined || bytes === null ? "" : (bytes / 1048576).toFixed(0) + " MiB");
  async function refresh() {
    try {
      const [data, envs] = await Promise.all([api("/workers"), api("/agent/environments")]);
      const names = new Map((envs.environments || []).map((e) => [e.uid, (e.config && e.config.name) || e.uid]));
      const list = data.workers || [];
      fillRows(workers.rows, list, (w) => [w.worker_id, String(w.connections), String(w.runs_in_flight),
        String((w.warm_pools || []).reduce((n, p) => n + (p.ready || 0), 0))], "No workers connected.");
      const rows = list.flatMap((w) => (w.warm_pools || []).map((p) => ({ worker: w.worker_id, ...p })));
      fillRows(pools.rows, rows, (p) => [p.worker, names.get(p.environment) || p.environment, String(p.ready),
        String(p.warming), String(p.target || ""), age(p.oldest_ready_secs), String(p.hits), String(p.misses),
        mib(p.memory_bytes), p.last_error ? el("span", { class: "error", text: p.last_error }) : ""],
        "No warm pools: a worker keeps sandboxes ready for the environments in its warm_pools setting.");
      notice("");
    } catch (e) {
      notice("The workers could not be read: " + e.message, "error");
    }
  }
  refresh();
  setInterval(refresh, 2000);
}

// ---- a run --------------------------------------------------------------------------------------

function terminalView() {
  const screen = el("pre", { class: "terminal", id: "terminal", "aria-label": "the agent's terminal" });
  let cursor = null;
  function draw(message) {
    const lines = message.lines.map((runs, row) => {
      const line = el("div", { class: "line" });
      let col = 0;
      for (const run of runs) {
        const span = el("span", { text: run.text });
        let fg = run.fg, bg = run.bg;
        if (run.inverse) { [fg, bg] = [bg || "#d0d0d0", fg || "#101418"]; }
        if (fg) span.style.color = fg;
        if (bg) span.style.backgroundColor = bg;
        if (run.bold) span.classList.add("b");
        if (run.italic) span.classList.add("i");
        if (run.underline) span.classList.add("u");
        line.append(span);
        col += [...run.text].length;
      }
      if (row === message.cursor[0]) line.dataset.cursor = String(message.cursor[1]);
      if (!runs.length) line.append("\u00a0");
      return line;
    });
    screen.replaceChildren(...lines);
    cursor = message.cursor;
  }
  return { node: screen, draw, get cursor() { return cursor; } };
}

// The bytes a terminal sends for a key (xterm's), or null for a key that sends nothing.
const KEY_BYTES = {
  Enter: "\r", Backspace: "\x7f", Tab: "\t", Escape: "\x1b",
  ArrowUp: "\x1b[A", ArrowDown: "\x1b[B", ArrowRight: "\x1b[C", ArrowLeft: "\x1b[D",
  Home: "\x1b[H", End: "\x1b[F", Delete: "\x1b[3~", PageUp: "\x1b[5~", PageDown: "\x1b[6~",
};
function keyBytes(event) {
  if (event.metaKey) return null;
  if (event.ctrlKey && !event.altKey && event.key.length === 1) {
    const code = event.key.toUpperCase().charCodeAt(0);
    // Ctrl-A..Ctrl-Z, Ctrl-[ \ ] ^ _: the key's code minus 64.
    if (code >= 64 && code <= 95) return String.fromCharCode(code - 64);
    return null;
  }
  if (KEY_BYTES[event.key]) return KEY_BYTES[event.key];
  if (event.key.length === 1 || [...event.key].length === 1) return (event.altKey ? "\x1b" : "") + event.key;
  return null;
}

function runPage(main) {
  const runId = body.dataset.runId;
  const facts = el("dl", { class: "facts", id: "facts" });
  const term = terminalView();
  const live = el("span", { class: "live", id: "live", text: "connecting…" });
  const timeline = el("ol", { class: "timeline", id: "timeline" });
  const artifacts = el("ul", { class: "artifacts", id: "artifacts" });
  const controls = el("div", { class: "controls", id: "controls" });
  main.append(facts, el("section", { class: "session" }, el("h2", {}, "Terminal ", live), term.node), controls,
    el("div", { class: "columns" },
      el("section", {}, el("h2", { text: "Timeline" }), timeline),
      el("section", {}, el("h2", { text: "Artifacts" }), artifacts)));

  let run = null;
  function showFacts() {
    facts.replaceChildren(
      ...[["State", stateBadge(run.state)], ["Source", run.source || ""], ["Who", person(run.creator)],
        ["Duration", duration(run)], ["Created", when(run.created_at)], ["Run", run.run_id],
        ["Prompt", run.prompt || ""]]
        .flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)]));
    const arts = run.artifacts || [];
    artifacts.replaceChildren(...(arts.length ? arts.map((a) => {
      const kind = a.artifact_type || "ARTIFACT";
      const data = a.data || a;
      const url = data.url && /^https?:\/\//.test(data.url) ? data.url : null;
      return el("li", {}, el("strong", { text: kind + " " }),
        url ? el("a", { href: url, rel: "noreferrer noopener", target: "_blank", text: url })
          : (data.branch || data.content || ""));
    }) : [el("li", { class: "empty", text: "None yet." })]));
    cancel.disabled = ENDED.includes(run.state);
    interrupt.disabled = ENDED.includes(run.state) || !run.started_at;
  }
  async function refresh() {
    try {
      const before = run;
      run = await api("/agent/runs/" + encodeURIComponent(runId));
      showFacts();
      // Continued after its end (from this page or anywhere else): follow it again.
      if (before && ENDED.includes(before.state) && !ENDED.includes(run.state)) resume();
    } catch (e) {
      notice("The run could not be read: " + e.message, "error");
    }
  }

  // Steering: a follow-up box and cancel for members and admins; a viewer only watches.
  const cancel = el("button", { id: "cancel", type: "button", text: "Cancel run", class: "danger" });
  const interrupt = el("button", { id: "interrupt", type: "button", text: "Interrupt",
    title: "Stop what the agent is doing now (Ctrl-C); the run goes on if the agent handles it" });
  interrupt.disabled = true;
  if (canSteer) {
    const message = el("textarea", { id: "followup", rows: 2, placeholder: "A follow-up for the agent…", maxlength: 10000 });
    const send = el("button", { id: "send-followup", type: "submit", text: "Send" });
    const form = el("form", { id: "followup-form", class: "followup" }, message, send);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const text = message.value.trim();
      if (!text) return;
      send.disabled = true;
      try {
        const answer = await api("/agent/runs/" + encodeURIComponent(runId) + "/followups",
          { method: "POST", json: { message: text } });
        message.value = "";
        if (answer && (ended || ENDED.includes(run && run.state)) && !ENDED.includes(answer.state)) {
          // An ended run goes on with the follow-up, in a new execution: follow it again.
          notice("The run had ended: it goes on with your follow-up.", "ok");
          await refresh();
        } else {
          notice("The follow-up was sent to the agent.", "ok");
        }
      } catch (e) {
        notice("The follow-up was not sent: " + e.message, "error");
      } finally {
        send.disabled = false;
      }
    });
    cancel.addEventListener("click", async () => {
      cancel.disabled = true;
      try {
        await api("/agent/runs/" + encodeURIComponent(runId) + "/cancel", { method: "POST" });
        notice("Cancelling…", "ok");
      } catch (e) {
        notice("The run was not cancelled: " + e.message, "error");
        cancel.disabled = false;
      }
    });
    interrupt.addEventListener("click", async () => {
      interrupt.disabled = true;
      try {
        await api("/agent/runs/" + encodeURIComponent(runId) + "/interrupt", { method: "POST" });
        notice("The agent was interrupted.", "ok");
      } catch (e) {
        notice("The agent was not interrupted: " + e.message, "error");
      } finally {
        interrupt.disabled = !run || ENDED.includes(run.state) || !run.started_at;
      }
    });
    controls.append(form, interrupt, cancel);
  } else {
    controls.append(el("p", { class: "viewer-note", id: "viewer-note",
      text: role === "viewer" ? "You are watching: your role (viewer) cannot steer or cancel runs."
        : "You are watching: this run is shared with you to watch, not to steer." }));
  }

  // The terminal, rendered on the server (the cell view of the session WebSocket). An editor types
  // into it: each key goes to the agent's terminal as the bytes a terminal sends for it (the server
  // checks again that the caller may type).
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  let session = null;
  const sendKeys = (data) => {
    if (data && session && session.readyState === WebSocket.OPEN) session.send(JSON.stringify({ type: "input", data }));
  };
  if (canSteer) {
    term.node.tabIndex = 0;
    term.node.title = "Click here and type: your keys go to the agent's terminal";
    term.node.classList.add("typable");
    term.node.addEventListener("keydown", (event) => {
      const data = keyBytes(event);
      if (data === null) return;
      event.preventDefault();
      sendKeys(data);
    });
    term.node.addEventListener("paste", (event) => {
      event.preventDefault();
      sendKeys(event.clipboardData && event.clipboardData.getData("text"));
    });
  }
  let ended = false;
  function connect() {
    const socket = new WebSocket(scheme + "//" + window.location.host + API + "/agent/runs/" +
      encodeURIComponent(runId) + "/session?view=cells");
    session = socket;
    ended = false;
    socket.addEventListener("open", () => { live.textContent = "live"; live.className = "live on"; });
    socket.addEventListener("message", (event) => {
      if (typeof event.data !== "string") return;
      const message = JSON.parse(event.data);
      if (message.type === "cells") term.draw(message);
      if (message.type === "refused") notice(message.message, "error");
      if (message.type === "ended") {
        ended = true;
        live.textContent = "ended: " + message.state;
        live.className = "live";
        refresh();
      }
    });
    socket.addEventListener("close", () => {
      if (!ended) {
        live.textContent = "reconnecting…";
        live.className = "live";
        setTimeout(connect, 1000);
      }
    });
  }
  connect();

  // The timeline: what the run did, as its event stream says (its output is the terminal above).
  const kinds = "started,clone_started,clone_finished,setup_started,setup_finished,harness_started,artifact,finished,followup,interrupt,state";
  const describe = (e) => {
    switch (e.event) {
      case "state": return "state " + e.state + (e.status_message && e.status_message.message ? ": " + e.status_message.message : "");
      case "started": return "the runner started";
      case "clone_started": return "cloning " + e.repo;
      case "clone_finished": return "cloned " + e.repo + (e.ok ? "" : " (failed)") + " in " + e.millis + " ms";
      case "setup_started": return "setup: " + e.command;
      case "setup_finished": return "setup ended with " + e.exit_code;
      case "harness_started": return "the agent started (" + e.harness + ")";
      case "artifact": return "artifact " + e.artifact_type;
      case "followup": return "follow-up" + (e.by ? " from " + e.by : "") + ": " + e.message;
      case "interrupt": return "interrupted" + (e.by ? " by " + e.by : "");
      case "finished": return "finished " + e.state + (e.message ? ": " + e.message : "");
      default: return e.event;
    }
  };
  const onEvent = (event) => {
    const data = JSON.parse(event.data);
    timeline.append(el("li", { "data-kind": data.event.event }, el("time", { text: when(data.at) }), " ", describe(data.event)));
    if (["artifact", "state", "harness_started"].includes(data.event.event)) refresh();
  };
  let stream = null;
  function followEvents() {
    if (stream) stream.close();
    timeline.replaceChildren();
    const opened = new EventSource(API + "/agent/runs/" + encodeURIComponent(runId) + "/events?event=" + kinds);
    for (const k of kinds.split(",")) opened.addEventListener(k, onEvent);
    opened.addEventListener("error", () => { if (run && ENDED.includes(run.state)) opened.close(); });
    stream = opened;
  }
  followEvents();
  // After a follow-up continued the ended run: its terminal, timeline and facts live again.
  function resume() {
    followEvents();
    if (ended) connect();
  }

  refresh();
  // Every 2 s while it goes on; every 10 s once it ended (a follow-up may continue it).
  let polls = 0;
  setInterval(() => { polls += 1; if (run && (!ENDED.includes(run.state) || polls % 5 === 0)) refresh(); }, 2000);
}

// ---- the page -----------------------------------------------------------------------------------

function start() {
  const main = document.getElementById("main");
  for (const a of document.querySelectorAll("nav a")) if (a.dataset.nav === page || (page === "run" && a.dataset.nav === "runs")) a.classList.add("here");
  switch (page) {
    case "runs": return runsPage(main);
    case "run": return runPage(main);
    case "schedules":
      return simplePage(main, "/agent/schedules", "schedules", ["Name", "Cron", "Enabled", "Prompt", "Last error"],
        (s) => [s.name, s.cron_schedule, s.enabled ? "yes" : "paused", s.prompt || "", s.last_spawn_error || ""], "No schedules.");
    case "environments":
      return simplePage(main, "/agent/environments", "environments", ["Name", "Image", "Repos", "Updated", "Setup"],
        (e) => [e.config.name || e.uid, e.config.docker_image || "", (e.config.github_repos || e.config.repos || []).map((r) => (r.owner ? r.owner + "/" + r.repo : String(r))).join(", "),
          when(e.last_updated), e.setup_failed ? "failed" : "ok"], "No environments.");
    case "integrations":
      return simplePage(main, "/integrations", "integrations", ["Name", "Kind", "Enabled", "Webhook"],
        (i) => [i.name, i.kind, i.enabled ? "yes" : "no", i.webhook_url], "No integrations.");
    case "workers":
      return workersPage(main);
    case "missing":
      notice("There is no such run, or it is not your team's.", "error");
      return;
    default:
      return;
  }
}

start();
