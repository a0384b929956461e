// relaybox set-up wizard (setup.html) and admin page (admin.html). No framework, no build step:
// every action is one call to the JSON API under /api/admin/ (relay/src/admin/api.rs).
"use strict";

const $ = (id) => document.getElementById(id);
let csrf = "";

function showError(msg) {
  $("error").textContent = msg || "";
}

// `body`: an object sent as JSON, or with `headers` given, a File or Blob sent as it is.
async function api(method, path, body, headers) {
  const opts = { method, headers: Object.assign({}, headers || {}), credentials: "same-origin" };
  if (method !== "GET") opts.headers["X-CSRF-Token"] = csrf;
  if (body !== undefined && headers) {
    opts.body = body;
  } else if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch("/api/admin/" + path, opts);
  let data = {};
  try { data = await r.json(); } catch (e) { /* a file or an empty answer */ }
  if (!r.ok) {
    const err = new Error(data.error || (r.status + " " + r.statusText));
    err.status = r.status;
    // Problems of single form fields, by setting key (the settings endpoint).
    err.fields = data.fields || null;
    throw err;
  }
  if (data.csrf) csrf = data.csrf;
  return data;
}

const sleep = (ms) => new Promise((res) => setTimeout(res, ms));

// After a restart: wait until the relay answers again (any HTTP status counts).
async function waitForRestart() {
  await sleep(800);
  for (let i = 0; i < 120; i++) {
    try { await fetch("/api/admin/state", { credentials: "same-origin" }); return; } catch (e) { await sleep(500); }
  }
  throw new Error("the relay did not come back after the restart; reload the page in a minute");
}

// The settings forms are filled and sent by script; Enter must not submit them (no inline
// handlers in the pages: the Content-Security-Policy allows no inline script).
for (const form of document.querySelectorAll("form")) {
  form.addEventListener("submit", (ev) => ev.preventDefault());
}

// The error of a button's action is shown right beside the button that caused it (a long form
// would leave an error at the top of the page out of sight): `<p id="<button>-error">`.
function buttonError(b, msg) {
  let p = $(b.id + "-error");
  if (!p) {
    p = document.createElement("p");
    p.id = b.id + "-error";
    p.className = "error button-error";
    p.setAttribute("role", "alert");
    b.after(p);
  }
  p.textContent = msg || "";
  p.hidden = !msg;
}

function button(id, fn) {
  const b = $(id);
  if (!b) return;
  b.addEventListener("click", async (ev) => {
    ev.preventDefault();
    showError("");
    buttonError(b, "");
    b.disabled = true;
    try { await fn(); } catch (e) { buttonError(b, e.message); } finally { b.disabled = false; }
  });
}

// Field errors: each beside its field (`<p id="err-<field id>">`), all at once. `errors` maps a
// field's id to its message; fields not named are cleared. Returns an error for the button
// that names the fields to fix, or null.
function fieldErrors(errors) {
  for (const p of document.querySelectorAll(".field-error")) { p.textContent = ""; p.hidden = true; }
  for (const el of document.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  const names = [];
  for (const [id, msg] of Object.entries(errors)) {
    const input = $(id);
    let p = $("err-" + id);
    if (!p && input) {
      p = document.createElement("p");
      p.id = "err-" + id;
      p.className = "error field-error";
      p.setAttribute("role", "alert");
      // Below the field's row (a field with a unit sits in a row with it).
      (input.parentElement.classList.contains("with-unit") ? input.parentElement : input).after(p);
    }
    if (p) { p.textContent = msg; p.hidden = false; }
    if (input) input.setAttribute("aria-invalid", "true");
    const label = document.querySelector("label[for='" + id + "']");
    names.push(label ? label.textContent.replace(/\s*\(.*\)$/, "") : id);
  }
  if (!names.length) return null;
  return new Error((names.length === 1 ? "Please fix: " : names.length + " fields need a fix: ") + names.join(", ") + ".");
}

// An API error with field errors (the settings endpoint) as ids of the form's fields.
function settingsFieldErrors(e) {
  const out = {};
  if (e && e.fields) for (const [k, m] of Object.entries(e.fields)) out["set-" + k] = m;
  return out;
}

function human(bytes) {
  if (bytes === null || bytes === undefined) return "—";
  const u = ["bytes", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (bytes >= 1024 && i < u.length - 1) { bytes /= 1024; i++; }
  return (i ? bytes.toFixed(1) : bytes) + " " + u[i];
}

// ---- settings form (both pages) ------------------------------------------------------------

let settingsLoaded = [];

async function loadSettings() {
  const form = $("settings-form");
  const data = await api("GET", "settings");
  settingsLoaded = data.settings;
  form.textContent = "";
  for (const s of data.settings) {
    const label = document.createElement("label");
    label.htmlFor = "set-" + s.key;
    label.textContent = s.label + (s.unit === "MB" || s.unit === "days" ? " (" + s.unit + ")" : "");
    const row = document.createElement("div");
    row.className = "with-unit";
    const input = document.createElement("input");
    input.id = "set-" + s.key;
    input.type = "text";
    if (s.kind !== "text") input.inputMode = s.kind === "mb" ? "decimal" : "numeric";
    input.value = s.shown === null ? "" : s.shown;
    input.dataset.key = s.key;
    row.append(input);
    if (s.unit) {
      const unit = document.createElement("span");
      unit.className = "unit";
      unit.textContent = s.unit;
      row.append(unit);
    }
    const help = document.createElement("p");
    help.className = "help";
    const def = s.default_shown;
    help.textContent = s.help + (def !== null && def !== "" ? " Default: " + def + (s.unit ? " " + s.unit : "") + "." : "");
    form.append(label, row, help);
  }
}

function changedSettings() {
  const out = {};
  for (const s of settingsLoaded) {
    const v = $("set-" + s.key).value.trim();
    if (String(s.shown === null ? "" : s.shown) !== v) out[s.key] = v;
  }
  return out;
}

// ---- the wizard ------------------------------------------------------------------------------

const STEPS = ["welcome", "mode", "dns", "cert", "settings"];

// Steps the chosen mode leaves out (LAN mode: no DNS, no certificate): shown as skipped, not done.
function skippedSteps() {
  return sessionStorage.getItem("relaybox-mode") === "lan" ? ["dns", "cert"] : [];
}

function go(step) {
  for (const s of STEPS.concat(["done"])) {
    if ($("step-" + s)) $("step-" + s).classList.toggle("active", s === step);
  }
  const skipped = skippedSteps();
  let passed = true;
  for (const li of document.querySelectorAll("#steps li")) {
    const cur = li.dataset.step === step || (step === "done" && li.dataset.step === "settings");
    if (cur) passed = false;
    const skip = skipped.includes(li.dataset.step);
    li.className = cur ? "current" : skip ? "skipped" : passed ? "done" : "";
    li.title = skip ? "not needed in LAN mode" : "";
  }
  sessionStorage.setItem("relaybox-step", step);
  if (step === "dns") loadDns().catch((e) => showError(e.message));
  if (step === "settings") loadSettings().catch((e) => showError(e.message));
  if (step === "cert") certStatus().catch(() => {});
}

async function loadDns() {
  const d = await api("GET", "dns");
  $("dns-domain").textContent = d.domain;
  $("dns-address-hint").textContent = d.address_records;
  const body = $("dns-records").tBodies[0];
  body.textContent = "";
  for (const r of d.records) {
    const tr = body.insertRow();
    for (const v of [r.name, r.type, r.value]) tr.insertCell().textContent = v;
    const b = document.createElement("button");
    b.className = "secondary";
    b.textContent = "copy";
    b.addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText(r.value));
    tr.insertCell().append(b);
  }
  const ports = $("ports").tBodies[0];
  ports.textContent = "";
  for (const p of d.ports) {
    const tr = ports.insertRow();
    tr.insertCell().textContent = p.port + "/" + p.proto + " (" + p.need + ")";
    tr.insertCell().textContent = p.what;
  }
  $("hairpin").textContent = d.hairpin;
  loadPortmap().catch((e) => showError(e.message));
  loadDdns().catch((e) => showError(e.message));
}

// Automatic port mapping (relay/src/portmap/): the router's answer per port, and what its
// external address means. Shown in the wizard's DNS step and on the admin page.
const PORTMAP_RESULT = {
  mapped: "mapped",
  refused_by_router: "refused by the router",
  no_router_support: "no router support",
};

function showPortmap(s) {
  const note = $("portmap-note");
  if (!note) return;
  const working = s.state === "working";
  note.textContent = working ? "Asking the router…" : s.note;
  note.className = ["cgnat", "private", "no_public_address"].includes(s.reach) ? "error" : s.reach === "public" ? "ok" : "";
  const facts = [];
  if (s.router) facts.push("Router: " + s.router);
  if (s.local_ipv4) facts.push("this box: " + s.local_ipv4);
  if (s.external_ipv4) facts.push("external address: " + s.external_ipv4);
  if (s.checked) facts.push("checked " + new Date(s.checked * 1000).toLocaleTimeString());
  $("portmap-facts").textContent = facts.join("; ");
  fillPorts($("portmap"), s.ports);
  // IPv6 needs no forward, only a way through the router's firewall (PCP pinholes).
  $("ipv6-note").textContent = s.ipv6_note || "";
  $("ipv6-note").className = s.ipv6_router ? "ok" : "";
  fillPorts($("pinholes"), s.pinholes || []);
  $("pinholes").hidden = !(s.pinholes && s.pinholes.length);
  $("portmap-retry").hidden = s.state === "off" || s.state === "nothing_to_map";
  return working;
}

function fillPorts(table, ports) {
  const body = table.tBodies[0];
  body.textContent = "";
  // TURN's relay range is a hundred UDP ports: neighbours with the same outcome share a row.
  const rows = [];
  for (const p of ports) {
    const last = rows[rows.length - 1];
    if (last && p.protocol === "udp" && last.protocol === "udp" && p.service === last.service &&
        p.result === last.result && p.detail === last.detail && p.external === last.last + 1) {
      last.last = p.external;
    } else {
      rows.push(Object.assign({ last: p.external }, p));
    }
  }
  for (const p of rows) {
    const tr = body.insertRow();
    const udp = p.protocol === "udp" ? "/udp" : "";
    tr.dataset.port = (p.last !== p.external ? p.external + "-" + p.last : p.external) + udp;
    tr.dataset.result = p.result;
    tr.insertCell().textContent = (p.last !== p.external ? p.external + "–" + p.last : p.external) + udp +
      (p.internal !== p.external ? " → " + p.internal : "");
    tr.insertCell().textContent = p.service;
    const r = tr.insertCell();
    r.textContent = PORTMAP_RESULT[p.result] + (p.detail ? ": " + p.detail : "");
    r.className = p.result === "mapped" ? "ok" : "error";
  }
}

async function loadPortmap() {
  if (!$("portmap-note")) return;
  // The first attempt runs while the relay starts; follow it until it is over.
  for (let i = 0; i < 20; i++) {
    if (!showPortmap(await api("GET", "portmap"))) return;
    await sleep(1000);
  }
}

function portmapButton() {
  button("portmap-retry", async () => {
    $("portmap-note").textContent = "Asking the router…";
    // A round already under way: follow it instead.
    const s = await api("POST", "portmap/retry");
    if (showPortmap(s)) await loadPortmap();
    // A new external address from the router makes dynamic DNS check at once.
    await followDdns(s.checked || Math.floor(Date.now() / 1000));
  });
}

// Dynamic DNS (relay/src/ddns/): the last update, the addresses published, what the server or
// provider said, and when the next check is due. In the wizard's DNS step and on the admin page.
function showDdns(d) {
  const note = $("ddns-note");
  if (!note) return;
  const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "—");
  const u = d.last_update;
  note.className = u ? (u.ok ? "ok" : "error") : "";
  if (!d.enabled) {
    note.textContent = "Off: set an update URL or an RFC 2136 server under [ddns] in the config, and the relay keeps the A/AAAA records at this box's public addresses.";
  } else if (d.note) {
    note.textContent = "Off: " + d.note + ".";
  } else if (!u) {
    note.textContent = d.last_check ? "No public address known yet: nothing to publish." : "Not checked yet.";
  } else {
    note.textContent = u.ok ? "The records were updated." : "The last update failed; it is tried again at the next check.";
  }
  const body = $("ddns").tBodies[0];
  body.textContent = "";
  if (!d.enabled || d.note) return;
  const now = [d.current.ipv4, d.current.ipv6].filter((a) => a).join(", ");
  const rows = [
    ["last-update", "Last update", u ? when(u.at) + (u.ok ? "" : " (failed)") : "none yet"],
    ["published", "Addresses published", d.last_success ? d.last_success.addresses : "none yet"],
    ["result", "Result", u ? u.result : "—"],
    ["current", "Public addresses now", now || "none known"],
    ["next-check", "Next check", when(d.next_check)],
  ];
  for (const [key, k, v] of rows) {
    const tr = body.insertRow();
    tr.dataset.key = key;
    tr.insertCell().textContent = k;
    const c = tr.insertCell();
    c.textContent = v;
    if (key === "result" && u) c.className = u.ok ? "ok" : "error";
  }
}

async function loadDdns() {
  if ($("ddns-note")) showDdns(await api("GET", "ddns"));
}

// Follows the check dynamic DNS makes after `since` (Unix time) until its update is over.
async function followDdns(since) {
  if (!$("ddns-note")) return;
  for (let i = 0; i < 15; i++) {
    const d = await api("GET", "ddns");
    showDdns(d);
    if (!d.enabled || d.note) return;
    if (d.last_check >= since && d.last_update && d.last_update.at >= d.last_check) return;
    await sleep(1000);
  }
}

async function certStatus() {
  const c = await api("GET", "cert");
  const j = c.job;
  let text = "";
  if (j.running) text = "Asking the certificate authority… (started " + new Date(j.started * 1000).toLocaleTimeString() + ")";
  else if (j.ok === true) text = "Certificate obtained. " + j.report;
  else if (j.ok === false) text = "The certificate authority said: " + j.report;
  if (c.certificate && c.certificate.days_left !== undefined) {
    text += (text ? " " : "") + "Current certificate: " + (c.certificate.self_issued ? "self-signed" : "issued") +
      ", valid for " + c.certificate.days_left + " more days.";
  }
  $("cert-status").textContent = text;
  $("cert-status").className = j.ok === false ? "error" : "";
  return j;
}

function setupPage() {
  portmapButton();
  button("login", async () => {
    await api("POST", "login", { setup_code: $("setup-code").value });
    go("mode");
  });
  $("setup-code").addEventListener("keydown", (e) => { if (e.key === "Enter") $("login").click(); });
  for (const r of document.querySelectorAll("input[name=mode]")) {
    r.addEventListener("change", () => { $("domain-fields").hidden = !$("mode-domain").checked; });
  }
  button("save-mode", async () => {
    const domain = $("mode-domain").checked;
    const body = domain
      ? { mode: "domain", domain: $("domain").value, acme_email: $("acme-email").value }
      : { mode: "lan" };
    await api("POST", "mode", body);
    sessionStorage.setItem("relaybox-mode", domain ? "domain" : "lan");
    go(domain ? "dns" : "settings");
  });
  button("restore", async () => {
    const f = $("restore-file").files[0];
    if (!f) throw new Error("choose the backup file first");
    const before = await api("GET", "state");
    // The file itself is the body (the relay writes it to disk as it arrives); the passphrase
    // goes in a header, percent-encoded.
    const r = await api("POST", "restore", f, {
      "Content-Type": "application/pgp-encrypted",
      "X-Backup-Passphrase": encodeURIComponent($("restore-passphrase").value),
    });
    $("restore-result").className = "ok";
    $("restore-result").textContent = "Restored " + r.restored.domain + ": " + r.restored.accounts +
      " addresses, " + r.restored.files + " files. Restarting…";
    await waitForRestart();
    // With the old box's admin password restored, set-up is over: the admin pages are HTTPS.
    location.href = before.https_origin + "/admin";
  });
  button("dns-check", async () => {
    $("dns-check-summary").textContent = "Checking…";
    const r = await api("POST", "dns/check");
    const body = $("dns-check-table").tBodies[0];
    body.textContent = "";
    for (const c of r.records) {
      const tr = body.insertRow();
      tr.dataset.state = c.state;
      tr.insertCell().textContent = c.name;
      tr.insertCell().textContent = c.type;
      const st = tr.insertCell();
      st.textContent = c.state + (c.need !== "required" ? " (" + c.need + ")" : "");
      st.className = c.state === "ok" ? "ok" : c.need === "required" ? "error" : "";
      tr.insertCell().textContent = c.state === "ok" ? c.found.join(", ")
        : "expected: " + c.expected + (c.found.length ? " — found: " + c.found.join(", ") : "") + (c.note ? " (" + c.note + ")" : "");
    }
    $("dns-check-summary").textContent = r.required_ok
      ? "All required records are in place (asked: " + r.resolver + ")."
      : "Some required records are missing or wrong (asked: " + r.resolver + ").";
    $("dns-check-summary").className = r.required_ok ? "ok" : "error";
    const reach = $("reach");
    reach.textContent = "";
    const item = (cls, text) => {
      const li = document.createElement("li");
      li.className = cls;
      li.textContent = text;
      reach.append(li);
    };
    item(r.addresses.state === "this_box" ? "ok" : r.addresses.state === "behind_nat" ? "" : "error",
      "Address: " + r.addresses.note);
    for (const p of r.outbound) {
      item(p.ok ? "ok" : "error", "Out to " + p.target + ": " +
        (p.ok ? "works (" + p.ms + " ms)" : "blocked or unreachable — " + p.error +
          (p.target.endsWith(":25") ? ". Mail to relays without HTTPS delivery needs port 25 out; ask your provider to open it." : "")));
    }
  });
  button("dns-next", async () => go("cert"));
  button("apply-domain", async () => {
    $("cert-status").textContent = "Restarting…";
    await api("POST", "apply");
    await waitForRestart();
    await api("GET", "state");
    $("cert-status").textContent = "Restarted with the new domain.";
  });
  button("get-cert", async () => {
    await api("POST", "cert");
    for (let i = 0; i < 600; i++) {
      const j = await certStatus();
      if (!j.running) break;
      await sleep(1000);
    }
  });
  button("cert-next", async () => go("settings"));
  button("finish", async () => {
    const pw = $("admin-password").value;
    // Everything that is wrong, at once: the password here, the settings from the relay.
    const errors = {};
    if ([...pw].length < 12) errors["admin-password"] = "needs at least 12 characters";
    if (pw !== $("admin-password2").value) errors["admin-password2"] = "the two passwords differ";
    const changed = changedSettings();
    if (Object.keys(changed).length) {
      try {
        await api("POST", "settings", changed);
        settingsLoaded = settingsLoaded.map((s) => (s.key in changed ? Object.assign({}, s, { shown: changed[s.key] }) : s));
      } catch (e) {
        if (!e.fields) throw e;
        Object.assign(errors, settingsFieldErrors(e));
      }
    }
    const err = fieldErrors(errors);
    if (err) throw err;
    const state = await api("GET", "state");
    try {
      await api("POST", "password", { password: pw, apply: true });
    } catch (e) {
      throw fieldErrors({ "admin-password": e.message }) || e;
    }
    sessionStorage.removeItem("relaybox-step");
    const admin = state.https_origin + "/admin?welcome";
    const cert = state.certificate || {};
    // Set-up is over: the admin pages live on HTTPS only. With a self-signed certificate the
    // browser is about to warn; say so first, and give the fingerprint to compare.
    if (location.protocol === "http:" && cert.self_issued !== false) {
      $("done-link").href = admin;
      $("done-origin").textContent = state.https_origin;
      $("done-fingerprint").textContent = cert.sha256 || "(unknown)";
      go("done");
      sessionStorage.removeItem("relaybox-mode");
      $("done-restart").textContent = "The relay is restarting with your settings…";
      await waitForRestart();
      $("done-restart").textContent = "The relay is ready.";
      $("done-link").hidden = false;
      return;
    }
    sessionStorage.removeItem("relaybox-mode");
    await waitForRestart();
    location.href = admin;
  });
  // A reload (or the restart) keeps the step as long as the session is valid.
  api("GET", "state").then((s) => {
    if (!s.pending) { location.href = s.https_origin + "/admin"; return; }
    go(sessionStorage.getItem("relaybox-step") || "mode");
  }).catch(() => go("welcome"));
}

// ---- the admin page ----------------------------------------------------------------------------

// relaybox's own version, and the appliance image's (/etc/os-release) when there is one.
function systemSummary(version, os) {
  if (!os || !os.IMAGE_ID) return "relaybox " + version;
  const image = os.PRETTY_NAME || os.IMAGE_ID + " " + (os.IMAGE_VERSION || os.VERSION_ID || "");
  return "relaybox " + version + "; image " + image + (os.BUILD_ID ? " (build " + os.BUILD_ID + ")" : "");
}

async function loadStatus() {
  const s = await api("GET", "status");
  const rows = [
    ["Addresses", s.accounts],
    ["Active today / 7 days / 30 days", s.active["1d"] + " / " + s.active["7d"] + " / " + s.active["30d"]],
    ["Mail stored", human(s.stored_bytes)],
    ["Waiting for other relays", s.queue_length + (s.queue_oldest ? " (oldest " + new Date(s.queue_oldest * 1000).toLocaleString() + ")" : "")],
    ["Delivered since start", s.delivered_since_start],
    ["Written to the SD card since start", human(s.written_bytes_since_start)],
    ["Written per day (SD card wear)", s.written_bytes_per_day == null ? "— (after 10 minutes)" : human(s.written_bytes_per_day)],
    ["Data partition free", s.disk ? human(s.disk.free_bytes) + " of " + human(s.disk.total_bytes) : "—"],
    ["Certificate expires in", s.certificate_expires_in_s === null ? "—" : Math.floor(s.certificate_expires_in_s / 86400) + " days"],
    ["DNS check", dnsSummary(s.last_dns_check)],
    ["Dynamic DNS", ddnsSummary(s.ddns)],
    ["Last clean-up of old mail", expirySummary(s.last_expiry, s.expiry_time_utc)],
    ["Running for", duration(s.uptime_s)],
    ["Version", systemSummary(s.version, s.os_release)],
  ];
  const body = $("status").tBodies[0];
  body.textContent = "";
  for (const [k, v] of rows) {
    const tr = body.insertRow();
    tr.insertCell().textContent = k;
    tr.insertCell().textContent = v;
  }
  $("nocreate").checked = s.nocreate;
  $("maintenance").checked = s.maintenance;
  $("maintenance-note").hidden = !s.maintenance;
  const list = $("warnings");
  list.textContent = "";
  for (const w of s.warnings.slice().reverse()) list.append(logItem(w));
  $("no-warnings").hidden = s.warnings.length > 0;
}

function duration(secs) {
  if (secs < 3600) return Math.floor(secs / 60) + " min";
  if (secs < 86400) return Math.floor(secs / 3600) + " h";
  return Math.floor(secs / 86400) + " days";
}

function dnsSummary(c) {
  if (!c) return "not run since start";
  const when = new Date(c.at * 1000).toLocaleString();
  if (c.required_ok && c.recommended_not_ok === 0) return "all records ok (" + when + ")";
  if (c.required_ok) return "required ok, " + c.recommended_not_ok + " recommended missing (" + when + ")";
  return c.required_not_ok + " required records missing or wrong (" + when + ")";
}

// The last dynamic DNS update: when, which addresses, and what the server or provider said.
function ddnsSummary(d) {
  if (!d || !d.enabled) return "off (set [ddns] in the config to keep the A/AAAA records up to date)";
  if (d.note) return "off: " + d.note;
  const u = d.last_update;
  if (!u) return d.last_check ? "no public address known yet" : "not checked yet";
  const when = new Date(u.at * 1000).toLocaleString();
  const last = (u.ok ? "updated " : "failed ") + when + " (" + u.addresses + "): " + u.result;
  const ok = d.last_success;
  return ok && !u.ok ? last + "; last success " + new Date(ok.at * 1000).toLocaleString() : last;
}

function expirySummary(e, at) {
  if (!e) return "not yet (runs daily at " + at + " UTC)";
  const when = new Date(e.at * 1000).toLocaleString();
  if (!e.ok) return "failed " + when + ": " + e.error;
  return when + ": " + e.messages_removed + " messages, " + e.accounts_removed + " addresses removed";
}

function logItem(l) {
  const li = document.createElement("li");
  li.className = "log-" + l.level;
  const t = document.createElement("time");
  t.textContent = new Date(l.at * 1000).toLocaleString() + " ";
  const b = document.createElement("b");
  b.textContent = l.level + " ";
  li.append(t, b, document.createTextNode(l.text + " (" + l.origin + ")"));
  return li;
}

async function loadLogs() {
  const j = await api("GET", "logs");
  const list = $("log-lines");
  list.textContent = "";
  for (const l of j.lines.slice().reverse()) list.append(logItem(l));
  $("log-count").textContent = j.lines.length + " latest lines, newest first";
}

async function showAdmin() {
  $("login-box").hidden = true;
  $("admin-box").hidden = false;
  $("logout").hidden = false;
  $("welcome").hidden = !location.search.includes("welcome");
  await Promise.all([loadStatus(), loadSettings()]);
  loadPortmap().catch((e) => showError(e.message));
  loadDdns().catch((e) => showError(e.message));
}

function adminPage() {
  portmapButton();
  button("login", async () => {
    await api("POST", "login", { password: $("password").value });
    await showAdmin();
  });
  $("password").addEventListener("keydown", (e) => { if (e.key === "Enter") $("login").click(); });
  $("logout").addEventListener("click", async (e) => {
    e.preventDefault();
    await api("POST", "logout").catch(() => {});
    location.reload();
  });
  $("nocreate").addEventListener("change", async () => {
    try { await api("POST", "toggles", { nocreate: $("nocreate").checked }); } catch (e) { showError(e.message); }
  });
  $("maintenance").addEventListener("change", async () => {
    try {
      const j = await api("POST", "toggles", { maintenance: $("maintenance").checked });
      $("maintenance-note").hidden = !j.maintenance;
    } catch (e) { showError(e.message); }
  });
  button("show-logs", loadLogs);
  button("download-backup", async () => {
    const r = await fetch("/api/admin/backup", {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf, "Content-Type": "application/json" },
      body: JSON.stringify({ passphrase: $("backup-passphrase").value }),
    });
    if (!r.ok) {
      let msg = r.status + " " + r.statusText;
      try { msg = (await r.json()).error || msg; } catch (e) { /* keep the status */ }
      throw new Error(msg);
    }
    const name = (r.headers.get("Content-Disposition") || "").match(/filename="([^"]+)"/);
    const url = URL.createObjectURL(await r.blob());
    const a = document.createElement("a");
    a.href = url;
    a.download = name ? name[1] : "relaybox-backup.asc";
    document.body.append(a);
    a.click();
    a.remove();
    URL.revokeObjectURL(url);
    $("backup-result").textContent = "Backup downloaded: " + a.download;
  });
  button("save-settings", async () => {
    fieldErrors({});
    const changed = changedSettings();
    if (!Object.keys(changed).length) { $("settings-result").textContent = "Nothing changed."; return; }
    try {
      await api("POST", "settings", changed);
    } catch (e) {
      throw (e.fields && fieldErrors(settingsFieldErrors(e))) || e;
    }
    await api("POST", "apply");
    $("settings-result").textContent = "Saved; restarting…";
    await waitForRestart();
    await showAdmin();
    $("settings-result").textContent = "Saved and applied.";
  });
  api("GET", "state").then(() => showAdmin()).catch(() => {
    $("login-box").hidden = false;
    // A domain-mode set-up ends on https://<domain>, a host the wizard's session cookie (made on
    // the box's LAN address) does not reach: say why the password is asked for again.
    $("login-welcome").hidden = !location.search.includes("welcome");
  });
}

function selfTest() {
  button("run-test", async () => {
    $("test-result").textContent = "Testing…";
    const r = await api("POST", "test");
    $("test-result").className = r.ok ? "ok" : "error";
    $("test-result").textContent = r.ok
      ? "Works: a test message was delivered in " + r.ms + " ms."
      : "Failed: " + r.error;
  });
}

// ---- updates panel (admin page) -------------------------------------------------------------

const UPDATE_PHASES = {
  installing: "being written",
  installed: "written; restarting to try it",
  trying: "on trial",
  committed: "installed",
  rolled_back: "rolled back",
  failed: "failed its check",
  interrupted: "interrupted",
};

function updatesPanel() {
  if (!$("update-slots")) return;
  let pendingId = "";
  const bar = $("update-progress");
  const result = $("update-result");
  const say = (cls, text) => { result.className = cls; result.textContent = text; };

  async function load() {
    const s = await api("GET", "update");
    const tb = $("update-slots").tBodies[0];
    tb.textContent = "";
    const row = (k, v) => {
      const tr = tb.insertRow();
      tr.insertCell().textContent = k;
      tr.insertCell().textContent = v;
    };
    if (!s.available) {
      row("Updates", "not available here (" + s.reason + ")");
      $("update-upload").disabled = true;
      return s;
    }
    for (const sl of s.slots) {
      row("Slot " + sl.name, (sl.version || "empty") + (sl.running ? ", running" : "") +
        (sl.committed ? ", committed" : ""));
    }
    const last = s.last || {};
    if (last.phase) {
      const to = last.to ? "version " + last.to.version + " (slot " + last.to.slot + ")" : "the last update";
      $("update-last").textContent = "Last update: " + to + " " + (UPDATE_PHASES[last.phase] || last.phase) +
        (last.finished ? " at " + last.finished : "") + (last.message ? ": " + last.message : "");
    } else {
      $("update-last").textContent = "No update installed from this page or the console yet.";
    }
    return s;
  }

  function uploadBundle(file) {
    return new Promise((resolve, reject) => {
      const x = new XMLHttpRequest();
      x.open("POST", "/api/admin/update/upload");
      x.setRequestHeader("X-CSRF-Token", csrf);
      x.upload.onprogress = (e) => {
        if (e.lengthComputable) {
          bar.value = Math.floor((100 * e.loaded) / e.total);
          say("", "Uploading… " + bar.value + "%");
        }
      };
      x.upload.onload = () => say("", "Checking the signature and contents…");
      x.onload = () => {
        let d = {};
        try { d = JSON.parse(x.responseText); } catch (e) { /* not JSON */ }
        if (x.status === 200) resolve(d);
        else reject(new Error(d.error || x.status + " " + x.statusText));
      };
      x.onerror = () => reject(new Error("the upload failed (connection lost)"));
      x.send(file);
    });
  }

  // The install runs in the root update agent; its progress comes through progress.json.
  async function follow() {
    for (let i = 0; i < 3600; i++) {
      let s;
      try { s = await api("GET", "update"); } catch (e) { s = null; }
      if (s === null) {
        say("", "Restarting into the new version…");
        await waitForRestart();
        await sleep(5000);
        const after = await load();
        say("ok", "Back: running slot " + after.running + ". " + $("update-last").textContent);
        return;
      }
      const p = s.progress || {};
      if (p.step === "error") { say("error", "Not installed: " + p.message); bar.hidden = true; return; }
      if (p.step === "rebooting") { bar.value = 100; say("", p.message || "Restarting…"); }
      else if (p.step) { bar.value = p.percent || 0; say("", "Update: " + p.step + " " + (p.percent || 0) + "%"); }
      await sleep(1000);
    }
  }

  button("update-upload", async () => {
    const f = $("update-file").files[0];
    if (!f) throw new Error("choose an update bundle first");
    $("update-install").hidden = true;
    bar.hidden = false;
    bar.value = 0;
    try {
      const r = await uploadBundle(f);
      pendingId = r.id;
      say("ok", "Bundle of relaybox " + r.manifest.version + " (build " + r.manifest.build_id +
        "), signed and intact.");
      $("update-install").textContent = "Install version " + r.manifest.version + " and restart";
      $("update-install").hidden = false;
    } catch (e) {
      say("error", e.message);
    } finally {
      bar.hidden = true;
    }
  });
  button("update-install", async () => {
    if (!pendingId) return;
    $("update-install").hidden = true;
    bar.hidden = false;
    bar.value = 0;
    await api("POST", "update/install", { id: pendingId });
    pendingId = "";
    await follow();
  });
  load().catch(() => {});
  // The panel is filled once the admin box shows (after logging in).
  new MutationObserver(() => {
    if (!$("admin-box").hidden) load().catch(() => {});
  }).observe($("admin-box"), { attributes: true, attributeFilter: ["hidden"] });
}

if (document.body.dataset.page === "setup") setupPage();
if (document.body.dataset.page === "admin") { adminPage(); selfTest(); }
if (document.body.dataset.page === "admin") updatesPanel();
