// birdsep's page: the settings bar, the folder view (roots, uploads, the example), opening a
// recording (upload or pick), progress while the server works, then the recording view.
// The address says what is open (#/open?id=…&separator=…), so a reload or a second tab shows
// the same thing and the server's job is shared, not started twice.

import { SETTINGS, get, post, query } from "./api.js";
import { RecordingView, fmtTime } from "./view.js";

const POLL_MS = 400;
const app = { config: null, view: null, poll: null, route: 0, ownHash: null };
window.birdsep = app; // for tests and curious users: the current view, mixer and wavesurfer

const $ = (sel) => document.querySelector(sel);

// The settings come from /api/config after the page has loaded: whatever a user does before
// they arrive (a file dropped at once, a setting changed) waits for them, and is dropped if the
// server cannot be reached (start() says so).
let configured;
const ready = new Promise((resolve) => { configured = resolve; });
const whenReady = (fn) => async (...args) => { if (await ready) return fn(...args); };

// ---------------------------------------------------------------------- errors
function showError(message) {
  const box = $("#error");
  box.querySelector(".message").textContent = message;
  box.hidden = false;
}
function clearError() { $("#error").hidden = true; }
$("#error .close").onclick = clearError;

// ---------------------------------------------------------------------- settings
// BirdNET's location filter (lat, lon, week) only shows, and only counts, with a classifier that takes it
function locationShown() {
  const k = app.config.classifiers.find((c) => c.label === $("#classifier").value);
  const shown = Boolean(k && k.location);
  $("#location").hidden = !shown;
  return shown;
}

// The combination rule (classify --combine) only shows, and only counts, in the mode that pools
function combineShown() {
  const shown = $("#mode").value === app.config.pooled_mode;
  $("#combine-setting").hidden = !shown;
  return shown;
}

function currentSettings() {
  const out = {};
  const located = locationShown();
  const pooled = combineShown();
  for (const k of SETTINGS) {
    if (!located && ["lat", "lon", "week"].includes(k)) continue;
    if (!pooled && k === "combine") continue;
    const v = $(`#${k}`).value;
    if (v !== "" && String(v) !== String(app.config.defaults[k] ?? "none")) out[k] = v;
  }
  return out;
}

function fillSettings(params) {
  const c = app.config;
  const opt = (value, label) => Object.assign(document.createElement("option"), { value, textContent: label });
  $("#separator").replaceChildren(...c.separators.map((s) => opt(s.name, `${s.name} (M = ${s.sources})`)));
  $("#classifier").replaceChildren(...c.classifiers.map((k) => opt(k.label, k.kind === "birdnet" ? "BirdNET" : k.label)),
    opt("none", "none (tracks only)"));
  $("#mode").replaceChildren(...c.modes.map((m) => opt(m, m)));
  $("#combine").replaceChildren(...c.rules.map((r) => opt(r, r)));
  for (const k of SETTINGS) {
    const v = params.get(k) ?? c.defaults[k] ?? (k === "classifier" ? "none" : "");
    $(`#${k}`).value = v;
  }
  locationShown();
  combineShown();
}

$("#settings").addEventListener("change", whenReady(() => {
  const p = new URLSearchParams(location.hash.split("?")[1] || "");
  const id = p.get("id");
  location.hash = id ? `#/open?${query({ id, ...currentSettings() })}` : `#/?${query(currentSettings())}`;
  app.ownHash = location.hash; // written from the form: routing it must not refill the form (a field
  // being typed into meanwhile would lose its text)
}));

// ---------------------------------------------------------------------- routing
async function route() {
  const token = ++app.route;
  const [path, q] = location.hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(q || "");
  clearInterval(app.poll);
  if (app.view) { app.view.destroy(); app.view = null; }
  clearError();
  if (location.hash === app.ownHash) { locationShown(); combineShown(); } else fillSettings(params);
  app.ownHash = null;
  if (path === "/open" && params.get("id")) return openRecording(params.get("id"), token);
  return showHome(token);
}

function show(section) {
  for (const s of ["#home", "#view"]) $(s).hidden = s !== section;
}

// ---------------------------------------------------------------------- home: folders and uploads
async function showHome(token) {
  show("#home");
  const limit = app.config.upload_limit_bytes;
  $("#upload-hint").textContent = `Any format birdsep reads (WAV, FLAC, MP3, OGG, AIFF, …), up to ${(limit / 1e6).toFixed(0)} MB. Files stay on this machine.`;
  const lib = $("#library");
  lib.replaceChildren();
  for (const root of app.config.roots) {
    let listing;
    try {
      listing = await get("/api/library", { root: root.label, ...currentSettings() });
    } catch (e) {
      showError(e.message);
      continue;
    }
    if (token !== app.route) return;
    if (root.kind !== "root" && listing.recordings.length === 0) continue;
    lib.append(libraryTable(root, listing.recordings));
  }
}

function statusOf(r) {
  if (r.job && ["queued", "running"].includes(r.job.state)) return [r.job.state, `${r.job.state} ${Math.round(r.job.percent)} %`];
  if (r.job && r.job.state === "failed") return ["failed", "failed"];
  if (r.classified) return ["done", "done"];
  if (r.separated) return ["separated", "separated"];
  return ["new", "not processed"];
}

function libraryTable(root, recordings) {
  const title = { example: "Bundled example", uploads: "Uploaded recordings" }[root.kind] || `Folder: ${root.label}`;
  const section = document.createElement("div");
  section.className = "root";
  section.dataset.root = root.label;
  const h = document.createElement("h2");
  h.textContent = `${title} (${recordings.length})`;
  const table = document.createElement("table");
  table.innerHTML = "<thead><tr><th>recording</th><th>folder</th><th>length</th><th>status</th><th>detections</th></tr></thead>";
  const tbody = document.createElement("tbody");
  for (const r of recordings) {
    const tr = document.createElement("tr");
    tr.className = "recording";
    tr.dataset.id = r.id;
    const [cls, label] = statusOf(r);
    const link = document.createElement("a");
    link.href = `#/open?${query({ id: r.id, ...currentSettings() })}`;
    link.textContent = r.name;
    const cells = [link, r.folder, r.duration === null ? "unreadable" : fmtTime(r.duration, false), null,
      r.detections === null ? "–" : String(r.detections)];
    for (const c of cells) {
      const td = document.createElement("td");
      if (c === null) {
        const s = document.createElement("span");
        s.className = `status ${cls}`;
        s.textContent = label;
        td.append(s);
      } else td.append(c);
      tr.append(td);
    }
    tbody.append(tr);
  }
  if (!recordings.length) tbody.innerHTML = "<tr><td colspan=5 class=hint>no recordings here</td></tr>";
  table.append(tbody);
  section.append(h, table);
  return section;
}

const upload = whenReady(async (file) => {
  clearError();
  const limit = app.config.upload_limit_bytes;
  if (file.size > limit) {
    showError(`${file.name}: larger than the upload limit (${(limit / 1e6).toFixed(0)} MB)`);
    return;
  }
  $("#upload-hint").textContent = `uploading ${file.name}…`;
  try {
    const r = await post("/api/upload", { name: file.name }, file);
    location.hash = `#/open?${query({ id: r.id, ...currentSettings() })}`;
  } catch (e) {
    showError(e.message);
    $("#upload-hint").textContent = "";
  }
});

const drop = $("#drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
});
$("#file").addEventListener("change", (e) => { if (e.target.files.length) upload(e.target.files[0]); e.target.value = ""; });
$("#open-example").onclick = whenReady(() => { location.hash = `#/open?${query({ id: app.config.example, ...currentSettings() })}`; });

// ---------------------------------------------------------------------- a recording
async function openRecording(id, token) {
  show("#view");
  $("#title").textContent = id.split("/").pop();
  $("#player").hidden = true;
  const params = { id, ...currentSettings() };
  let status;
  try {
    status = await post("/api/open", params);
  } catch (e) {
    $("#progress").hidden = true;
    showError(e.message);
    return;
  }
  if (token !== app.route) return;
  if (status.state !== "done") {
    showProgress(status);
    await new Promise((resolve) => {
      app.poll = setInterval(async () => {
        try {
          status = await get("/api/status", params);
        } catch (e) {
          clearInterval(app.poll);
          showError(e.message);
          return;
        }
        if (token !== app.route) { clearInterval(app.poll); return; }
        showProgress(status);
        if (status.state === "done" || status.state === "failed") { clearInterval(app.poll); resolve(); }
      }, POLL_MS);
    });
    if (status.state === "failed") {
      showError(`${status.name}: ${status.error.replace(/^.*?: /, "")}`);
      return;
    }
  }
  $("#progress").hidden = true;
  let result;
  try {
    result = await get("/api/result", params);
  } catch (e) {
    showError(e.message);
    return;
  }
  if (token !== app.route) return;
  $("#player").hidden = false;
  app.view = new RecordingView(document.body, result, params);
}

function showProgress(s) {
  const box = $("#progress");
  box.hidden = false;
  box.querySelector(".fill").style.width = `${s.percent}%`;
  let text;
  if (s.state === "queued") text = "waiting for the jobs before it…";
  else if (s.state === "running" && s.stage) {
    const left = s.eta_s === null ? "" : ` · about ${Math.max(1, Math.round(s.eta_s))} s left in this stage`;
    const steps = s.stages.length > 1 ? ` (step ${s.stages.indexOf(s.stage) + 1} of ${s.stages.length})` : "";
    text = `${s.stage}${steps} · ${s.note ? `${s.note}…` : `${Math.round(s.percent)} %${left}`}`;
  } else text = s.state === "failed" ? "failed" : "starting…";
  box.querySelector(".text").textContent = text;
  box.dataset.state = s.state;
}

async function watchJobs() {
  try {
    const jobs = await get("/api/jobs");
    const busy = jobs.filter((j) => j.state === "running" || j.state === "queued");
    $("#jobs-indicator").textContent = busy.length ? `${busy.length} job${busy.length > 1 ? "s" : ""} at work` : "";
  } catch (e) { /* the server is gone; the next call will say so */ }
}

document.addEventListener("keydown", (e) => {
  if (e.code === "Space" && app.view && !["INPUT", "SELECT", "TEXTAREA", "BUTTON"].includes(e.target.tagName)) {
    e.preventDefault();
    app.view.mixer.toggle();
  }
});

async function start() {
  try {
    app.config = await get("/api/config");
  } catch (e) {
    showError(`cannot reach birdsep's server: ${e.message}`);
    configured(false);
    return;
  }
  configured(true);
  window.addEventListener("hashchange", route);
  setInterval(watchJobs, 2000);
  watchJobs();
  route();
}

start();
