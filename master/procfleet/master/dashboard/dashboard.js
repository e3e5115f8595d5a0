// procfleet's dashboard: polls /api/status once a second and redraws. Read-only. Every value
// from the master (worker ids, error text) goes into the page as text, never as HTML.
"use strict";

const POLL_MS = 1000;
const $ = (id) => document.getElementById(id);

function text(cell, value) {
  cell.textContent = value === null || value === undefined || value === "" ? "–" : String(value);
}

function setRows(tbody, rows, key, cells, rowClass) {
  const seen = new Set();
  for (const row of rows) {
    const id = String(row[key]);
    seen.add(id);
    let tr = tbody.querySelector(`tr[data-id="${CSS.escape(id)}"]`);
    if (!tr) {
      tr = document.createElement("tr");
      tr.dataset.id = id;
      for (let i = 0; i < cells.length; i++) tr.appendChild(document.createElement("td"));
      tbody.appendChild(tr);
    }
    cells.forEach((make, i) => {
      const [value, cls] = make(row);
      text(tr.children[i], value);
      tr.children[i].className = cls || "";
    });
    tr.className = rowClass ? rowClass(row) : "";
  }
  for (const tr of [...tbody.children]) if (!seen.has(tr.dataset.id)) tr.remove();
}

const WORKER_CELLS = [
  (w) => [w.id], (w) => [w.address], (w) => [w.python], (w) => [w.concurrency],
  (w) => [w.state, "state"], (w) => [w.held, "held"], (w) => [w.ok, "ok"],
  (w) => [w.failed, "failed"], (w) => [`${w.last_seen_s.toFixed(1)} s ago`],
  (w) => [w.rate.toFixed(1), "rate"],
];
const JOB_CELLS = [
  (j) => [j.job.slice(0, 12)], (j) => [j.label], (j) => [j.submitted], (j) => [j.finished],
  (j) => [j.ok], (j) => [j.failed], (j) => [j.running],
];

function rates(history) {
  // tasks/s between consecutive samples: [seconds ago, rate]
  const out = [];
  for (let i = 1; i < history.length; i++) {
    const [ago0, ok0, f0] = history[i - 1];
    const [ago1, ok1, f1] = history[i];
    const dt = ago0 - ago1;
    if (dt > 0) out.push([ago1, (ok1 + f1 - ok0 - f0) / dt]);
  }
  return out;
}

function drawChart(history) {
  const canvas = $("chart");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 28;
  ctx.clearRect(0, 0, w, h);
  const points = rates(history);
  const span = Math.max(20, history.length ? history[0][0] : 0);
  const top = Math.max(1, ...points.map((p) => p[1]));
  ctx.strokeStyle = "#dde1e6";
  ctx.fillStyle = "#5b6573";
  ctx.font = "11px system-ui, sans-serif";
  ctx.beginPath();
  ctx.moveTo(pad, 4); ctx.lineTo(pad, h - pad / 2); ctx.lineTo(w, h - pad / 2);
  ctx.stroke();
  ctx.fillText(`${top.toFixed(top < 10 ? 1 : 0)}/s`, 0, 12);
  ctx.fillText(`${Math.round(span)} s ago`, pad + 2, h - 2);
  ctx.fillText("now", w - 24, h - 2);
  if (points.length < 2) return;
  ctx.strokeStyle = "#2e8b57";
  ctx.lineWidth = 2;
  ctx.beginPath();
  points.forEach(([ago, rate], i) => {
    const x = pad + (w - pad) * (1 - ago / span);
    const y = (h - pad / 2) - (h - pad / 2 - 6) * (rate / top);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
}

function showFailures(failures) {
  const list = $("failures");
  list.replaceChildren();
  for (const f of failures) {
    const li = document.createElement("li");
    const head = document.createElement("div");
    head.textContent = `task ${JSON.stringify(f.id)} (${f.task}) on ${f.worker}`;
    const pre = document.createElement("pre");
    pre.textContent = f.error || "";
    li.append(head, pre);
    list.appendChild(li);
  }
  $("no-failures").hidden = failures.length > 0;
}

function show(s) {
  const service = s.mode === "service";
  const total = service ? s.ok + s.failed + s.running + s.pending : s.total;
  const finished = service ? s.ok + s.failed : s.finished;
  $("what").textContent = service
    ? `service · ${s.jobs.length} jobs open · ${s.jobs_done} done`
    : `batch ${s.batch} · ${s.state === "stop" ? "over" : "running"} · ${s.elapsed_s.toFixed(1)} s`;
  $("bar-ok").style.width = `${total ? (100 * s.ok) / total : 0}%`;
  $("bar-failed").style.width = `${total ? (100 * s.failed) / total : 0}%`;
  text($("fig-finished"), service ? finished : `${finished}/${total}`);
  text($("fig-ok"), s.ok);
  text($("fig-failed"), s.failed);
  text($("fig-running"), s.running);
  text($("fig-pending"), s.pending);
  text($("fig-workers"), s.alive_workers);
  // over the last 10 s of samples, as the workers' rates
  const h = s.history, last = h[h.length - 1], since = h.find((p) => p[0] - last[0] <= 10.5);
  const rate = last && since && since[0] > last[0]
    ? (last[1] + last[2] - since[1] - since[2]) / (since[0] - last[0]) : 0;
  text($("fig-rate"), rate.toFixed(1));
  setRows($("workers").tBodies[0], s.workers, "id", WORKER_CELLS, (w) => w.state);
  $("jobs-section").hidden = !service;
  if (service) setRows($("jobs").tBodies[0], s.jobs, "job", JOB_CELLS);
  drawChart(s.history);
  showFailures(s.failures);
}

async function poll() {
  const badge = $("connection");
  try {
    const reply = await fetch("api/status", { cache: "no-store" });
    if (!reply.ok) throw new Error(`HTTP ${reply.status}`);
    show(await reply.json());
    badge.textContent = "live";
    badge.className = "badge live";
  } catch (err) {
    badge.textContent = "master not answering";
    badge.className = "badge down";
  }
  setTimeout(poll, POLL_MS);
}

poll();
