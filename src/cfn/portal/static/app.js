/* cfn dashboard: REST for a task's snapshot, Socket.IO for everything that changes:
   /cfn-loop (the seed's namespace) for a task's events and its agents' heartbeats,
   /cfn-tasks for the task list, the queue and the workers. Nothing is re-read on a timer.
   All text goes in through textContent: nothing from the server is parsed as HTML. */
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  token: null, who: null, tasks: [], taskId: null, follow: true, socket: null,
  snap: null, vm: null, refreshTimer: null, tasksSocket: null, queue: null, health: null,
  beatsSeen: 0,
};

// --- auth -----------------------------------------------------------------------------

// The printed link carries a single-use login code (#login=...), never a token: it leaves
// the address bar at once and is exchanged for a session token kept in sessionStorage.
function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const code = params.get("login");
  const task = params.get("task");
  history.replaceState(null, "", location.pathname + (task ? "#task=" + encodeURIComponent(task) : ""));
  return { task, code };
}

async function exchangeCode(code) {
  let res, data = null;
  try {
    res = await fetch("/api/login", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ code }) });
    data = await res.json();
  } catch (e) { return "the portal did not answer: " + e.message; }
  if (!res.ok) return (data && data.message) || res.statusText;
  sessionStorage.setItem("cfn-token", data.token);
  return null;
}

function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part));
  } catch (e) { return null; }
}

function askToken(message) {
  $("login-msg").textContent = message || "";
  const dlg = $("login-dialog");
  if (!dlg.open) dlg.showModal();
}

$("login-form").addEventListener("submit", (ev) => {
  const value = new FormData(ev.target).get("token").trim();
  if (!claims(value)) { ev.preventDefault(); $("login-msg").textContent = "that is not a JWT"; return; }
  sessionStorage.setItem("cfn-token", value);
  start();
});

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: Object.assign({ "Authorization": "Bearer " + state.token },
      body ? { "Content-Type": "application/json" } : {}),
    body: body ? JSON.stringify(body) : undefined,
  });
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (res.status === 401) askToken((data && data.message) || "token refused");
  if (!res.ok) {
    const err = new Error((data && data.message) || res.statusText);
    err.status = res.status;
    throw err;
  }
  return data;
}

// --- helpers --------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}
const pct = (x) => Math.max(0, Math.min(100, Math.round((x || 0) * 100))) + "%";
const fmt = (x, d = 2) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));
const short = (s, n) => (s && s.length > n ? s.slice(0, n - 1) + "…" : s || "");
// Seconds since a server timestamp, corrected by the server's clock (from the last push).
function age(ts) {
  const skew = (state.vm && state.vm.clockSkew) || 0;
  return Math.max(0, Date.now() / 1000 + skew - ts);
}
function ago(ts) {
  if (!ts) return "";
  const s = age(ts);
  return s < 60 ? s.toFixed(0) + " s ago" : Math.round(s / 60) + " min ago";
}

function beatCell(a, hb) {
  const live = hb && hb.ts && a.status === "running" && age(hb.ts) < 30;
  const td = el("td", { class: "hb" + (live ? " live" : ""), "data-ts": hb && hb.ts ? String(hb.ts) : "" },
    hb ? (hb.status || "") + " " + ago(hb.ts) : (a.status === "running" ? "expired" : "–"));
  return td;
}

// Ages move with the clock: re-word the heartbeat cells each second (no request).
setInterval(() => {
  for (const td of document.querySelectorAll("#agents td.hb[data-ts]")) {
    const ts = parseFloat(td.dataset.ts);
    if (ts) td.textContent = td.textContent.replace(/ \d+ (s|min) ago$/, "") + " " + ago(ts);
  }
}, 1000);

// --- the task list --------------------------------------------------------------------

function runnerText(t) {
  if (!t.runner) return null;
  return t.runner.kind === "worker" ? "worker " + t.runner.worker : "cfn run";
}

function renderTaskList() {
  const ul = $("tasks");
  ul.replaceChildren();
  for (const t of state.tasks) {
    const by = runnerText(t);
    const li = el("li", { class: t.taskId === state.taskId ? "sel" : "", "data-task": t.taskId,
      onclick: () => selectTask(t.taskId, false) },
      el("div", { class: "tepic" }, el("span", { class: "dot " + t.status }), short(t.epic, 60)),
      el("div", { class: "tid" }, t.taskId + " · " + t.mode + " · it. " + t.iterations + " · " + t.status,
        by ? el("span", { class: "runner", "data-runner": t.runner.kind, title: t.runner.kind === "cli"
          ? "run in-process by `cfn run`, not by a portal worker" : "taken from the queue by this worker" },
          " · " + by) : null));
    ul.append(li);
  }
}

// The task list, the queue and the workers: pushed on /cfn-tasks whenever they change.
function connectTasks() {
  if (state.tasksSocket) state.tasksSocket.disconnect();
  const socket = io("/cfn-tasks", { auth: { token: state.token } });
  state.tasksSocket = socket;
  socket.on("tasks:update", (data) => {
    state.tasks = data.tasks || [];
    state.queue = data.queue || null;
    $("task-count").textContent = "(" + state.tasks.length + ")";
    if (state.follow) {
      const running = state.tasks.find((t) => t.status === "running" || t.status === "pending");
      const pick = running || state.tasks[0];
      if (pick && pick.taskId !== state.taskId) selectTask(pick.taskId, true);
    }
    renderTaskList();
    renderHealth();
  });
  socket.on("connect", () => loadHealth());
  socket.on("connect_error", (err) => { if (err.data && err.data.status === 401) askToken(err.message); });
}

// Health is a probe (round trips to Redis and the database), measured when asked: read at
// start, on every (re)connection and once a minute; it is not data that changes by itself.
async function loadHealth() {
  try {
    state.health = await api("GET", "/api/health/system");
  } catch (e) {
    state.health = { error: e.message };
  }
  renderHealth();
}

function renderHealth() {
  const box = $("health");
  box.replaceChildren();
  // ok: green, bad: red, idle: grey (nothing wrong, nothing to do)
  const line = (name, kind, text) => el("div", { "data-check": name },
    el("b", { class: kind }, "●"), " " + name + " " + text);
  const h = state.health;
  if (h && h.error) box.append(line("health", "bad", h.error));
  const c = (h && h.checks) || {};
  if (c.redis) box.append(line("redis", c.redis.ok ? "ok" : "bad", c.redis.ok ? c.redis.ms + " ms" : c.redis.error));
  if (c.database) box.append(line("database", c.database.ok ? "ok" : "bad", c.database.ok ? c.database.ms + " ms" : c.database.error));
  const q = state.queue;
  if (q) {
    const gone = q.goneWorkers ? " (" + q.goneWorkers + " gone)" : "";
    if (q.workers > 0) {
      box.append(line("workers", "ok", q.workers + gone + " · running " + q.running + " · waiting " + q.waiting));
    } else if (q.waiting > 0) {
      box.append(line("workers", "bad", "0" + gone + " · " + q.waiting +
        " task(s) wait for a worker: start one (cfn worker, or cfn portal)"));
    } else {
      box.append(line("workers", "idle", "0" + gone + " · none needed: no task waits in the queue"));
    }
  }
  const cli = state.tasks.filter((t) => t.runner && t.runner.kind === "cli").length;
  if (cli) box.append(line("cfn run", "ok", cli + " task(s) running in-process (no worker needed)"));
}

// --- one task ---------------------------------------------------------------------------

function emptyVm() {
  return { iteration: 0, maxIterations: null, loop3: 0, loop2: 0, phase: null, gate: null, consensus: null,
    thresholds: {}, agents: new Map(), events: [], decisions: [], awaiting: null, status: null,
    outcome: null, offline: false, beats: new Map(), clockSkew: 0,
    steps: new Map(), usage: new Map(), tokens: 0, cost: 0 };
}

// Pushed heartbeats (agent:heartbeat): the agents whose beat changed, null when it expired.
function onHeartbeat(data) {
  const vm = state.vm;
  if (!vm || data.taskId !== state.taskId) return;
  if (typeof data.serverTime === "number") vm.clockSkew = data.serverTime - Date.now() / 1000;
  if (data.full) vm.beats.clear();
  for (const [agentId, beat] of Object.entries(data.heartbeats || {})) {
    if (beat) vm.beats.set(agentId, beat); else vm.beats.set(agentId, null);
    if (!vm.agents.has(agentId)) vm.agents.set(agentId, { agentId, fresh: true });
  }
  state.beatsSeen += 1;
  $("agents").dataset.beats = String(state.beatsSeen);
  scheduleRender();
}

function selectTask(taskId, auto) {
  if (!auto) state.follow = false;
  if (taskId === state.taskId) return;
  state.taskId = taskId;
  history.replaceState(null, "", "#task=" + encodeURIComponent(taskId));
  state.vm = emptyVm();
  $("events").replaceChildren();
  $("empty").classList.add("hidden");
  $("task").classList.remove("hidden");
  renderTaskList();
  refresh();
  connect(taskId);
}

async function refresh() {
  const taskId = state.taskId;
  if (!taskId) return;
  let snap;
  try { snap = await api("GET", "/api/tasks/" + encodeURIComponent(taskId) + "/status"); }
  catch (e) { if (e.status === 404) { $("t-epic").textContent = "no such task: " + taskId; } return; }
  if (taskId !== state.taskId) return;
  state.snap = snap;
  const vm = state.vm;
  vm.status = snap.status;
  vm.thresholds = snap.thresholds || vm.thresholds;
  vm.maxIterations = (snap.thresholds || {}).maxIterations || vm.maxIterations;
  if (snap.iteration) vm.iteration = Math.max(vm.iteration, snap.iteration);
  if (snap.phase) vm.phase = snap.phase === "done" ? "done" : snap.phase;
  if (snap.gate && snap.gate.iteration === undefined) vm.gate = Object.assign({ iteration: snap.iteration }, snap.gate);
  if (snap.consensus) vm.consensus = Object.assign({ iteration: snap.iteration }, snap.consensus);
  vm.decisions = snap.decisions || [];
  vm.awaiting = snap.awaitingDecision ? (snap.awaiting || { iteration: snap.iteration }) : null;
  vm.outcome = snap.outcome ? { outcome: snap.outcome, reason: snap.reason } : vm.outcome;
  for (const a of snap.agents || []) {
    const cur = vm.agents.get(a.agentId) || {};
    vm.agents.set(a.agentId, Object.assign(cur, a));
    if (a.provider === "offline") vm.offline = true;
    // The snapshot's beat only until the first pushed one for this agent.
    if (!vm.beats.has(a.agentId) && a.heartbeat) vm.beats.set(a.agentId, a.heartbeat);
  }
  render();
}

function scheduleRefresh() {
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(refresh, 250);
}

// The seed's client code calls these two (socket.on('agent:update') / ('loop:progress')).
function updateAgentStatus(agentId, status, data) {
  const vm = state.vm;
  const cur = vm.agents.get(agentId) || { agentId, fresh: true };
  cur.status = status;
  for (const k of ["role", "loop", "iteration", "provider", "model", "backend", "confidence", "reason", "pid"]) {
    if (data[k] !== undefined && data[k] !== null) cur[k] = data[k];
  }
  if (data.provider === "offline") vm.offline = true;
  vm.agents.set(agentId, cur);
}
function updateProgressBar(loop, progress, data) {
  const vm = state.vm;
  if (data.iteration && data.iteration > vm.iteration) { vm.iteration = data.iteration; vm.loop2 = 0; }
  if (loop === 3) { vm.loop3 = progress; if (data.phase === "loop3") { vm.phase = "loop3"; vm.loop2 = 0; } }
  if (loop === 2) { vm.loop2 = progress; if (data.phase === "loop2") vm.phase = "loop2"; }
}

function onEvent(kind, data) {
  const vm = state.vm;
  if (!vm || data.taskId !== state.taskId) return;
  switch (kind) {
    case "task:created":
      vm.thresholds = { gate: data.gate, consensus: data.consensus, maxIterations: data.max_iterations,
        implementers: data.implementers, validators: data.validators };
      vm.maxIterations = data.max_iterations; vm.iteration = Math.max(vm.iteration, 1); break;
    case "agent:update": updateAgentStatus(data.agentId, data.status, data); break;
    case "loop:progress": updateProgressBar(data.loop, data.progress, data); break;
    case "gate": vm.gate = data; vm.phase = data.passed ? "loop2" : "loop3"; break;
    case "consensus": vm.consensus = data; vm.phase = data.passed ? "decision" : "loop3"; break;
    case "decision:awaiting": vm.awaiting = { iteration: data.iteration }; vm.phase = "decision"; break;
    case "decision":
      vm.awaiting = null;
      vm.decisions = vm.decisions.filter((d) => d.iteration !== data.iteration)
        .concat([{ iteration: data.iteration, decision: data.decision, by: data.by, reason: data.reason }]);
      break;
    case "task:finished": vm.status = data.status; vm.phase = "done";
      vm.outcome = { outcome: data.outcome, reason: data.reason }; break;
    case "task:resumed": vm.status = "running"; break;
    case "agent:step": onStep(data); break;
    case "llm:call": onCall(data); break;
  }
  if (kind !== "replay:done") addEvent(kind, data);
  if (!data.replay) scheduleRefresh();
  scheduleRender();
}

// An agent's transcript (agent:step) and what the LLM gateway charged it (llm:call).
function onStep(data) {
  const vm = state.vm;
  const list = vm.steps.get(data.agentId) || [];
  list.push(data);
  vm.steps.set(data.agentId, list);
  if (state.transcriptOf === data.agentId) appendStep(data);
}
function onCall(data) {
  const vm = state.vm;
  const u = vm.usage.get(data.agentId) || { tokens: 0, cost: 0, calls: 0 };
  const tokens = (data.inputTokens || 0) + (data.outputTokens || 0);
  u.tokens += tokens; u.cost += data.costUsd || 0; u.calls += 1;
  vm.usage.set(data.agentId, u);
  vm.tokens += tokens; vm.cost += data.costUsd || 0;
}
function filesOf(agentId) {
  const files = [];
  for (const s of state.vm.steps.get(agentId) || []) {
    if ((s.kind !== "tool_use" && s.kind !== "system") || !s.args) continue;
    try {
      const a = JSON.parse(s.args);
      if (s.kind === "system") {  // the run's "files changed" (by any tool, Bash too)
        for (const f of Array.isArray(a.files) ? a.files : []) if (typeof f === "string" && !files.includes(f)) files.push(f);
        continue;
      }
      const f = a.file_path || a.path;
      if (f && ["Write", "Edit", "MultiEdit", "NotebookEdit", "write_file"].includes(s.tool) && !files.includes(f)) files.push(f);
    } catch (e) { /* arguments the model garbled: shown as text below */ }
  }
  return files;
}
function appendStep(s) {
  const list = $("transcript");
  const kind = s.kind + (s.isError ? " err" : "");
  const label = s.kind === "tool_use" ? "→ " + (s.tool || "") : s.kind === "tool_result" ? "← " + (s.tool || "result") : s.kind;
  const t = s.ts ? new Date(s.ts * 1000).toLocaleTimeString([], { hour12: false }) + " " : "";
  list.append(el("li", { class: kind }, el("span", { class: "muted" }, t), el("span", { class: "k" }, label),
    s.args ? el("span", { class: "args" }, short(s.args, 600) + "\n") : "", short(s.text || "", 4000)));
  list.scrollTop = list.scrollHeight;
  $("tr-files").textContent = filesOf(state.transcriptOf).join(", ") || "–";
}
function openTranscript(agentId) {
  state.transcriptOf = agentId;
  const a = state.vm.agents.get(agentId) || {};
  const u = state.vm.usage.get(agentId);
  $("tr-agent").textContent = agentId;
  $("tr-meta").textContent = [a.backend, a.provider, a.model, u ? u.tokens + " tokens, $" + u.cost.toFixed(4) : null]
    .filter(Boolean).join(" · ");
  $("transcript").replaceChildren();
  for (const s of state.vm.steps.get(agentId) || []) appendStep(s);
  $("tr-files").textContent = filesOf(agentId).join(", ") || "–";
  const dialog = $("transcript-dialog");
  if (!dialog.open) dialog.showModal();
}
$("transcript-dialog").addEventListener("close", () => { state.transcriptOf = null; });

function addEvent(kind, data) {
  const vm = state.vm;
  vm.events.push({ kind, data });
  const skip = new Set(["taskId", "eventId", "replay", "ts"]);
  const text = Object.entries(data).filter(([k]) => !skip.has(k))
    .map(([k, v]) => k + "=" + (typeof v === "object" && v !== null ? JSON.stringify(v) : v)).join(" ");
  const t = data.ts ? new Date(data.ts * 1000).toLocaleTimeString([], { hour12: false }) : "";
  const li = el("li", { "data-kind": kind }, el("span", { class: "muted" }, t),
    el("span", { class: "k " + kind.split(":")[0] }, kind), el("span", { class: "d", title: text }, text));
  const list = $("events");
  list.prepend(li);
  while (list.childNodes.length > 400) list.lastChild.remove();
  $("ev-count").textContent = "(" + vm.events.length + ")";
}

// --- live events ------------------------------------------------------------------------

function connect(taskId) {
  if (state.socket) { state.socket.disconnect(); state.socket = null; }
  const live = $("live");
  live.className = "pill off"; live.textContent = "connecting";
  const socket = io("/cfn-loop", { auth: { taskId: taskId, token: state.token } });
  state.socket = socket;
  socket.on("connect", () => { live.className = "pill on"; live.textContent = "live"; });
  socket.on("disconnect", () => { live.className = "pill off"; live.textContent = "offline"; });
  socket.on("connect_error", (err) => {
    live.className = "pill off"; live.textContent = "refused";
    live.title = err.message;
    if (err.data && err.data.status === 401) askToken(err.message);
  });
  socket.on("agent:heartbeat", (data) => { if (socket === state.socket) onHeartbeat(data || {}); });
  socket.onAny((kind, data) => {
    if (socket === state.socket && kind !== "agent:heartbeat") onEvent(kind, data || {});
  });
}

// --- rendering ----------------------------------------------------------------------------

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => { renderQueued = false; render(); });
}

function gauge(prefix, verdict, threshold) {
  const fill = $(prefix + "-fill"), mark = $(prefix + "-mark"), text = $(prefix + "-text");
  mark.style.left = pct(threshold);
  mark.title = "threshold " + fmt(threshold);
  if (!verdict) { fill.style.width = "0"; fill.className = "fill"; text.textContent = "threshold " + fmt(threshold) + " · not judged yet"; return; }
  fill.style.width = pct(verdict.score);
  fill.className = "fill " + (verdict.passed ? "pass" : "fail");
  text.textContent = (verdict.passed ? "passed" : "failed") + " · " + fmt(verdict.score, 3) + " vs " +
    fmt(verdict.threshold || threshold) + " · " + (verdict.reported ?? "?") + "/" + (verdict.team ?? "?") +
    " reported" + (verdict.failed ? ", " + verdict.failed + " failed" : "") +
    (verdict.iteration ? " · iteration " + verdict.iteration : "");
}

function render() {
  const vm = state.vm, snap = state.snap;
  if (!vm) return;
  const opts = (snap && snap.options) || {};
  $("t-id").textContent = state.taskId;
  const status = vm.status || (snap && snap.status) || "";
  $("t-status").textContent = status;
  $("t-status").className = "badge " + status;
  $("t-offline").classList.toggle("hidden", !vm.offline);
  $("t-epic").textContent = (snap && snap.epic) || opts.epic || "";
  const th = vm.thresholds || {};
  $("t-meta").textContent = [opts.mode || (snap && snap.mode), "decision: " + (opts.decision || "?"),
    th.implementers ? th.implementers + " implementers" : null, th.validators ? th.validators + " validators" : null,
    opts.complexity ? "complexity " + opts.complexity : null, opts.cost_sensitive ? "cost sensitive" : null,
    opts.backend ? "backend " + opts.backend : null,
    vm.tokens ? vm.tokens + " tokens, $" + vm.cost.toFixed(4) + " (LLM gateway)" : null]
    .filter(Boolean).join(" · ");
  $("t-outcome").textContent = vm.outcome && vm.outcome.outcome ? vm.outcome.outcome + " — " + (vm.outcome.reason || "") : "";

  // stepper
  const order = ["loop3", "gate", "loop2", "consensus", "decision"];
  for (const step of document.querySelectorAll(".step")) {
    const p = step.dataset.phase;
    step.classList.remove("active", "pass", "fail");
    if (status === "running" && p === vm.phase) step.classList.add("active");
    if (p === "gate" && vm.gate && vm.gate.iteration === vm.iteration) step.classList.add(vm.gate.passed ? "pass" : "fail");
    if (p === "consensus" && vm.consensus && vm.consensus.iteration === vm.iteration) step.classList.add(vm.consensus.passed ? "pass" : "fail");
  }
  void order;
  $("s-gate").textContent = vm.gate ? fmt(vm.gate.score, 3) + " / " + fmt(vm.gate.threshold) : "≥ " + fmt(th.gate);
  $("s-consensus").textContent = vm.consensus ? fmt(vm.consensus.score, 3) + " / " + fmt(vm.consensus.threshold) : "≥ " + fmt(th.consensus);
  const last = vm.decisions[vm.decisions.length - 1];
  $("s-decision").textContent = vm.awaiting ? "awaiting you" : last ? last.decision : (opts.decision || "–");

  // progress
  const max = vm.maxIterations || th.maxIterations || 1;
  $("it-label").textContent = (vm.iteration || 0) + " of " + max;
  $("it-bar").style.width = pct((vm.iteration || 0) / max);
  $("l3-bar").style.width = pct(vm.loop3);
  $("l2-bar").style.width = pct(vm.loop2);
  $("l3-label").textContent = pct(vm.loop3);
  $("l2-label").textContent = pct(vm.loop2);
  gauge("g", vm.gate, th.gate);
  gauge("c", vm.consensus, th.consensus);

  // decision
  const aw = $("await");
  aw.classList.toggle("hidden", !(vm.awaiting && status === "running"));
  if (vm.awaiting) $("await-it").textContent = vm.awaiting.iteration;
  const ul = $("decisions");
  ul.replaceChildren();
  for (const d of vm.decisions.slice().reverse()) {
    ul.append(el("li", {}, el("b", {}, "it. " + d.iteration + " " + d.decision), " by " + d.by + " — " + short(d.reason || "", 140)));
  }
  if (!vm.decisions.length && !vm.awaiting) ul.append(el("li", { class: "muted" }, "no decision yet"));

  // agents
  const body = $("agents");
  body.replaceChildren();
  const agents = Array.from(vm.agents.values()).sort((a, b) =>
    (a.iteration || 0) - (b.iteration || 0) || (b.loop || 0) - (a.loop || 0) || a.agentId.localeCompare(b.agentId));
  $("agent-count").textContent = "(" + agents.length + ")";
  for (const a of agents) {
    const hb = vm.beats.has(a.agentId) ? vm.beats.get(a.agentId) : a.heartbeat;
    const conf = a.confidence === null || a.confidence === undefined ? el("span", { class: "muted" }, "–")
      : el("div", { class: "conf" }, el("div", { class: "bar" }, (() => { const f = el("div", { class: "fill" }); f.style.width = pct(a.confidence); return f; })()), fmt(a.confidence));
    const stop = a.status === "running" ? el("button", { class: "btn small", title: "stop this agent",
      onclick: () => stopAgent(a.agentId) }, "stop") : "";
    const u = vm.usage.get(a.agentId);
    const steps = (vm.steps.get(a.agentId) || []).length;
    const tr = el("tr", { class: a.fresh ? "new" : "", "data-agent": a.agentId, title: "click: follow its transcript",
      onclick: (ev) => { if (ev.target.tagName !== "BUTTON") openTranscript(a.agentId); } },
      el("td", { class: "mono" }, a.agentId), el("td", {}, a.role || ""), el("td", {}, a.iteration || ""),
      el("td", {}, el("span", { class: "status " + (a.status || "") }, a.status || "")),
      el("td", { class: "mono" }, [a.backend, a.provider, a.model].filter(Boolean).join(" · ")),
      el("td", {}, conf),
      beatCell(a, hb),
      el("td", { class: "mono" }, u ? String(u.tokens) : "–"),
      el("td", { class: "mono" }, u ? "$" + u.cost.toFixed(4) : "–"),
      el("td", { class: "mono" }, steps ? String(steps) : "–"),
      el("td", { class: "muted", title: a.reason || "" }, short(a.reason || "", 60)),
      el("td", {}, stop));
    a.fresh = false;
    body.append(tr);
  }

  // iterations
  const its = $("iterations");
  its.replaceChildren();
  const rows = (snap && snap.iterations) || [];
  for (const it of rows.slice().reverse()) {
    const d = vm.decisions.find((x) => x.iteration === it.number);
    const g = it.number === vm.iteration && vm.gate ? vm.gate.score : it.gateMean;
    const c = it.number === vm.iteration && vm.consensus ? vm.consensus.score : it.consensusMean;
    let itTokens = 0, itCost = 0;
    for (const [agentId, u] of vm.usage) {
      const a = vm.agents.get(agentId);
      if (a && a.iteration === it.number) { itTokens += u.tokens; itCost += u.cost; }
    }
    its.append(el("tr", {}, el("td", {}, it.number),
      el("td", {}, g === null || g === undefined ? "–" : fmt(g, 3) + (g >= th.gate ? " ✓" : " ✗")),
      el("td", {}, c === null || c === undefined ? "–" : fmt(c, 3) + (c >= th.consensus ? " ✓" : " ✗")),
      el("td", {}, d ? d.decision : ""),
      el("td", { class: "mono" }, itTokens ? String(itTokens) : "–"),
      el("td", { class: "mono" }, itCost || itTokens ? "$" + itCost.toFixed(4) : "–")));
  }
}

// --- actions ----------------------------------------------------------------------------

for (const btn of document.querySelectorAll("#await .btn")) {
  btn.addEventListener("click", async () => {
    const decision = btn.dataset.decision;
    const buttons = document.querySelectorAll("#await .btn");
    buttons.forEach((b) => (b.disabled = true));
    $("decide-msg").textContent = "sending " + decision + "…";
    try {
      const r = await api("POST", "/api/tasks/" + encodeURIComponent(state.taskId) + "/decision",
        { decision, reason: $("reason").value });
      $("decide-msg").textContent = decision + " sent for iteration " + r.iteration;
      $("reason").value = "";
    } catch (e) {
      $("decide-msg").textContent = "refused: " + e.message;
    } finally {
      buttons.forEach((b) => (b.disabled = false));
    }
  });
}

async function stopAgent(agentId) {
  try {
    await api("DELETE", "/api/agents/" + encodeURIComponent(agentId) + "?taskId=" + encodeURIComponent(state.taskId));
  } catch (e) { alert("stop refused: " + e.message); }
}

$("new-task").addEventListener("click", () => { $("new-msg").textContent = ""; $("new-dialog").showModal(); });
$("new-cancel").addEventListener("click", () => $("new-dialog").close());
$("new-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = new FormData(ev.target);
  const body = { epic: f.get("epic"), mode: f.get("mode"), decision: f.get("decision"),
    cost_sensitive: f.get("cost_sensitive") === "on" };
  if (f.get("complexity")) body.complexity = f.get("complexity");
  try {
    const r = await api("POST", "/api/tasks/create", body);
    $("new-dialog").close();
    selectTask(r.taskId, false);
  } catch (e) { $("new-msg").textContent = e.message; }
});

// --- start ------------------------------------------------------------------------------

let started = false;
function start() {
  state.token = sessionStorage.getItem("cfn-token");
  const c = state.token && claims(state.token);
  if (!c) { askToken("no token yet"); return; }
  if (c.exp && c.exp * 1000 < Date.now()) { askToken("your token has expired"); return; }
  $("who").textContent = c.sub + " (" + c.role + ")";
  $("new-task").classList.toggle("hidden", c.role === "agent");
  connectTasks();
  if (state.taskId) connect(state.taskId);
  if (started) return;
  started = true;
  const wanted = initial.task || (c.role === "agent" ? c.task_id : null);
  if (wanted) selectTask(wanted, false);
  setInterval(loadHealth, 60000);
}

const initial = readHash();
if (initial.code) {
  exchangeCode(initial.code).then((problem) => {
    if (problem) { sessionStorage.removeItem("cfn-token"); askToken(problem); } else start();
  });
} else {
  start();
}
