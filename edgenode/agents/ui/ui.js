// The agents page: lists runs and pending approvals, shows a run's journal, approves or rejects.
// Every value goes into the page as text (never as HTML). The token lives in this page's memory only:
// never in sessionStorage, localStorage or a cookie, which any other page of the node's origin could
// read. A reload asks for it again (or takes it from a #token= link, which is removed from the address).
// Refreshing every few seconds updates rows in place: a reviewer's half-written comment, the focus and
// the scroll position survive it.
"use strict";
const $ = (id) => document.getElementById(id);
let token = "";
let selected = null;
/** Approval rows by run id, kept across refreshes (their comment inputs with them). */
const approvalRows = new Map();

const hash = new URLSearchParams(location.hash.slice(1));
if (hash.get("token")) { token = hash.get("token"); history.replaceState(null, "", location.pathname); }

async function api(method, path, body) {
  const response = await fetch(path, {method, headers: {"authorization": "Bearer " + token,
    "content-type": "application/json"}, body: body === undefined ? undefined : JSON.stringify(body)});
  const data = response.status === 204 ? null : await response.json();
  if (!response.ok) throw new Error(data && data.error ? data.error.code + ": " + data.error.message : response.status);
  return data;
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function cell(row, text, cls) { const td = el("td", text, cls); row.appendChild(td); return td; }

function when(t) { return t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z" : ""; }

/** Whether a text is a unified diff (git's or diff -u's). */
function isDiff(text) {
  return /^(diff --git |--- |\+\+\+ |@@ )/m.test(text) && /^@@ /m.test(text);
}

/** A diff as lines coloured by what they do: added, removed, hunk header, file header. */
function renderDiff(text) {
  const pre = el("pre", null, "diff");
  for (const line of text.replace(/\n$/, "").split("\n")) {
    let cls = "ctx";
    if (line.startsWith("+++ ") || line.startsWith("--- ") || line.startsWith("diff --git ")) cls = "file";
    else if (line.startsWith("@@")) cls = "hunk";
    else if (line.startsWith("+")) cls = "add";
    else if (line.startsWith("-")) cls = "del";
    pre.appendChild(el("span", line + "\n", cls));
  }
  return pre;
}

/** A value as people read it: diffs as diffs, multi-line text (logs, test output) as text, the rest as JSON. */
function renderValue(value) {
  if (typeof value === "string") {
    if (isDiff(value)) return renderDiff(value);
    if (value.includes("\n")) return el("pre", value, "text");
    return el("span", value);
  }
  if (value === undefined || value === null) return el("span", "–", "none");
  return el("pre", JSON.stringify(value, null, 2), "json");
}

/** An object's fields as labelled blocks (approval data: summary, diff, test output, ...). */
function renderFields(value) {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return renderValue(value);
  const box = el("div", null, "fields");
  for (const [key, item] of Object.entries(value)) {
    const field = el("div", null, "field");
    field.dataset.key = key;
    field.append(el("div", key, "label"), renderValue(item));
    box.appendChild(field);
  }
  return box;
}

async function decide(run, verdict, comment) {
  try {
    const result = await api("POST", "/v1/agents/runs/" + encodeURIComponent(run) + "/" + verdict, {comment});
    $("error").textContent = "";
    $("notice").textContent = (verdict === "approve" ? "Approved " : "Rejected ") + run + " as " + result.by;
    await refresh();
  } catch (e) { $("error").textContent = String(e.message); }
}

function approvalRow(a) {
  const row = el("tr"); row.dataset.run = a.run;
  cell(row, a.run); cell(row, a.agent);
  const what = cell(row, null, "what");
  what.append(el("div", a.prompt, "prompt"), renderFields(a.data));
  const td = cell(row, null, "decision");
  const comment = el("textarea", null, "comment"); comment.placeholder = "comment (sent with the decision)";
  comment.rows = 3;
  const yes = el("button", "Approve", "approve"); const no = el("button", "Reject", "reject");
  yes.onclick = () => decide(a.run, "approve", comment.value);
  no.onclick = () => decide(a.run, "reject", comment.value);
  td.append(comment, el("br"), yes, no, el("div", "waiting since " + when(a.since), "since"));
  return row;
}

function renderApprovals(items) {
  const body = $("approvals");
  const wanted = new Set(items.map((a) => a.run));
  for (const [run, row] of approvalRows) {
    if (!wanted.has(run)) { row.remove(); approvalRows.delete(run); }
  }
  for (const a of items) {  // new rows only: an existing one keeps its comment, focus and selection
    if (!approvalRows.has(a.run)) { const row = approvalRow(a); approvalRows.set(a.run, row); body.appendChild(row); }
  }
  $("no-approvals").hidden = items.length > 0;
}

function renderRuns(runs) {
  const body = $("runs"); body.replaceChildren();
  for (const r of runs) {
    const row = el("tr", null, "run"); row.dataset.run = r.id;
    if (r.id === selected) row.classList.add("selected");
    cell(row, r.id); cell(row, r.agent); cell(row, r.version); cell(row, r.status, "status-" + r.status);
    cell(row, when(r.created_at));
    row.onclick = () => { selected = r.id; showJournal(); };
    body.appendChild(row);
  }
}

async function showJournal() {
  if (!selected) return;
  const data = await api("GET", "/v1/agents/runs/" + encodeURIComponent(selected) + "/history");
  $("journal-title").textContent = "Journal of " + selected + " (" + data.run.status + ")";
  const body = $("journal"); body.replaceChildren();
  for (const e of data.journal) {
    const row = el("tr");
    cell(row, e.position); cell(row, e.kind); cell(row, e.name); cell(row, e.status);
    cell(row, null, "result").appendChild(renderFields(e.result));
    body.appendChild(row);
  }
  const decisions = $("decisions"); decisions.replaceChildren();
  for (const ev of data.events || []) {
    if (!ev.payload || typeof ev.payload !== "object" || !("approved" in ev.payload)) continue;
    const item = el("li", null, "decided");
    item.textContent = (ev.payload.approved ? "approved" : "rejected") + " by " + ev.sender + " at " +
      when(ev.created_at) + (ev.payload.comment ? ": " + ev.payload.comment : "");
    decisions.appendChild(item);
  }
}

async function refresh() {
  if (!token) { $("error").textContent = "Enter a token to see your runs."; return; }
  try {
    const [who, approvals, runs] = await Promise.all([api("GET", "/v1/whoami"), api("GET", "/v1/agents/approvals"),
                                                      api("GET", "/v1/agents/runs?limit=200")]);
    $("whoami").textContent = "tenant " + who.tenant;
    renderApprovals(approvals.approvals); renderRuns(runs.runs); await showJournal();
    $("error").textContent = ""; document.body.dataset.loaded = "yes";
    document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || "0") + 1);
  } catch (e) { $("error").textContent = String(e.message); }
}

$("login").onsubmit = (ev) => { ev.preventDefault(); token = $("token").value.trim();
  $("token").value = ""; approvalRows.forEach((row) => row.remove()); approvalRows.clear(); refresh(); };
refresh();
setInterval(refresh, 3000);
