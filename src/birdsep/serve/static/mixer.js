// The track mixer: one <audio> element per track (streamed from the server with range
// requests, so an hour-long recording never sits decoded in memory), each routed through a
// Web Audio gain node (levels above 0 dB lift quiet birds; mute and solo set the gain to 0 and
// the element's `muted`) and an analyser for its meter. The first track's element is the clock:
// the others follow it and are nudged back when they drift.

const DRIFT = 0.06; // seconds a follower may wander before it is re-aligned

export class Mixer {
  constructor(container, tracks, urlOf) {
    this.tracks = tracks.map((t) => ({
      ...t,
      muted: t.kind === "mix", // the tracks add up to the recording: the original starts muted
      solo: false,
      gainDb: 0,
      audio: makeAudio(container, t.id, urlOf(t.id)),
    }));
    this.byId = Object.fromEntries(this.tracks.map((t) => [t.id, t]));
    this.clock = this.tracks[0].audio;
    this.ctx = null;
    this.audition = null; // {id, end}: a detection's window being played from one track
    this.listeners = new Set();
    for (const t of this.tracks) {
      t.audio.addEventListener("ended", () => t.audio === this.clock && this.pause());
    }
    this.clock.addEventListener("seeked", () => this.follow(true));
    this.apply();
    this.loop = this.loop.bind(this);
    requestAnimationFrame(this.loop);
  }

  onChange(fn) { this.listeners.add(fn); }
  changed() { for (const fn of this.listeners) fn(this); }

  get playing() { return !this.clock.paused; }
  get currentTime() { return this.clock.currentTime; }

  audible(t) {
    if (this.audition) return t.id === this.audition.id;
    if (this.tracks.some((x) => x.solo)) return t.solo;
    return !t.muted;
  }

  apply() {
    for (const t of this.tracks) {
      const on = this.audible(t);
      t.audio.muted = !on;
      if (t.gain) t.gain.gain.value = on ? Math.pow(10, t.gainDb / 20) : 0;
    }
    this.changed();
  }

  setMute(id, muted) { this.byId[id].muted = muted; this.audition = null; this.apply(); }
  setSolo(id, solo) { this.byId[id].solo = solo; this.audition = null; this.apply(); }
  setGain(id, db) { this.byId[id].gainDb = db; this.apply(); }
  /** Hear one track alone (its solo on, every other solo off). */
  only(id) {
    for (const t of this.tracks) t.solo = t.id === id;
    this.audition = null;
    this.apply();
  }

  wire() {
    if (this.ctx) return;
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return;
    this.ctx = new Ctx();
    for (const t of this.tracks) {
      const source = this.ctx.createMediaElementSource(t.audio);
      t.gain = this.ctx.createGain();
      t.analyser = this.ctx.createAnalyser();
      t.analyser.fftSize = 1024;
      t.samples = new Float32Array(t.analyser.fftSize);
      source.connect(t.gain).connect(t.analyser).connect(this.ctx.destination);
    }
    this.apply();
  }

  async play() {
    this.wire(); // Web Audio starts on a user's gesture
    if (this.ctx && this.ctx.state === "suspended") await this.ctx.resume();
    const at = this.clock.currentTime;
    for (const t of this.tracks) if (Math.abs(t.audio.currentTime - at) > 0.01) t.audio.currentTime = at;
    await Promise.all(this.tracks.map((t) => t.audio.play().catch(() => {})));
    this.changed();
  }

  pause() {
    for (const t of this.tracks) t.audio.pause();
    if (this.audition) { this.audition = null; this.apply(); }
    this.changed();
  }

  toggle() { return this.playing ? this.pause() : this.play(); }

  seek(seconds) {
    const at = Math.max(0, Math.min(seconds, this.clock.duration || seconds));
    for (const t of this.tracks) t.audio.currentTime = at;
    this.changed();
  }

  /** Play [start, end) from one track alone, then stop and give the mixer back its settings. */
  async playWindow(id, start, end) {
    this.audition = { id, end };
    this.apply();
    this.seek(start);
    await this.play();
  }

  follow(force = false) {
    const at = this.clock.currentTime;
    for (const t of this.tracks) {
      if (t.audio === this.clock) continue;
      if (force || Math.abs(t.audio.currentTime - at) > DRIFT) t.audio.currentTime = at;
      if (this.playing && t.audio.paused) t.audio.play().catch(() => {});
    }
  }

  /** Meter levels in dBFS, for the rows. */
  levels() {
    const out = {};
    for (const t of this.tracks) {
      if (!t.analyser || !this.playing) { out[t.id] = -Infinity; continue; }
      t.analyser.getFloatTimeDomainData(t.samples);
      let sum = 0;
      for (const v of t.samples) sum += v * v;
      out[t.id] = 10 * Math.log10(sum / t.samples.length + 1e-12);
    }
    return out;
  }

  loop() {
    if (this.playing) {
      this.follow();
      if (this.audition && this.clock.currentTime >= this.audition.end) this.pause();
    }
    for (const fn of this.listeners) fn(this, true);
    requestAnimationFrame(this.loop);
  }

  destroy() {
    this.pause();
    this.loop = () => {};
    for (const t of this.tracks) { t.audio.removeAttribute("src"); t.audio.load(); t.audio.remove(); }
    if (this.ctx) this.ctx.close();
  }
}

function makeAudio(container, id, url) {
  const a = document.createElement("audio");
  a.preload = "auto";
  a.crossOrigin = "anonymous";
  a.dataset.track = id;
  a.src = url;
  container.appendChild(a);
  return a;
}
