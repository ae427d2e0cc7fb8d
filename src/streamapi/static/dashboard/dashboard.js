// The streamapi dashboard: plain script, no build step, nothing fetched from elsewhere.
// Live data comes from GET /dashboard/events (Server-Sent Events), read with fetch
// rather than EventSource because EventSource cannot send the admin key as a header.
"use strict";

const $ = (id) => document.getElementById(id);
const KEYS = { admin: "streamapi.adminKey", api: "streamapi.apiKey" };
// The waterfall shows this many of the latest requests.
const ROWS = 60;

const state = {
  hello: null,
  entries: new Map(), // journal id -> entry
  clockSkew: 0, // server time minus browser time, in seconds
  events: null, // AbortController of the events stream
  playground: null, // AbortController of the playground's request
};

// --- keys: kept in sessionStorage (gone with the tab), sent as headers ------------

function adminHeaders() {
  const headers = {};
  const admin = sessionStorage.getItem(KEYS.admin);
  const api = sessionStorage.getItem(KEYS.api);
  if (admin) headers["Authorization"] = "Bearer " + admin;
  // With --api-key too, the API key passes the key check as x-api-key.
  if (api) headers["x-api-key"] = api;
  return headers;
}

function apiHeaders() {
  const api = sessionStorage.getItem(KEYS.api);
  return api ? { Authorization: "Bearer " + api } : {};
}

function setupKeys() {
  $("admin-key").value = sessionStorage.getItem(KEYS.admin) || "";
  $("api-key").value = sessionStorage.getItem(KEYS.api) || "";
  $("keys").addEventListener("submit", (event) => {
    event.preventDefault();
    for (const [name, id] of [[KEYS.admin, "admin-key"], [KEYS.api, "api-key"]]) {
      const value = $(id).value.trim();
      if (value) sessionStorage.setItem(name, value);
      else sessionStorage.removeItem(name);
    }
    connect();
  });
  $("keys-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEYS.admin);
    sessionStorage.removeItem(KEYS.api);
    $("admin-key").value = "";
    $("api-key").value = "";
    connect();
  });
}

// --- reading Server-Sent Events from a fetch body ---------------------------------

// Calls onFrame(rawText, {event, data}) for each event as its bytes arrive.
async function readEvents(response, onFrame) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const raw = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const frame = { event: "message", data: [] };
      for (const line of raw.split("\n")) {
        if (line.startsWith("event:")) frame.event = line.slice(6).trim();
        else if (line.startsWith("data:")) frame.data.push(line.slice(5).replace(/^ /, ""));
      }
      onFrame(raw, { event: frame.event, data: frame.data.join("\n") });
    }
  }
  return buffer;
}

// --- the live events -------------------------------------------------------------

async function connect() {
  if (state.events) state.events.abort();
  const controller = new AbortController();
  state.events = controller;
  $("connection").textContent = "connecting…";
  try {
    const response = await fetch("/dashboard/events", {
      headers: adminHeaders(),
      signal: controller.signal,
    });
    if (response.status === 401) {
      $("connection").textContent = "The server has an admin key: enter it above.";
      $("admin-key").focus();
      return;
    }
    if (!response.ok) {
      $("connection").textContent = "Events: HTTP " + response.status + " " + (await errorOf(response));
      return;
    }
    $("connection").textContent = "live";
    await readEvents(response, (raw, frame) => {
      const payload = JSON.parse(frame.data);
      if (frame.event === "hello") onHello(payload);
      else if (frame.event === "tick") onTick(payload);
    });
    $("connection").textContent = "The server closed the events; reconnecting…";
  } catch (error) {
    if (controller.signal.aborted) return;
    $("connection").textContent = "disconnected (" + error.message + "); reconnecting…";
  }
  if (state.events === controller) setTimeout(() => state.events === controller && connect(), 2000);
}

function onHello(hello) {
  state.hello = hello;
  state.entries.clear();
  const select = $("pg-model");
  const chosen = select.value;
  select.replaceChildren(...hello.models.map((name) => new Option(name, name)));
  if (hello.models.includes(chosen)) select.value = chosen;
  $("waterfall-note").hidden = hello.admin;
  $("controls-note").hidden = hello.admin;
  for (const id of ["journal-clear", "latency-apply", "faults-apply", "limits-apply", "rules-apply", "rules-revert", "reset"]) {
    $(id).disabled = !hello.admin;
  }
  $("pg-fault").disabled = !hello.fault_headers;
  $("pg-fault").title = hello.fault_headers ? "" : "Needs --enable-fault-headers";
  for (const id of ["pg-ttft", "pg-itl"]) {
    $(id).disabled = !hello.latency_headers;
    $(id).title = hello.latency_headers ? "" : "Needs --enable-latency-headers";
  }
  if (hello.admin) loadConfig();
}

function onTick(tick) {
  state.clockSkew = tick.now - Date.now() / 1000;
  const engine = tick.engine;
  $("engine-running").textContent = fmt(engine.running, 0);
  $("engine-waiting").textContent = fmt(engine.waiting, 0);
  $("engine-kv").textContent = fmt(engine.kv_cache_usage * 100, 1) + " %";
  $("engine-streams").textContent = fmt(engine.streams, 0);
  $("engine-rps").textContent = fmt(engine.requests_per_s, 1);
  $("engine-tps").textContent = fmt(engine.tokens_per_s, 0);
  drawHistogram($("hist-ttft"), tick.histograms.ttft);
  drawHistogram($("hist-itl"), tick.histograms.itl);
  if (tick.journal_ids !== null) {
    const kept = new Set(tick.journal_ids);
    for (const id of state.entries.keys()) if (!kept.has(id)) state.entries.delete(id);
    for (const entry of tick.journal) state.entries.set(entry.id, entry);
    drawWaterfall(tick.now);
  }
}

function fmt(value, digits) {
  return Number(value).toFixed(digits);
}

// --- the waterfall ---------------------------------------------------------------

function drawWaterfall(now) {
  const rows = [...state.entries.values()].sort((a, b) => a.id - b.id).slice(-ROWS);
  const body = $("waterfall").tBodies[0];
  if (!rows.length) {
    body.replaceChildren();
    return;
  }
  // One time axis for every row: from the first arrival shown to now.
  const start = Math.min(...rows.map((row) => row.time));
  const span = Math.max(now - start, 0.001);
  const pct = (seconds) => Math.min(Math.max((seconds / span) * 100, 0), 100);
  body.replaceChildren(
    ...rows.map((row) => {
      const tr = document.createElement("tr");
      tr.dataset.id = row.id;
      tr.dataset.outcome = row.outcome;
      const key = row.key_name || row.identity || "";
      const cells = [row.id, row.endpoint || row.path, row.model, key, row.rule, row.fault, row.outcome, row.status];
      for (const value of cells) {
        const td = document.createElement("td");
        td.textContent = value === null || value === undefined ? "" : String(value);
        tr.append(td);
      }
      tr.children[6].className = "outcome " + row.outcome;
      if (row.error) tr.children[6].title = row.error.message || "";
      const bar = document.createElement("td");
      bar.className = "bar-col";
      const track = document.createElement("div");
      track.className = "track";
      const running = row.outcome === "in_progress";
      const total = running ? now - row.time : (row.duration_ms || 0) / 1000;
      const first = row.ttft_ms === null ? total : Math.min(row.ttft_ms / 1000, total);
      const left = pct(row.time - start);
      const wait = document.createElement("span");
      wait.className = "wait";
      wait.style.left = left + "%";
      wait.style.width = pct(first) + "%";
      const gen = document.createElement("span");
      gen.className = "gen" + (running ? " running" : "");
      gen.style.left = left + pct(first) + "%";
      gen.style.width = pct(total - first) + "%";
      track.title = `first token ${row.ttft_ms === null ? "–" : fmt(row.ttft_ms, 0) + " ms"}, ` +
        `${running ? "running for" : "took"} ${fmt(total * 1000, 0)} ms, ${row.completion_tokens} tokens`;
      track.append(wait, gen);
      bar.append(track);
      tr.append(bar);
      return tr;
    }),
  );
}

// --- histograms: bars per bucket, from cumulative counts -------------------------

function drawHistogram(svg, buckets) {
  const NS = "http://www.w3.org/2000/svg";
  const counts = buckets.map(([, cumulative], i) => cumulative - (i ? buckets[i - 1][1] : 0));
  const total = buckets.length ? buckets[buckets.length - 1][1] : 0;
  const max = Math.max(1, ...counts);
  const [width, height, bottom] = [420, 180, 30];
  const step = width / Math.max(counts.length, 1);
  const shapes = [];
  counts.forEach((count, i) => {
    const h = ((height - bottom - 10) * count) / max;
    const rect = document.createElementNS(NS, "rect");
    rect.setAttribute("x", i * step + 1);
    rect.setAttribute("y", height - bottom - h);
    rect.setAttribute("width", step - 2);
    rect.setAttribute("height", h);
    const bound = buckets[i][0];
    const title = document.createElementNS(NS, "title");
    title.textContent = `≤ ${bound === null ? "∞" : ms(bound)}: ${count}`;
    rect.append(title);
    shapes.push(rect);
    if (i % 3 === 0) {
      const label = document.createElementNS(NS, "text");
      label.setAttribute("x", i * step + step / 2);
      label.setAttribute("y", height - bottom + 14);
      label.setAttribute("text-anchor", "middle");
      label.textContent = bound === null ? "∞" : ms(bound);
      shapes.push(label);
    }
  });
  const caption = document.createElementNS(NS, "text");
  caption.setAttribute("x", width - 4);
  caption.setAttribute("y", 14);
  caption.setAttribute("text-anchor", "end");
  caption.textContent = `${total} observed`;
  shapes.push(caption);
  svg.replaceChildren(...shapes);
}

function ms(seconds) {
  const value = seconds * 1000;
  return value >= 1000 ? value / 1000 + "s" : value + "ms";
}

// --- the playground --------------------------------------------------------------

function setupPlayground() {
  $("playground").addEventListener("submit", (event) => {
    event.preventDefault();
    sendChat();
  });
  $("pg-stop").addEventListener("click", () => state.playground && state.playground.abort());
}

async function sendChat() {
  if (state.playground) state.playground.abort();
  const controller = new AbortController();
  state.playground = controller;
  const stream = $("pg-stream").checked;
  const headers = { "Content-Type": "application/json", ...apiHeaders() };
  const fault = $("pg-fault").value.trim();
  if (fault && !$("pg-fault").disabled) headers["x-streamapi-fault"] = fault;
  if ($("pg-ttft").value && !$("pg-ttft").disabled) headers["x-streamapi-ttft-ms"] = $("pg-ttft").value;
  if ($("pg-itl").value && !$("pg-itl").disabled) headers["x-streamapi-itl-ms"] = $("pg-itl").value;
  const body = {
    model: $("pg-model").value,
    messages: [{ role: "user", content: $("pg-message").value }],
    stream,
  };
  if (stream) body.stream_options = { include_usage: true };
  const text = $("pg-text");
  const raw = $("pg-raw");
  text.textContent = "";
  raw.textContent = "";
  $("pg-note").textContent = "sending…";
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers,
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    $("pg-note").textContent = `HTTP ${response.status}` + (stream ? ", streaming…" : "");
    const type = response.headers.get("content-type") || "";
    if (!type.startsWith("text/event-stream")) {
      const answer = await response.text();
      raw.textContent = answer;
      try {
        const parsed = JSON.parse(answer);
        text.textContent = parsed.error ? "error: " + parsed.error.message : parsed.choices[0].message.content;
      } catch {
        text.textContent = answer;
      }
      $("pg-note").textContent = `HTTP ${response.status}, done`;
      return;
    }
    let sawDone = false;
    const rest = await readEvents(response, (frame, event) => {
      raw.textContent += frame + "\n\n";
      raw.scrollTop = raw.scrollHeight;
      if (event.data === "[DONE]") {
        sawDone = true;
        text.append(Object.assign(document.createElement("span"), { className: "done", textContent: "\n[DONE]" }));
        return;
      }
      try {
        const chunk = JSON.parse(event.data);
        if (chunk.error) text.append("\n[error: " + chunk.error.message + "]");
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) text.append(delta.content);
      } catch {
        text.append("\n[a frame that is not JSON]");
      }
    });
    if (rest) raw.textContent += rest;
    $("pg-note").textContent = `HTTP ${response.status}, ` + (sawDone ? "done" : "the stream ended without [DONE]");
  } catch (error) {
    $("pg-note").textContent = controller.signal.aborted ? "stopped" : "the stream broke: " + error.message;
  }
}

// --- the admin controls ----------------------------------------------------------

async function errorOf(response) {
  try {
    const body = await response.json();
    return body.error ? body.error.message : JSON.stringify(body);
  } catch {
    return response.statusText;
  }
}

async function admin(method, path, body, contentType = "application/json") {
  const headers = adminHeaders();
  if (body !== undefined) headers["Content-Type"] = contentType;
  const response = await fetch("/admin" + path, { method, headers, body });
  if (!response.ok) {
    const message = await errorOf(response);
    $("controls-error").textContent = `${method} /admin${path}: ${message}`;
    return null;
  }
  $("controls-error").textContent = "";
  return response.status === 204 ? {} : response.json();
}

async function loadConfig() {
  const config = await admin("GET", "/config");
  if (config) showConfig(config);
}

function showConfig(config) {
  const fill = (form, values) => {
    for (const [name, value] of Object.entries(values || {})) {
      const input = $(form).elements[name];
      if (input && document.activeElement !== input) input.value = value;
    }
  };
  fill("latency-form", config.latency);
  fill("faults-form", config.faults);
  fill("limits-form", config.rate_limits);
  const rules = config.rules;
  $("rules-state").textContent = `${rules.count} rule(s) in force` +
    (rules.source ? ` (from ${rules.source}${rules.path ? " " + rules.path : ""})` : "") +
    (rules.error ? `; the file's last change was not loaded: ${rules.error}` : "");
}

function formValues(form, numbers) {
  const values = {};
  for (const input of $(form).elements) {
    if (!input.name || input.value === "") continue;
    values[input.name] = numbers ? Number(input.value) : input.value;
  }
  return values;
}

function setupControls() {
  const patch = (section, form, numbers) => async (event) => {
    event.preventDefault();
    const values = formValues(form, numbers);
    if (section === "faults" && values.rate !== undefined) values.rate = Number(values.rate);
    const config = await admin("PATCH", "/config", JSON.stringify({ [section]: values }));
    if (config) showConfig(config);
  };
  $("latency-form").addEventListener("submit", patch("latency", "latency-form", true));
  $("faults-form").addEventListener("submit", patch("faults", "faults-form", false));
  $("limits-form").addEventListener("submit", patch("rate_limits", "limits-form", true));
  $("rules-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const view = await admin("PUT", "/rules", $("rules-yaml").value, "application/yaml");
    if (view) loadConfig();
  });
  $("rules-revert").addEventListener("click", async () => {
    if (await admin("DELETE", "/rules")) loadConfig();
  });
  $("journal-clear").addEventListener("click", () => admin("DELETE", "/journal"));
  $("reset").addEventListener("click", async () => {
    const config = await admin("POST", "/reset");
    if (config) showConfig(config);
  });
}

setupKeys();
setupPlayground();
setupControls();
connect();
