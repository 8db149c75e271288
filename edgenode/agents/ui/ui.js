// The agents page: lists runs and pending approvals, shows a run's journal, approves or rejects.
// Every value goes into the page as text (never as HTML). The token lives in this page's memory only:
// never in sessionStorage, localStorage or a cookie, which any other page of the node's origin could
// read. A reload asks for it again (or takes it from a #token= link, which is removed from the address).
"use strict";
const $ = (id) => document.getElementById(id);
let token = "";
let selected = null;

const hash = new URLSearchParams(location.hash.slice(1));
if (hash.get("token")) { token = hash.get("token"); history.replaceState(null, "", location.pathname); }

async function api(method, path, body) {
  const response = await fetch(path, {method, headers: {"authorization": "Bearer " + token,
    "content-type": "application/json"}, body: body === undefined ? undefined : JSON.stringify(body)});
  const data = response.status === 204 ? null : await response.json();
  if (!response.ok) throw new Error(data && data.error ? data.error.code + ": " + data.error.message : response.status);
  return data;
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function json(value) { return value === undefined ? "" : JSON.stringify(value, null, 1); }
function when(t) { return t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) : ""; }

async function decide(run, verdict, comment) {
  try { await api("POST", "/v1/agents/runs/" + encodeURIComponent(run) + "/" + verdict, {comment});
    $("error").textContent = ""; await refresh(); }
  catch (e) { $("error").textContent = String(e.message); }
}

function renderApprovals(items) {
  const body = $("approvals"); body.replaceChildren();
  for (const a of items) {
    const row = document.createElement("tr"); row.dataset.run = a.run;
    cell(row, a.run); cell(row, a.agent); cell(row, a.prompt); cell(row, json(a.data), "json");
    const td = cell(row, "");
    const comment = document.createElement("input"); comment.placeholder = "comment"; comment.className = "comment";
    const yes = document.createElement("button"); yes.textContent = "Approve"; yes.className = "approve";
    const no = document.createElement("button"); no.textContent = "Reject"; no.className = "reject";
    yes.onclick = () => decide(a.run, "approve", comment.value);
    no.onclick = () => decide(a.run, "reject", comment.value);
    td.append(comment, yes, no);
    body.appendChild(row);
  }
}

function renderRuns(runs) {
  const body = $("runs"); body.replaceChildren();
  for (const r of runs) {
    const row = document.createElement("tr"); row.className = "run"; row.dataset.run = r.id;
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
    const row = document.createElement("tr");
    cell(row, e.position); cell(row, e.kind); cell(row, e.name); cell(row, e.status);
    cell(row, json(e.result), "json");
    body.appendChild(row);
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
  } catch (e) { $("error").textContent = String(e.message); }
}

$("login").onsubmit = (ev) => { ev.preventDefault(); token = $("token").value.trim();
  $("token").value = ""; refresh(); };
refresh();
setInterval(refresh, 3000);
