// The farm dashboard: polls the farm's read-only routes (GET /workers, /queue, /history)
// and redraws. Plain JS, no build step. Every value from the server is put in the page
// with textContent or as a URL parameter, never as HTML: model and file names are user input.
"use strict";

const POLL_MS = 2000;
const WINDOW_S = 300; // the utilisation plot shows this much history
const RECENT_JOBS = 20;
const COLORS = ["#64b5f6", "#81c784", "#ffb74d", "#e57373", "#ba68c8", "#4dd0e1", "#fff176", "#a1887f"];
const CHECKPOINT_INPUTS = ["ckpt_name", "unet_name", "model_name"];

const samples = new Map(); // worker_id -> [[t_s, fraction 0..1], ...]
let colorOf = new Map();

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(child == null ? "" : String(child)));
  }
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function gib(bytes) {
  return bytes == null ? "–" : (bytes / 2 ** 30).toFixed(1) + " GiB";
}

function seconds(s) {
  return s == null ? "–" : s.toFixed(2);
}

async function getJSON(path) {
  const response = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
    throw new Error(path + ": " + message);
  }
  return response.json();
}

// The checkpoint a queued or finished prompt loads (API-format prompt: node id -> {class_type, inputs}).
function checkpointOf(prompt) {
  for (const node of Object.values(prompt || {})) {
    const inputs = (node && node.inputs) || {};
    for (const name of CHECKPOINT_INPUTS) {
      if (typeof inputs[name] === "string") return inputs[name];
    }
  }
  return "(none)";
}

function chips(names) {
  if (!names.length) return el("span", { class: "empty" }, "—");
  return el("div", { class: "chips" }, ...names.map((n) => el("span", {}, n)));
}

// Utilisation where NVML reports it; else 1 while the worker runs a job and 0 when idle.
function busyFraction(worker) {
  if (worker.utilization != null) return Math.max(0, Math.min(1, worker.utilization));
  return worker.running.length ? 1 : 0;
}

function renderWorkers(workers) {
  const body = document.querySelector("#workers tbody");
  body.replaceChildren();
  if (!workers.length) {
    body.append(el("tr", {}, el("td", { colspan: 9, class: "empty" }, "no workers have joined the farm yet")));
    return;
  }
  const byNode = new Map();
  for (const w of workers) {
    if (!byNode.has(w.node)) byNode.set(w.node, []);
    byNode.get(w.node).push(w);
  }
  for (const [node, list] of [...byNode].sort()) {
    body.append(el("tr", { class: "node" }, el("td", { colspan: 9 }, "node " + node + " · " + list.length + " GPU" + (list.length === 1 ? "" : "s"))));
    list.sort((a, b) => (a.gpu_index ?? -1) - (b.gpu_index ?? -1));
    for (const w of list) {
      const fraction = busyFraction(w);
      const bar = el("span", { class: "bar", title: (fraction * 100).toFixed(0) + "%" }, el("i", { style: "width:" + (fraction * 100).toFixed(0) + "%" }));
      const utilText = w.utilization != null ? (w.utilization * 100).toFixed(0) + "%" : (w.running.length ? "busy" : "idle");
      const vram = w.vram_total_bytes ? gib(w.vram_used_bytes) + " / " + gib(w.vram_total_bytes) : "–";
      const state = w.alive ? (w.running.length ? "running " + w.running.length : "idle") : "dead";
      body.append(el("tr", { "data-worker": w.worker_id },
        el("td", {}, el("i", { class: "swatch", style: "background:" + colorOf.get(w.worker_id) }), w.worker_id),
        el("td", {}, (w.gpu_index == null ? "" : "#" + w.gpu_index + " ") + w.gpu_name),
        el("td", { class: w.alive ? "alive" : "dead" }, state),
        el("td", {}, bar, " ", utilText),
        el("td", {}, vram),
        el("td", { class: "num" }, w.backlog),
        el("td", {}, chips(w.tiers.vram)),
        el("td", {}, chips(w.tiers.pinned_ram)),
        el("td", {}, chips(w.tiers.disk))));
    }
  }
}

function renderPlot(now) {
  const plot = document.getElementById("plot");
  const W = 600, H = 160, left = 30, bottom = 18, top = 6;
  plot.replaceChildren();
  for (const level of [0, 0.5, 1]) {
    const y = top + (1 - level) * (H - top - bottom);
    plot.append(svg("line", { x1: left, x2: W, y1: y, y2: y, stroke: "#33363d" }));
    const label = svg("text", { x: 2, y: y + 4 });
    label.textContent = (level * 100) + "%";
    plot.append(label);
  }
  for (const minute of [0, 1, 2, 3, 4, 5]) {
    const x = left + (1 - (minute * 60) / WINDOW_S) * (W - left);
    const label = svg("text", { x: minute === 0 ? x - 22 : x - 10, y: H - 4 });
    label.textContent = minute === 0 ? "now" : "-" + minute + "m";
    plot.append(label);
  }
  const legend = document.getElementById("legend");
  legend.replaceChildren();
  for (const [id, points] of samples) {
    const color = colorOf.get(id);
    const coords = points.map(([t, f]) => {
      const x = left + (1 - (now - t) / WINDOW_S) * (W - left);
      const y = top + (1 - f) * (H - top - bottom);
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    if (coords.length) plot.append(svg("polyline", { points: coords.join(" "), fill: "none", stroke: color, "stroke-width": 1.5, "data-worker": id }));
    legend.append(el("span", {}, el("i", { style: "background:" + color }), id));
  }
}

function recordSamples(workers, now) {
  for (const w of workers) {
    if (!colorOf.has(w.worker_id)) colorOf.set(w.worker_id, COLORS[colorOf.size % COLORS.length]);
    if (!samples.has(w.worker_id)) samples.set(w.worker_id, []);
    const points = samples.get(w.worker_id);
    points.push([now, busyFraction(w)]);
    while (points.length && now - points[0][0] > WINDOW_S) points.shift();
  }
  const usesNvml = workers.some((w) => w.utilization != null);
  document.getElementById("plot-note").textContent = usesNvml ? "" :
    "No NVML on these workers: the plot shows when each one is running a job.";
}

function renderQueue(queue) {
  const counts = new Map();
  const add = (items, key) => {
    for (const item of items) {
      const name = checkpointOf(item[2]);
      if (!counts.has(name)) counts.set(name, { running: 0, pending: 0 });
      counts.get(name)[key] += 1;
    }
  };
  add(queue.queue_running, "running");
  add(queue.queue_pending, "pending");
  const body = document.querySelector("#by-checkpoint tbody");
  body.replaceChildren();
  if (!counts.size) body.append(el("tr", {}, el("td", { colspan: 3, class: "empty" }, "the queue is empty")));
  const rows = [...counts].sort((a, b) => (b[1].running + b[1].pending) - (a[1].running + a[1].pending));
  for (const [name, c] of rows) {
    body.append(el("tr", {}, el("td", {}, name), el("td", { class: "num" }, c.running), el("td", { class: "num" }, c.pending)));
  }
  return queue.queue_running.length + queue.queue_pending.length;
}

function viewURL(image) {
  const query = new URLSearchParams({ filename: image.filename, subfolder: image.subfolder || "", type: image.type || "output" });
  return "view?" + query.toString();
}

function renderJobs(history) {
  const items = Object.entries(history).map(([id, item]) => ({ id, ...item }));
  items.sort((a, b) => (b.farm?.submitted_at ?? 0) - (a.farm?.submitted_at ?? 0));
  const body = document.querySelector("#jobs tbody");
  body.replaceChildren();
  if (!items.length) body.append(el("tr", {}, el("td", { colspan: 8, class: "empty" }, "no finished jobs yet")));
  for (const item of items.slice(0, RECENT_JOBS)) {
    const farm = item.farm || {};
    const outputs = el("td", { class: "outputs" });
    for (const ui of Object.values(item.outputs || {})) {
      for (const image of ui.images || []) {
        const url = viewURL(image);
        outputs.append(el("a", { href: url, target: "_blank", title: image.filename }, el("img", { class: "thumb", src: url + "&preview=webp;50", alt: image.filename, loading: "lazy" })));
      }
    }
    const status = item.status?.status_str || "?";
    const queued = farm.submitted_at ? new Date(farm.submitted_at * 1000).toLocaleTimeString() : "–";
    body.append(el("tr", { "data-job": item.id },
      el("td", { title: item.id }, item.id.slice(0, 8)),
      el("td", { class: status === "success" ? "alive" : "dead" }, status),
      el("td", {}, checkpointOf(item.prompt?.[2])),
      el("td", {}, farm.worker_id || "–"),
      el("td", { class: "num" }, queued),
      el("td", { class: "num" }, seconds(farm.queue_wait_s)),
      el("td", { class: "num" }, seconds(farm.run_s)),
      outputs));
  }
}

function renderSummary(workers, queued) {
  const alive = workers.filter((w) => w.alive).length;
  const busy = workers.filter((w) => w.running.length).length;
  const backlog = workers.reduce((sum, w) => sum + w.backlog, 0);
  document.getElementById("summary").replaceChildren(
    el("span", { id: "sum-workers" }, alive + "/" + workers.length + " workers alive"),
    el("span", {}, busy + " busy"),
    el("span", { id: "sum-backlog" }, "backlog " + backlog),
    el("span", { id: "sum-queue" }, "queue " + queued));
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const [workers, queue, history] = await Promise.all([getJSON("workers"), getJSON("queue"), getJSON("history?max_items=" + RECENT_JOBS)]);
    const now = Date.now() / 1000;
    recordSamples(workers, now);
    renderWorkers(workers);
    renderPlot(now);
    renderSummary(workers, renderQueue(queue));
    renderJobs(history);
    status.className = "";
    status.textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.ready = "true"; // tests wait on this
  } catch (error) {
    status.className = "error";
    status.textContent = String(error.message || error);
  }
}

document.getElementById("window-min").textContent = String(WINDOW_S / 60);
refresh();
setInterval(refresh, POLL_MS);
