// Talking to birdsep's server: every call returns JSON or throws an Error whose message is
// the server's one-line `detail`.

export const SETTINGS = ["separator", "classifier", "mode", "combine", "min_conf", "lat", "lon", "week"];

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  return q.toString();
}

export function url(path, params) {
  const q = query(params);
  return q ? `${path}?${q}` : path;
}

async function reply(r) {
  if (r.ok) return r.json();
  let detail = `${r.status} ${r.statusText}`;
  try { detail = (await r.json()).detail || detail; } catch (e) { /* not JSON */ }
  const err = new Error(detail);
  err.status = r.status;
  throw err;
}

export async function get(path, params) {
  return reply(await fetch(url(path, params)));
}

export async function post(path, params, body) {
  return reply(await fetch(url(path, params), { method: "POST", body }));
}
