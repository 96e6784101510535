// The dscmr search page: text -> image as you type, image -> text by upload. No libraries, no network but this server.
"use strict";
const $ = (id) => document.getElementById(id);
let info = null;
let pending = null; // AbortController of the request in flight
let timer = 0;

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
  if (message) { // results of an earlier query would read as the answer to this one
    $("status").textContent = "";
    $("query-classes").hidden = true;
    $("grid").hidden = true;
    $("list").hidden = true;
  }
}

function bundleFor(queryModality) {
  const chosen = info.bundles.find((b) => b.name === $("bundle").value);
  if (chosen && (queryModality === null || chosen.query_modality === queryModality)) return chosen;
  return info.bundles.find((b) => queryModality === null || b.query_modality === queryModality) || null;
}

async function api(path, options) {
  if (pending) pending.abort();
  pending = new AbortController();
  const resp = await fetch(path, { ...options, signal: pending.signal });
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok) throw new Error((body && body.error) || `the server answered ${resp.status}`);
  return body;
}

function options(bundle) {
  const metric = $("metric").value;
  const k = Math.max(1, Math.min(100, parseInt($("k").value, 10) || 12));
  return { bundle: bundle.name, k, metric: metric && bundle.metrics.includes(metric) ? metric : null };
}

function meta(hit, metric) {
  const box = document.createElement("div");
  box.className = "meta";
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = metric === "hamming" ? `distance ${hit.score}` : `score ${hit.score.toFixed(3)}`;
  box.append(`#${hit.rank}`, score);
  for (const c of hit.classes || []) {
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = c;
    box.append(tag);
  }
  if (hit.shares_class !== null && hit.shares_class !== undefined) {
    const s = document.createElement("span");
    s.className = hit.shares_class ? "same" : "other";
    s.textContent = hit.shares_class ? "✓ shares a class" : "✗ no shared class";
    box.append(s);
  }
  return box;
}

function render(res, what) {
  const hits = res.hits || [];
  const t = res.timing_ms;
  $("status").textContent = `${hits.length} ${res.modality === "image" ? "images" : "texts"} for ${what} ` +
    `in ${t.total.toFixed(1)} ms (encode ${t.encode.toFixed(1)} ms, search ${t.search.toFixed(1)} ms), ` +
    `${res.metric} on ${res.bundle}`;
  const qc = res.results[0].classes || [];
  $("query-classes").hidden = qc.length === 0;
  $("query-classes").textContent = qc.length ? `The query is a dataset item of class ${qc.join(", ")}.` : "";
  $("bundle").value = res.bundle;
  const grid = $("grid"), list = $("list");
  grid.replaceChildren(); list.replaceChildren();
  const asGrid = res.modality === "image";
  grid.hidden = !asGrid; list.hidden = asGrid;
  for (const hit of hits) {
    const li = document.createElement("li");
    if (asGrid) {
      const name = hit.item.split("/").pop();
      if (hit.thumbnail) {
        const img = document.createElement("img");
        img.src = hit.thumbnail;
        img.alt = `result ${hit.rank}: ${name}`;
        img.loading = "lazy";
        li.append(img);
      }
      const cap = document.createElement("div");
      cap.className = "item small";
      cap.textContent = name;
      li.append(cap);
    } else {
      const p = document.createElement("div");
      p.className = "item";
      p.textContent = hit.item;
      li.append(p);
    }
    li.append(meta(hit, res.metric));
    (asGrid ? grid : list).append(li);
  }
}

async function searchText(asId) {
  const q = $("q").value.trim();
  if (!q) return;
  const byId = asId === true || !info.run.raw_queries;
  const bundle = bundleFor(byId ? null : "text");
  if (!bundle) { showError("no bundle of images is loaded, so text queries have nothing to search"); return; }
  const body = { ...options(bundle), [byId ? "id" : "text"]: q };
  try {
    const res = await api("/api/v1/search", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    showError("");
    render(res, byId ? `item ${q}` : `“${q}”`);
  } catch (e) {
    if (e.name !== "AbortError") showError(e.message);
  }
}

async function searchImage(file) {
  const bundle = bundleFor("image");
  if (!bundle) { showError("no bundle of texts is loaded, so image queries have nothing to search"); return; }
  if (file.size > info.limits.max_upload_bytes) {
    showError(`${file.name} is ${(file.size / 1048576).toFixed(1)} MB; the limit is ${$("max-mb").textContent} MB`);
    return;
  }
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.onerror = () => { preview.hidden = true; };
  preview.src = URL.createObjectURL(file);
  preview.alt = `query: ${file.name}`;
  preview.hidden = false;
  const form = new FormData();
  form.append("image", file);
  const opts = options(bundle);
  for (const [key, value] of Object.entries(opts)) if (value !== null) form.append(key, String(value));
  try {
    const res = await api("/api/v1/search", { method: "POST", body: form });
    showError("");
    render(res, file.name);
  } catch (e) {
    if (e.name !== "AbortError") showError(e.message);
  }
}

function setup() {
  const names = info.bundles.map((b) => `${b.name} (${b.count} ${b.modality}s)`).join(", ");
  $("about").textContent = `Run ${info.run.path.split("/").slice(-2).join("/")}; bundles: ${names}.`;
  $("max-mb").textContent = (info.limits.max_upload_bytes / 1048576).toFixed(0);
  for (const b of info.bundles) {
    const o = document.createElement("option");
    o.value = b.name;
    o.textContent = `${b.name}: ${b.modality}s (${b.count})`;
    $("bundle").append(o);
  }
  if (!info.run.raw_queries) {
    $("q-label").textContent = "Dataset item id (this run was trained on precomputed features)";
    $("q").placeholder = "an item id";
  }
  if (!info.run.raw_queries || !info.bundles.some((b) => b.query_modality === "image")) {
    $("drop").closest("section").hidden = true;
  }
  const textBundle = bundleFor(info.run.raw_queries ? "text" : null);
  if (textBundle) {
    $("bundle").value = textBundle.name;
    showExamples(textBundle);
  }
}

async function showExamples(bundle) {
  // Dataset items as queries: their hits say whether they share a class with the query.
  try {
    const resp = await fetch(`/api/v1/bundles/${encodeURIComponent(bundle.name)}/examples?n=5`);
    if (!resp.ok) return;
    const body = await resp.json();
    for (const id of body.ids) {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = id.length > 60 ? `${id.slice(0, 57)}…` : id;
      b.title = `search with dataset item: ${id}`;
      b.addEventListener("click", () => { $("q").value = id; clearTimeout(timer); searchText(true); });
      $("examples").append(b);
    }
    $("examples").hidden = body.ids.length === 0;
  } catch (e) { /* examples are optional */ }
}

function wire() {
  $("text-form").addEventListener("submit", (e) => { e.preventDefault(); clearTimeout(timer); searchText(); });
  $("q").addEventListener("input", () => {
    clearTimeout(timer);
    if (info.run.raw_queries) timer = setTimeout(searchText, 250);
  });
  const drop = $("drop"), file = $("file");
  drop.addEventListener("click", () => file.click());
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); file.click(); }
  });
  file.addEventListener("change", () => { if (file.files.length) searchImage(file.files[0]); });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) searchImage(e.dataTransfer.files[0]);
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "/" && document.activeElement !== $("q")) { e.preventDefault(); $("q").focus(); }
  });
}

async function main() {
  wire();
  try {
    const resp = await fetch("/api/v1/info");
    info = await resp.json();
    if (!resp.ok) throw new Error(info.error || `the server answered ${resp.status}`);
    setup();
  } catch (e) {
    showError(`cannot reach the search service: ${e.message}`);
  }
}
main();
