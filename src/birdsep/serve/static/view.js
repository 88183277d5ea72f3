// The view of one processed recording: the mix's spectrogram with each track's energy in its
// colour and one strip per track (images drawn by the server on one level scale), inside a
// wavesurfer.js timeline that gives zoom, scrolling, the playhead and the detection regions;
// a row of controls per track (play alone, solo, mute, level) driving the mixer; the
// detections table; downloads.

import WaveSurfer from "./vendor/wavesurfer/wavesurfer.esm.js";
import RegionsPlugin from "./vendor/wavesurfer/plugins/regions.esm.js";
import TimelinePlugin from "./vendor/wavesurfer/plugins/timeline.esm.js";
import { get, url } from "./api.js";
import { Mixer } from "./mixer.js";

const COMBINED_HEIGHT = 220; // px: the mix panel
const TRACK_HEIGHT = 64; // px: one strip per track
const TIMELINE_HEIGHT = 20;
const LANE = 19; // px: one detection label lane in the mix panel
const MAX_LANES = 9;
const MAX_ZOOM = 600; // px per second

export function fmtTime(s, tenths = true) {
  if (!isFinite(s)) s = 0;
  const m = Math.floor(s / 60);
  const r = s - 60 * m;
  return `${m}:${(tenths ? r.toFixed(1) : Math.floor(r).toString()).padStart(tenths ? 4 : 2, "0")}`;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "style") Object.assign(e.style, v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function withAlpha(hex, alpha) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
}

export class RecordingView {
  /** `result` is /api/result's answer, `params` the recording id and settings for every URL. */
  constructor(root, result, params) {
    this.root = root;
    this.result = result;
    this.params = params;
    this.scale = { mode: "background", range: null };
    this.sort = { key: "start", dir: 1 };
    this.tracksById = Object.fromEntries(result.tracks.map((t) => [t.id, t]));
    this.strips = result.tracks.filter((t) => t.kind !== "mix");
    this.mixer = new Mixer(document.getElementById("audio"), result.tracks,
      (id) => url("/api/audio", { ...params, track: id }));
    this.build();
  }

  $(sel) { return this.root.querySelector(sel); }

  imageUrl(view, extra = {}) {
    return url("/api/spectrogram", { ...this.params, view, scale: this.scale.mode,
      range_db: this.scale.range || "", ...extra });
  }

  build() {
    const r = this.result;
    this.$("#title").textContent = r.name;
    this.buildLabels();
    this.buildTimeline();
    this.buildTable();
    this.buildDownloads();
    this.bindToolbar();
    this.mixer.onChange((m, tick) => this.refresh(tick));
    this.refresh(false);
    this.updateLegend();
  }

  // ------------------------------------------------------------------ left column
  buildLabels() {
    const labels = this.$("#labels");
    labels.replaceChildren();
    const mix = this.tracksById.mix;
    const head = el("div", { class: "panel-label combined track-row", dataset: { track: "mix" },
      style: { height: `${COMBINED_HEIGHT}px` } },
    el("div", { class: "name" }, el("span", { class: "swatch", style: { background: mix.colour } }),
      "mix", el("span", { class: "level" }, "the recording")),
    this.controls(mix),
    el("div", { class: "hint" }, "each track's energy in its colour"),
    this.freqAxis());
    labels.append(head);
    for (const t of this.strips) {
      const level = t.level_db === null || t.level_db === undefined ? "" : `${t.level_db.toFixed(1)} dB`;
      labels.append(el("div", { class: "panel-label track-row", dataset: { track: t.id },
        style: { height: `${TRACK_HEIGHT}px` } },
      el("div", { class: "name" }, el("span", { class: "swatch", style: { background: t.colour } }), t.name,
        el("span", { class: "level", title: "energy relative to the mixture (separation.json)" }, level)),
      this.controls(t)));
    }
    labels.append(el("div", { class: "panel-label spacer", style: { height: `${TIMELINE_HEIGHT + 14}px` } }));
  }

  controls(t) {
    const gain = el("span", { class: "gain" }, "0 dB");
    const slider = el("input", { type: "range", min: "-30", max: "24", step: "1", value: "0",
      class: "level-slider", title: "level (dB)", "aria-label": `${t.name} level` });
    slider.addEventListener("input", () => {
      this.mixer.setGain(t.id, Number(slider.value));
      gain.textContent = `${Number(slider.value) > 0 ? "+" : ""}${slider.value} dB`;
    });
    return el("div", { class: "controls" },
      el("button", { type: "button", class: "play", title: "play this track alone",
        onclick: () => { this.mixer.only(t.id); if (!this.mixer.playing) this.mixer.play(); } }, "▶"),
      el("button", { type: "button", class: "solo", title: "solo",
        onclick: () => this.mixer.setSolo(t.id, !this.mixer.byId[t.id].solo) }, "S"),
      el("button", { type: "button", class: "mute", title: "mute",
        onclick: () => this.mixer.setMute(t.id, !this.mixer.byId[t.id].muted) }, "M"),
      slider, gain, el("div", { class: "meter" }, el("div")));
  }

  freqAxis() {
    const axis = el("div", { class: "freq-axis" });
    const fmax = this.result.fmax;
    const step = fmax > 16000 ? 4000 : 2000;
    for (let f = 0; f <= fmax; f += step) {
      const bottom = Math.max(6, Math.min(COMBINED_HEIGHT - 6, (f / fmax) * COMBINED_HEIGHT));
      axis.append(el("span", { style: { bottom: `${bottom}px` } }, `${f / 1000} kHz`));
    }
    return axis;
  }

  // ------------------------------------------------------------------ timeline
  buildTimeline() {
    const r = this.result;
    const container = this.$("#timeline");
    container.replaceChildren();
    this.regions = RegionsPlugin.create();
    const height = COMBINED_HEIGHT + this.strips.length * TRACK_HEIGHT;
    this.ws = WaveSurfer.create({
      container,
      media: this.mixer.clock,
      peaks: [new Float32Array([0, 0])],
      duration: r.duration,
      height,
      renderFunction: () => {}, // the pictures are the server's spectrograms, not a waveform
      cursorColor: "#111",
      cursorWidth: 2,
      autoScroll: true,
      autoCenter: false,
      dragToSeek: true,
      plugins: [this.regions, TimelinePlugin.create({ height: TIMELINE_HEIGHT })],
    });
    this.ws.on("interaction", (t) => this.mixer.seek(t));
    this.ws.on("zoom", () => this.scheduleDetail());
    this.ws.on("scroll", () => this.scheduleDetail());
    this.ws.once("ready", () => {
      this.addLayers(height);
      this.addRegions();
    });
    this.regions.on("region-clicked", (region, e) => {
      e.stopPropagation();
      this.playDetection(region.detection);
    });
  }

  addLayers(height) {
    const wrapper = this.ws.getWrapper();
    this.layers = el("div", { class: "layers", style: { position: "absolute", left: "0", top: "0", width: "100%",
      height: `${height}px`, pointerEvents: "none", zIndex: "0" } });
    this.panels = [{ view: "combined", top: 0, height: COMBINED_HEIGHT }];
    this.strips.forEach((t, i) => this.panels.push({ view: t.id, top: COMBINED_HEIGHT + i * TRACK_HEIGHT,
      height: TRACK_HEIGHT }));
    for (const p of this.panels) {
      p.img = el("img", { alt: p.view, dataset: { view: p.view }, style: { position: "absolute", left: "0",
        width: "100%", top: `${p.top}px`, height: `${p.height}px`, imageRendering: "auto" } });
      p.detail = el("img", { alt: "", style: { position: "absolute", top: `${p.top}px`, height: `${p.height}px`,
        display: "none" } });
      const line = el("div", { style: { position: "absolute", left: "0", right: "0", top: `${p.top + p.height - 1}px`,
        borderBottom: "1px solid #d9dee2" } });
      this.layers.append(p.img, p.detail, line);
    }
    wrapper.prepend(this.layers);
    this.loadImages();
  }

  loadImages() {
    for (const p of this.panels || []) {
      p.img.src = this.imageUrl(p.view);
      p.detail.style.display = "none";
    }
    this.scheduleDetail();
  }

  scheduleDetail() {
    clearTimeout(this.detailTimer);
    this.detailTimer = setTimeout(() => this.loadDetail(), 300);
  }

  /** Zoomed in past the overview's resolution: draw the visible stretch again, sharper. */
  loadDetail() {
    if (!this.panels || !this.ws) return;
    const d = this.result.duration;
    const pxPerSec = this.ws.getWrapper().scrollWidth / d;
    const overviewPerSec = 3000 / d;
    if (pxPerSec < overviewPerSec * 1.3) {
      for (const p of this.panels) p.detail.style.display = "none";
      return;
    }
    const width = this.ws.getWidth();
    const t0 = Math.max(0, this.ws.getScroll() / pxPerSec - 0.25 * width / pxPerSec);
    const t1 = Math.min(d, t0 + 1.5 * width / pxPerSec);
    const columns = Math.min(8000, Math.max(16, Math.round((t1 - t0) * pxPerSec)));
    for (const p of this.panels) {
      const next = this.imageUrl(p.view, { start: t0.toFixed(3), end: t1.toFixed(3), width: columns });
      const img = p.detail;
      img.onload = () => {
        Object.assign(img.style, { left: `${(t0 / d) * 100}%`, width: `${((t1 - t0) / d) * 100}%`, display: "" });
      };
      img.src = next;
    }
  }

  addRegions() {
    this.regions.clearRegions();
    const byWindow = new Map();
    for (const det of this.result.detections) {
      const key = `${det.start}-${det.end}`;
      if (!byWindow.has(key)) byWindow.set(key, []);
      byWindow.get(key).push(det);
    }
    for (const dets of byWindow.values()) {
      dets.sort((a, b) => b.confidence - a.confidence);
      dets.slice(0, MAX_LANES).forEach((det, lane) => {
        const colour = (this.tracksById[det.track] || this.tracksById.mix).colour;
        const region = this.regions.addRegion({
          start: det.start, end: det.end, drag: false, resize: false, color: withAlpha(colour, 0.16),
          content: el("span", { style: { fontSize: "11px", whiteSpace: "nowrap", padding: "0 4px",
            color: "#111", textShadow: "0 0 3px #fff" } }, `${det.common} ${det.confidence.toFixed(2)}`),
        });
        region.detection = det;
        det.region = region;
        if (region.element) {
          Object.assign(region.element.style, { top: `${2 + lane * LANE}px`, height: `${LANE - 2}px`,
            border: `1px solid ${colour}`, cursor: "pointer", overflow: "hidden" });
          region.element.dataset.track = det.track;
          region.element.title = `${det.common} (${det.scientific || "?"}) ${det.confidence.toFixed(2)} — ${det.track}`;
        }
      });
    }
  }

  // ------------------------------------------------------------------ detections table
  buildTable() {
    const dets = this.result.detections;
    const tbody = this.$("#detections tbody");
    this.$("#detections-count").textContent = `(${dets.length})`;
    const none = this.$("#no-detections");
    none.hidden = dets.length > 0;
    none.textContent = this.result.classifier
      ? "No species above the minimum confidence."
      : "No classifier chosen: choose one above to detect species.";
    const sorted = [...dets].sort((a, b) => {
      const k = this.sort.key;
      const x = a[k], y = b[k];
      return (x < y ? -1 : x > y ? 1 : a.start - b.start) * this.sort.dir;
    });
    tbody.replaceChildren(...sorted.map((d) => {
      const t = this.tracksById[d.track] || { colour: "#999", name: d.track };
      const row = el("tr", { class: "detection", dataset: { start: d.start, end: d.end, track: d.track },
        onclick: () => this.playDetection(d) },
      el("td", {}, `${fmtTime(d.start)}–${fmtTime(d.end)}`),
      el("td", { class: "species" }, el("span", { class: "common" }, d.common),
        d.scientific ? el("span", { class: "scientific" }, d.scientific) : null),
      el("td", {}, el("span", { class: "confbar", style: { width: `${Math.round(d.confidence * 60)}px` } }),
        d.confidence.toFixed(2)),
      el("td", {}, el("span", { class: "swatch", style: { background: t.colour } }), " ", t.name),
      el("td", {}, el("button", { type: "button", title: "play this window from this track" }, "▶")));
      d.row = row;
      return row;
    }));
    for (const th of this.$("#detections thead").querySelectorAll("th[data-sort]")) {
      th.onclick = () => {
        const key = th.dataset.sort;
        this.sort = { key, dir: this.sort.key === key ? -this.sort.dir : (key === "confidence" ? -1 : 1) };
        this.buildTable();
      };
    }
  }

  playDetection(d) {
    for (const row of this.$("#detections tbody").children) row.classList.toggle("playing", row === d.row);
    this.playing = d;
    const pxPerSec = this.ws.getWrapper().scrollWidth / this.result.duration;
    const visible = this.ws.getWidth() / pxPerSec;
    const left = this.ws.getScroll() / pxPerSec;
    if (d.start < left || d.end > left + visible) this.ws.setScrollTime(Math.max(0, d.start - 0.1 * visible));
    return this.mixer.playWindow(this.tracksById[d.track] ? d.track : "mix", d.start, d.end);
  }

  // ------------------------------------------------------------------ downloads and toolbar
  buildDownloads() {
    const ul = this.$("#downloads");
    ul.replaceChildren(...this.result.downloads.map((d) => el("li", {},
      el("a", { href: url("/api/download", { ...this.params, what: d.what, track: d.track, format: d.format }),
        download: "", dataset: { what: d.what } }, d.label))));
  }

  bindToolbar() {
    const play = this.$("#play");
    play.onclick = () => this.mixer.toggle();
    const zoom = this.$("#zoom");
    zoom.value = "0";
    zoom.oninput = () => {
      const fit = this.ws.getWidth() / this.result.duration;
      const f = Number(zoom.value) / 100;
      this.ws.zoom(f === 0 ? 0 : fit * Math.pow(Math.max(MAX_ZOOM / fit, 1), f));
    };
    const scale = this.$("#scale");
    const range = this.$("#range");
    scale.value = this.scale.mode;
    range.value = "0";
    const rescale = () => {
      this.scale = { mode: scale.value, range: Number(range.value) || null };
      this.loadImages();
      this.updateLegend();
    };
    scale.onchange = rescale;
    range.onchange = rescale;
  }

  async updateLegend() {
    const text = this.$("#legend .text");
    try {
      const s = await get("/api/scale", { ...this.params, scale: this.scale.mode, range_db: this.scale.range || "" });
      text.textContent = s.describe;
    } catch (e) {
      text.textContent = "";
    }
  }

  refresh(tick) {
    const m = this.mixer;
    this.$("#time").textContent = `${fmtTime(m.currentTime)} / ${fmtTime(this.result.duration)}`;
    this.$("#play").textContent = m.playing ? "❚❚" : "▶";
    if (tick) {
      const levels = m.levels();
      for (const row of this.root.querySelectorAll(".track-row")) {
        const db = levels[row.dataset.track];
        const bar = row.querySelector(".meter > div");
        if (bar) bar.style.width = `${Math.max(0, Math.min(100, (db + 60) * 100 / 60))}%`;
      }
      return;
    }
    for (const row of this.root.querySelectorAll(".track-row")) {
      const t = m.byId[row.dataset.track];
      if (!t) continue;
      row.querySelector(".solo").classList.toggle("on", t.solo);
      row.querySelector(".mute").classList.toggle("on", t.muted);
      row.classList.toggle("silent", !m.audible(t));
    }
    if (!m.playing && !m.audition) {
      for (const row of this.$("#detections tbody").children) row.classList.remove("playing");
    }
  }

  destroy() {
    clearTimeout(this.detailTimer);
    if (this.ws) this.ws.destroy();
    this.mixer.destroy();
  }
}
