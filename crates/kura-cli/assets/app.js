// The Kura explorer page. Every piece of run data (conversation text, summaries,
// cluster names: all untrusted) reaches the page through textContent or canvas
// text, never through HTML parsing, and no element or URL is built from it.
"use strict";

const PALETTE = [
  "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948",
  "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac", "#17becf", "#8c564b",
];
const MISSING = "#c8cad0";

const state = {
  cluster: null, // selected cluster id
  conv: null, // open conversation index
  q: "",
  mode: "semantic",
  color: "cluster",
  ff: "", // filter field
  fv: "", // filter value
  view: null, // [cx, cy, zoom]
};

const data = {
  run: null,
  clusters: [],
  byId: new Map(),
  points: null,
  colors: null, // Uint32Array per point (ABGR)
  legend: [],
  hits: new Set(),
  filtered: null, // Set of indices passing the filter, or null
  selectedMembers: null, // Set of indices in the selected cluster, or null
  hover: new Map(), // index -> brief, cached
};

// ---------- small DOM helpers (text only) ----------

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  if (props) {
    for (const [k, v] of Object.entries(props)) {
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
      else if (k === "style") Object.assign(node.style, v);
      else node.setAttribute(k, v);
    }
  }
  for (const c of children) if (c != null) node.append(c);
  return node;
}

const $ = (id) => document.getElementById(id);

/// Replaces a node's children, skipping the absent (null) ones.
function fill(node, ...children) {
  node.replaceChildren(...children.filter((c) => c != null));
}

async function api(path) {
  const res = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await res.json().catch(() => ({ error: res.statusText }));
  if (!res.ok) throw new Error(body.error || res.statusText);
  return body;
}

/// Scrolls a pane (never the page) so that `child` is at its top.
function scrollWithin(pane, child) {
  const top = child.getBoundingClientRect().top - pane.getBoundingClientRect().top + pane.scrollTop;
  if (top < pane.scrollTop || top > pane.scrollTop + pane.clientHeight - 40) pane.scrollTop = Math.max(0, top - 8);
}

function percent(share) {
  return (100 * share).toFixed(1) + "%";
}

// ---------- URL state ----------

function writeHash() {
  const p = new URLSearchParams();
  if (state.cluster) p.set("cluster", state.cluster);
  if (state.conv != null) p.set("conv", String(state.conv));
  if (state.q) p.set("q", state.q);
  if (state.q && state.mode !== "semantic") p.set("mode", state.mode);
  if (state.color !== "cluster") p.set("color", state.color);
  if (state.ff) { p.set("ff", state.ff); p.set("fv", state.fv); }
  if (state.view) p.set("view", state.view.map((v) => v.toFixed(4)).join(","));
  const hash = "#" + p.toString();
  if (location.hash !== hash) history.replaceState(null, "", hash);
}

function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  const conv = p.get("conv");
  const view = (p.get("view") || "").split(",").map(Number);
  return {
    cluster: p.get("cluster"),
    conv: conv != null && /^\d+$/.test(conv) ? Number(conv) : null,
    q: p.get("q") || "",
    mode: p.get("mode") === "keyword" ? "keyword" : "semantic",
    color: p.get("color") || "cluster",
    ff: p.get("ff") || "",
    fv: p.get("fv") || "",
    view: view.length === 3 && view.every(Number.isFinite) && view[2] > 0 ? view : null,
  };
}

async function applyState(next) {
  Object.assign(state, next);
  $("q").value = state.q;
  $("mode").value = state.mode;
  $("color").value = state.color;
  $("filter-field").value = state.ff;
  $("filter-value").value = state.fv;
  if (state.view) map.setView(state.view);
  const jobs = [setColoring(state.color), applyFilter(state.ff, state.fv, false)];
  if (state.cluster) jobs.push(selectCluster(state.cluster, { fromHash: true }));
  if (state.conv != null) jobs.push(openConversation(state.conv, { fromHash: true }));
  if (state.q) jobs.push(runSearch(state.q, state.mode, { fromHash: true }));
  await Promise.allSettled(jobs);
  map.draw();
}

// ---------- the tree ----------

// Beside a name the model did not write: the namer failed, and a base cluster took
// its most central conversation's request, a parent its largest child's name.
function borrowedNote(c) {
  const member = c.children.length ? "its largest sub-cluster" : "its most central conversation";
  return `Named after a member: the model could not name this cluster, so it took the name of ${member}.`;
}

function treeRow(index) {
  const c = data.clusters[index];
  const hasKids = c.children.length > 0;
  const kids = el("div", { class: "tree-children", role: "group", hidden: "" });
  const toggle = el("button", {
    class: "toggle", type: "button", text: hasKids ? "▸" : "·",
    "aria-label": "expand", "aria-expanded": "false",
  });
  const name = el("button", { class: "tree-name", type: "button", text: c.name, title: c.description });
  const borrowed = c.name_borrowed ? el("span", { class: "borrowed", text: "≈", title: borrowedNote(c), "aria-label": "named after a member" }) : null;
  const row = el("div", { class: "tree-row", "data-id": c.id, role: "treeitem" },
    toggle, name, borrowed, el("span", { class: "tree-count", text: `${c.count} · ${percent(c.share)}` }));
  const node = el("div", { class: "tree-node" }, row, kids);
  node._expand = (open) => {
    if (!hasKids) return;
    if (open && kids.childElementCount === 0) kids.append(...c.children.map(treeRow));
    kids.hidden = !open;
    toggle.textContent = open ? "▾" : "▸";
    toggle.setAttribute("aria-expanded", String(open));
  };
  toggle.addEventListener("click", () => node._expand(kids.hidden));
  name.addEventListener("click", () => selectCluster(c.id));
  c.node = node;
  return node;
}

function renderTree() {
  const roots = data.clusters.map((c, i) => i).filter((i) => data.clusters[i].parent < 0);
  $("tree").replaceChildren(...roots.map(treeRow));
}

/// Expands the tree down to a cluster and marks it.
function revealInTree(index) {
  const chain = [];
  for (let i = index; i >= 0; i = data.clusters[i].parent) chain.unshift(i);
  for (const i of chain.slice(0, -1)) data.clusters[i].node._expand(true);
  document.querySelectorAll(".tree-row.selected").forEach((r) => r.classList.remove("selected"));
  const node = data.clusters[index].node;
  if (node) {
    node.firstChild.classList.add("selected");
    scrollWithin($("tree-pane"), node.firstChild);
  }
}

// ---------- panels ----------

function pathLinks(path) {
  const nav = el("nav", { class: "path" });
  path.forEach((p, i) => {
    if (i > 0) nav.append(el("span", { text: "›" }));
    nav.append(el("button", { type: "button", text: p.name, on: { click: () => selectCluster(p.id) } }));
  });
  return nav;
}

function breakdown(b) {
  const total = b.values.reduce((s, [, n]) => s + n, 0) + b.other;
  const rows = b.values.map(([label, n]) => el("div", { class: "bar-row" },
    el("span", { class: "bar-label", text: label, title: label }),
    el("span", {}, el("span", { class: "bar", style: { display: "block", width: `${(100 * n) / Math.max(total, 1)}%` } })),
    el("span", { class: "bar-count", text: String(n) })));
  if (b.other) rows.push(el("div", { class: "bar-row" }, el("span", { class: "bar-label", text: "other" }), el("span"), el("span", { class: "bar-count", text: String(b.other) })));
  return el("div", { class: "facet", "data-field": b.field }, el("h3", { text: b.field.replace(/_/g, " ") }), ...rows);
}

async function selectCluster(id, opts = {}) {
  const index = data.byId.get(id);
  if (index == null) return;
  state.cluster = id;
  if (!opts.fromHash) writeHash();
  revealInTree(index);
  data.selectedMembers = null;
  const panel = $("cluster-panel");
  panel.hidden = false;
  $("hint").hidden = true;
  fill(panel, el("p", { text: "Loading…" }));
  try {
    const c = await api(`/api/cluster/${encodeURIComponent(id)}`);
    if (state.cluster !== id) return;
    data.selectedMembers = membersOf(index);
    const size = c.share == null ? `${c.count} conversations` : `${c.count} conversations, ${percent(c.share)} of its parent`;
    const convs = el("ul", { class: "items" }, ...c.conversations.map((v) => el("li", {},
      el("button", { class: "link conv-item", type: "button", "data-index": String(v.index), text: v.summary || v.chat_id, on: { click: () => openConversation(v.index) } }))));
    fill(panel, 
      el("button", { class: "close link", type: "button", text: "close", on: { click: () => { state.cluster = null; data.selectedMembers = null; panel.hidden = true; writeHash(); map.draw(); } } }),
      pathLinks(c.path.slice(0, -1)),
      el("h2", { text: c.name }),
      c.name_borrowed ? el("p", { class: "borrowed-note", text: borrowedNote(c) }) : null,
      el("p", { class: "description", text: c.description }),
      el("p", { class: "size", text: size }),
      c.children.length ? el("h3", { text: "sub-clusters" }) : null,
      c.children.length ? el("ul", { class: "items" }, ...c.children.map((k) => el("li", {},
        el("button", { class: "link", type: "button", text: `${k.name} (${k.count})`, on: { click: () => selectCluster(k.id) } })))) : null,
      ...c.facets.map(breakdown),
      el("h3", { text: c.members > c.conversations.length ? `conversations (first ${c.conversations.length} of ${c.members})` : "conversations" }),
      convs);
    map.draw();
  } catch (e) {
    fill(panel, el("p", { class: "error", text: String(e.message || e) }));
  }
}

function membersOf(index) {
  const set = new Set();
  const leaves = [];
  const stack = [index];
  while (stack.length) {
    const i = stack.pop();
    const c = data.clusters[i];
    if (c.children.length === 0) leaves.push(i);
    else stack.push(...c.children);
  }
  const leafSet = new Set(leaves);
  const base = data.points.base;
  for (let i = 0; i < base.length; i++) if (leafSet.has(base[i])) set.add(i);
  return set;
}

function factsTable(rows) {
  return el("table", { class: "facts" }, ...rows.filter(([, v]) => v != null && v !== "")
    .map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: String(v) }))));
}

async function openConversation(index, opts = {}) {
  state.conv = index;
  if (!opts.fromHash) writeHash();
  const panel = $("conversation-panel");
  panel.hidden = false;
  $("hint").hidden = true;
  fill(panel, el("p", { text: "Loading…" }));
  map.draw();
  try {
    const c = await api(`/api/conversation/${index}`);
    if (state.conv !== index) return;
    const s = c.summary || {};
    const list = (v) => (Array.isArray(v) ? v.join(", ") : v);
    fill(panel, 
      el("button", { class: "close link", type: "button", text: "close", on: { click: () => { state.conv = null; panel.hidden = true; writeHash(); map.draw(); } } }),
      pathLinks(c.path),
      el("h2", { text: c.chat_id }),
      el("p", { class: "summary", text: s.summary || "(no summary)" }),
      factsTable([
        ["request", s.request], ["task", s.task], ["topic", s.topic],
        ["languages", list(s.languages)], ["concerning score", s.concerning_score],
        ["user frustration", s.user_frustration], ["assistant errors", list(s.assistant_errors)],
        ["created", c.created_at],
      ]),
      Object.keys(c.metadata || {}).length ? el("h3", { text: "metadata" }) : null,
      factsTable(Object.entries(c.metadata || {}).map(([k, v]) => [k, typeof v === "string" ? v : JSON.stringify(v)])),
      el("h3", { text: `${c.messages.length} messages` }),
      ...c.messages.map((m) => el("div", { class: `message ${m.role === "assistant" ? "assistant" : "user"}` },
        el("div", { class: "role", text: m.role }),
        el("div", { class: "content", text: m.content }))));
    scrollWithin($("side"), panel);
  } catch (e) {
    fill(panel, el("p", { class: "error", text: String(e.message || e) }));
  }
}

// ---------- search and filter ----------

async function runSearch(q, mode, opts = {}) {
  state.q = q.trim();
  state.mode = mode;
  if (!opts.fromHash) writeHash();
  const panel = $("search-results");
  data.hits = new Set();
  if (!state.q) { panel.hidden = true; map.draw(); return; }
  panel.hidden = false;
  $("hint").hidden = true;
  fill(panel, el("p", { text: mode === "semantic" ? "Searching by meaning (the embedder loads on first use)…" : "Searching…" }));
  const p = new URLSearchParams({ q: state.q, mode });
  if (state.ff) { p.set("field", state.ff); p.set("value", state.fv); }
  try {
    const r = await api(`/api/search?${p}`);
    if (state.q !== q.trim() || state.mode !== mode) return;
    data.hits = new Set(r.hits.map((h) => h.index));
    fill(panel, 
      el("button", { class: "close link", type: "button", text: "clear", on: { click: () => { $("q").value = ""; runSearch("", state.mode); } } }),
      el("h2", { text: `${r.hits.length} results for “${r.query}”` }),
      r.clusters.length ? el("h3", { text: "clusters" }) : null,
      r.clusters.length ? el("ul", { class: "items" }, ...r.clusters.map((c) => el("li", {},
        el("button", { class: "link cluster-hit", type: "button", text: c.name, on: { click: () => selectCluster(c.cluster_id) } }),
        el("span", { class: "score", text: ` ${c.count} · ${c.score.toFixed(3)}` })))) : null,
      el("h3", { text: "conversations" }),
      el("ul", { class: "items" }, ...r.hits.map((h) => el("li", { class: "hit" },
        el("button", { class: "link", type: "button", text: h.summary || h.chat_id, on: { click: () => openConversation(h.index) } }),
        el("div", { class: "score", text: `${h.score.toFixed(3)} · ${h.cluster_path.join(" › ")}` })))));
  } catch (e) {
    fill(panel, el("p", { class: "error", text: String(e.message || e) }));
  }
  map.draw();
}

async function applyFilter(field, value, write = true) {
  state.ff = field;
  state.fv = field ? value : "";
  if (write) writeHash();
  data.filtered = null;
  if (field) {
    const r = await api(`/api/filter?${new URLSearchParams({ field, value })}`);
    data.filtered = new Set(r.indices);
    setStatus(`${r.count} conversations where ${field} = ${value}`);
  } else {
    setStatus("");
  }
  map.draw();
}

async function fillFilterValues(field) {
  const list = $("filter-values");
  list.replaceChildren();
  if (!field) return;
  const r = await api(`/api/field?${new URLSearchParams({ name: field })}`);
  list.append(...r.labels.filter((l) => l !== "other").map((l) => el("option", { value: l })));
}

// ---------- colouring ----------

function rgba(hex) {
  const n = parseInt(hex.slice(1), 16);
  return (255 << 24) | ((n & 255) << 16) | (((n >> 8) & 255) << 8) | ((n >> 16) & 255);
}

async function setColoring(field) {
  state.color = field;
  const n = data.points.x.length;
  const colors = new Uint32Array(n);
  let legend;
  if (field === "cluster") {
    const roots = data.clusters.map((c, i) => i).filter((i) => data.clusters[i].parent < 0);
    const slot = new Map(roots.map((r, k) => [r, k % PALETTE.length]));
    for (let i = 0; i < n; i++) {
      const t = data.points.top[i];
      colors[i] = rgba(t < 0 ? MISSING : PALETTE[slot.get(t)]);
    }
    legend = roots.map((r) => [data.clusters[r].name, PALETTE[slot.get(r)]]);
  } else {
    const r = await api(`/api/field?${new URLSearchParams({ name: field })}`);
    for (let i = 0; i < n; i++) {
      const v = r.values[i];
      colors[i] = rgba(v < 0 ? MISSING : PALETTE[v % PALETTE.length]);
    }
    legend = r.labels.map((l, k) => [l, PALETTE[k % PALETTE.length]]);
  }
  data.colors = colors;
  $("legend").replaceChildren(...legend.map(([label, color]) => el("div", { class: "legend-item" },
    el("span", { class: "swatch", style: { background: color } }), el("span", { text: label }))));
  map.draw();
}

function setStatus(text) {
  $("map-status").textContent = text;
}

// ---------- the map ----------

const map = (() => {
  const canvas = $("map");
  const ctx = canvas.getContext("2d");
  let cx = 0.5, cy = 0.5, zoom = 1;
  let width = 0, height = 0, ratio = 1;
  let sx = null, sy = null; // screen positions of the points after the last draw
  let image = null;
  let pending = false;

  function scale() { return zoom * Math.min(width, height) * 0.9; }
  function toScreen(x, y) { const s = scale(); return [(x - cx) * s + width / 2, height / 2 - (y - cy) * s]; }
  function toWorld(px, py) { const s = scale(); return [(px - width / 2) / s + cx, (height / 2 - py) / s + cy]; }

  function resize() {
    ratio = window.devicePixelRatio || 1;
    width = canvas.clientWidth;
    height = canvas.clientHeight;
    canvas.width = Math.max(1, Math.round(width * ratio));
    canvas.height = Math.max(1, Math.round(height * ratio));
    image = ctx.createImageData(canvas.width, canvas.height);
    draw();
  }

  function draw() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; render(); });
  }

  function render() {
    if (!data.points || !data.colors || !image) return;
    const { x, y } = data.points;
    const n = x.length;
    if (!sx || sx.length !== n) { sx = new Float32Array(n); sy = new Float32Array(n); }
    const W = canvas.width, H = canvas.height;
    const pixels = new Uint32Array(image.data.buffer);
    pixels.fill(rgba("#fbfbfd"));
    const s = scale();
    const sparse = n < 2000 ? 2 : 0;
    const size = Math.max(2, Math.min(8, Math.round((2 + sparse + Math.log2(zoom)) * ratio)));
    const dim = rgba("#e3e5ea");
    const focus = data.filtered || data.selectedMembers;
    for (let i = 0; i < n; i++) {
      const px = (x[i] - cx) * s + width / 2;
      const py = height / 2 - (y[i] - cy) * s;
      sx[i] = px; sy[i] = py;
      const X = Math.round(px * ratio - size / 2), Y = Math.round(py * ratio - size / 2);
      if (X < 0 || Y < 0 || X + size > W || Y + size > H) continue;
      let keep = true;
      if (data.filtered && !data.filtered.has(i)) keep = false;
      if (data.selectedMembers && !data.selectedMembers.has(i)) keep = false;
      const color = keep || !focus ? data.colors[i] : dim;
      for (let dy = 0; dy < size; dy++) {
        const row = (Y + dy) * W + X;
        for (let dx = 0; dx < size; dx++) pixels[row + dx] = color;
      }
    }
    ctx.putImageData(image, 0, 0);
    ctx.save();
    ctx.scale(ratio, ratio);
    ctx.lineWidth = 1.5;
    ctx.strokeStyle = "#111";
    for (const i of data.hits) {
      ctx.beginPath();
      ctx.arc(sx[i], sy[i], 5, 0, 2 * Math.PI);
      ctx.stroke();
    }
    if (state.conv != null && state.conv < n) {
      ctx.strokeStyle = "#d00";
      ctx.lineWidth = 2.5;
      ctx.beginPath();
      ctx.arc(sx[state.conv], sy[state.conv], 9, 0, 2 * Math.PI);
      ctx.stroke();
    }
    drawLabels();
    ctx.restore();
  }

  /// Top-level names when zoomed out, deeper levels as you zoom in; a label
  /// that would overlap a larger cluster's is left out.
  function drawLabels() {
    const maxLevel = data.clusters.reduce((m, c) => Math.max(m, c.level), 0);
    const level = Math.min(maxLevel, Math.max(0, Math.floor(Math.log2(zoom) + 0.5)));
    const shown = data.clusters.filter((c) => c.level === level).sort((a, b) => b.count - a.count);
    const placed = [];
    ctx.font = "600 12px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    for (const c of shown) {
      const [px, py] = toScreen(c.x, c.y);
      if (px < 0 || py < 0 || px > width || py > height) continue;
      const text = c.name.length > 40 ? c.name.slice(0, 39) + "…" : c.name;
      const w = ctx.measureText(text).width + 8, h = 18;
      const box = [px - w / 2, py - h / 2, px + w / 2, py + h / 2];
      if (placed.some((b) => b[0] < box[2] && box[0] < b[2] && b[1] < box[3] && box[1] < b[3])) continue;
      placed.push(box);
      ctx.fillStyle = c.id === state.cluster ? "rgba(255,233,168,0.95)" : "rgba(255,255,255,0.85)";
      ctx.fillRect(box[0], box[1], w, h);
      ctx.fillStyle = "#1d2430";
      ctx.fillText(text, px, py);
    }
  }

  function nearest(px, py, radius = 8) {
    if (!sx) return -1;
    let best = -1, bestD = radius * radius;
    for (let i = 0; i < sx.length; i++) {
      const dx = sx[i] - px, dy = sy[i] - py;
      const d = dx * dx + dy * dy;
      if (d < bestD) { bestD = d; best = i; }
    }
    return best;
  }

  let viewTimer = null;
  function viewChanged() {
    state.view = [cx, cy, zoom];
    clearTimeout(viewTimer);
    viewTimer = setTimeout(writeHash, 300);
    draw();
  }

  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const rect = canvas.getBoundingClientRect();
    const px = e.clientX - rect.left, py = e.clientY - rect.top;
    const [wx, wy] = toWorld(px, py);
    zoom = Math.min(512, Math.max(0.25, zoom * Math.exp(-e.deltaY * 0.0015)));
    const s = scale();
    cx = wx - (px - width / 2) / s;
    cy = wy + (py - height / 2) / s;
    viewChanged();
  }, { passive: false });

  let drag = null;
  canvas.addEventListener("pointerdown", (e) => {
    drag = { x: e.clientX, y: e.clientY, cx, cy, moved: false };
    canvas.setPointerCapture(e.pointerId);
  });
  canvas.addEventListener("pointermove", (e) => {
    const rect = canvas.getBoundingClientRect();
    if (drag) {
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      if (drag.moved) {
        canvas.classList.add("dragging");
        const s = scale();
        cx = drag.cx - dx / s;
        cy = drag.cy + dy / s;
        hideTooltip();
        viewChanged();
        return;
      }
    }
    hover(e.clientX - rect.left, e.clientY - rect.top);
  });
  canvas.addEventListener("pointerup", (e) => {
    canvas.classList.remove("dragging");
    const wasDrag = drag && drag.moved;
    drag = null;
    if (wasDrag) return;
    const rect = canvas.getBoundingClientRect();
    const i = nearest(e.clientX - rect.left, e.clientY - rect.top);
    if (i >= 0) {
      openConversation(i);
    }
  });
  canvas.addEventListener("pointerleave", hideTooltip);

  let hoverToken = 0;
  async function hover(px, py) {
    const i = nearest(px, py);
    const tip = $("tooltip");
    if (i < 0) { hideTooltip(); return; }
    const token = ++hoverToken;
    let brief = data.hover.get(i);
    if (!brief) {
      try { brief = await api(`/api/point/${i}`); } catch { return; }
      data.hover.set(i, brief);
    }
    if (token !== hoverToken) return;
    tip.textContent = `${brief.path.map((p) => p.name).join(" › ")}\n\n${brief.summary || brief.chat_id}`;
    tip.style.left = `${Math.min(px + 12, width - 370)}px`;
    tip.style.top = `${Math.min(py + 12, height - 120)}px`;
    tip.hidden = false;
  }

  function hideTooltip() { hoverToken++; $("tooltip").hidden = true; }

  window.addEventListener("resize", resize);

  return {
    init() { resize(); },
    draw,
    setView([x, y, z]) { cx = x; cy = y; zoom = z; draw(); },
    /// Where conversation `i` is drawn, in canvas pixels (for tests and tools).
    pointOnScreen(i) { return toScreen(data.points.x[i], data.points.y[i]); },
  };
})();

// ---------- start ----------

async function start() {
  const [run, tree, points] = await Promise.all([api("/api/run"), api("/api/tree"), api("/api/points")]);
  data.run = run;
  data.clusters = tree.clusters;
  data.clusters.forEach((c, i) => data.byId.set(c.id, i));
  data.points = {
    x: Float32Array.from(points.x), y: Float32Array.from(points.y),
    base: Int32Array.from(points.base), top: Int32Array.from(points.top),
  };
  $("run-name").textContent = `${run.name} · ${run.conversations} conversations · ${run.kind}`;
  document.title = `Kura · ${run.name}`;
  $("color").replaceChildren(el("option", { value: "cluster", text: "top-level cluster" }),
    ...run.fields.map((f) => el("option", { value: f, text: f })));
  $("filter-field").append(...run.fields.map((f) => el("option", { value: f, text: f })));
  renderTree();
  map.init();
  await applyState(readHash());

  $("search-form").addEventListener("submit", (e) => { e.preventDefault(); runSearch($("q").value, $("mode").value); });
  $("color").addEventListener("change", (e) => { setColoring(e.target.value); writeHash(); });
  $("filter-field").addEventListener("change", (e) => fillFilterValues(e.target.value));
  $("filter-form").addEventListener("submit", (e) => { e.preventDefault(); applyFilter($("filter-field").value, $("filter-value").value); });
  $("filter-clear").addEventListener("click", () => { $("filter-field").value = ""; $("filter-value").value = ""; applyFilter("", ""); });
  window.addEventListener("hashchange", () => applyState(readHash()));

  window.kuraMap = { pointOnScreen: map.pointOnScreen };
  requestAnimationFrame(() => {
    document.body.dataset.ready = "true";
    window.kuraLoadedMs = performance.now();
  });
}

start().catch((e) => {
  setStatus(`cannot load the run: ${e.message || e}`);
  document.body.dataset.ready = "error";
});
