// The set-up wizard in a real browser (Debian's Chromium, headless, driven by playwright-core):
// the path a new owner takes from the first page to the invite QR code in LAN mode, then the
// admin page. Run by tests/test_wizard.py, which starts the relay and checks the JSON printed
// on stdout.
//
//   node wizard.mjs '{"http":"http://127.0.0.5:10080","code":"ABCD-...","password":"...","shots":"/dir"}'
import { chromium } from "playwright-core";
import { run } from "./run.mjs";
import fs from "node:fs";
import path from "node:path";

const args = JSON.parse(process.argv[2]);
const { result, t0, step, shot, nextShotPath } = run(args);
let p2 = null;

// Issue 16: every page at phone size (390×844, the size the test runs at) and at desktop size,
// each with a screenshot and the page's horizontal overflow (nothing may be wider than a phone).
const PHONE = { width: 390, height: 844 };
const DESKTOP = { width: 1280, height: 900 };
result.overflow = {};
async function both(pg, name) {
  for (const [size, vp] of [["desktop", DESKTOP], ["phone", PHONE]]) {
    await pg.setViewportSize(vp);
    await pg.waitForTimeout(50);
    result.overflow[name + "@" + size] = await pg.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    await shot(pg, name + "-" + size);
  }
}

// A "scan" by a real Delta Chat core (tests/test_wizard.py): the URL of the shown QR code goes
// to the test through a file, the address the core got comes back.
let scans = 0;
async function scan(url) {
  const n = ++scans;
  fs.writeFileSync(path.join(args.sync, `scan-${n}.url.tmp`), url);
  fs.renameSync(path.join(args.sync, `scan-${n}.url.tmp`), path.join(args.sync, `scan-${n}.url`));
  const done = path.join(args.sync, `scan-${n}.addr`);
  const until = Date.now() + 120000;
  while (!fs.existsSync(done)) {
    if (Date.now() > until) throw new Error(`scan ${n}: no answer from the Delta Chat core`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return fs.readFileSync(done, "utf8").trim();
}

// Follows the invite QR code of a page (admin or public): scanned and used, it is replaced;
// "Next person" replaces it too.
async function followInvite(pg, linkSel, label) {
  const href = () => pg.getAttribute(linkSel, "href");
  const svgOf = () => pg.locator(linkSel + " svg").innerHTML();
  const out = { note: await pg.textContent("#invite-note") };
  out.first_url = await href();
  const firstSvg = await svgOf();
  out.first_addr = await scan(out.first_url);
  const t = Date.now();
  await pg.waitForFunction(([sel, old]) => document.querySelector(sel).getAttribute("href") !== old,
    [linkSel, out.first_url], { timeout: 20000 });
  out.seconds_to_new_code = (Date.now() - t) / 1000;
  out.second_url = await href();
  out.svg_changed = (await svgOf()) !== firstSvg;
  out.used_note = await pg.textContent("#invite-used");
  await both(pg, label + "-code-replaced");
  out.second_addr = await scan(out.second_url);
  await pg.waitForFunction(([sel, old]) => document.querySelector(sel).getAttribute("href") !== old,
    [linkSel, out.second_url], { timeout: 20000 });
  out.third_url = await href();
  // Next person: a new code without anybody using the shown one.
  await pg.click("#next-person");
  await pg.waitForFunction(([sel, old]) => document.querySelector(sel).getAttribute("href") !== old,
    [linkSel, out.third_url], { timeout: 20000 });
  out.after_next_url = await href();
  return out;
}

// Before set-up is finished the test logs in with the account `relaybox dev` printed and
// expects a refusal (it writes the answer to a file).
async function scanExpectingRefusal() {
  fs.writeFileSync(path.join(args.sync, "before-set-up"), "1");
  const done = path.join(args.sync, "before-set-up.done");
  const until = Date.now() + 60000;
  while (!fs.existsSync(done)) {
    if (Date.now() > until) throw new Error("no answer from the login before set-up");
    await new Promise((r) => setTimeout(r, 100));
  }
}

const browser = await chromium.launch({
  executablePath: args.chromium || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: PHONE });
// Anything the pages' Content-Security-Policy blocked (inline script or style, a foreign source)
// shows up as a console message on every page of the context (the favicon included: every
// page names /favicon.svg, served on both ports).
result.csp_violations = [];
context.on("console", (m) => {
  const t = m.text();
  if (/Content Security Policy/i.test(t)) result.csp_violations.push(t);
});
const page = await context.newPage();
const visible = (sel, timeout = 30000) => page.locator(sel).waitFor({ state: "visible", timeout });
try {
  // 1. The box's address in a browser: the wizard, asking for the setup code.
  await page.goto(args.http + "/");
  await visible("#step-welcome");
  await shot(page, "welcome");
  step("welcome");

  result.favicon = await page.getAttribute("link[rel=icon]", "href");
  result.favicon_status = (await page.request.get(args.http + result.favicon)).status();
  await page.fill("#setup-code", "AAAA-BBBB-CCCC-DDDD");
  await page.click("#login");
  // The error is beside the button that caused it.
  await visible("#login-error");
  result.wrong_code_error = await page.textContent("#login-error");
  if (await page.locator("#step-mode").isVisible()) throw new Error("a wrong setup code was accepted");
  await shot(page, "wrong-code");

  // 2. The right code (typed in lower case, as people do).
  await page.fill("#setup-code", args.code.toLowerCase());
  await page.click("#login");
  await visible("#step-mode");
  await shot(page, "mode");
  step("mode");

  // 2b. A look at the domain mode's DNS records on a phone and a desktop (the records must not
  //     make the page wider than the screen), then back to choose LAN mode.
  await page.check("#mode-domain");
  await page.fill("#domain", "chat.example.org");
  await page.click("#save-mode");
  await visible("#dns-records tbody tr >> nth=0");
  await both(page, "dns-records");
  result.dns_rows = await page.locator("#dns-records tbody tr").count();
  await page.evaluate(() => go("mode"));
  await visible("#step-mode");

  // 3. LAN mode: no DNS, no certificate; straight to the password and the limits.
  await page.check("#mode-lan");
  await page.click("#save-mode");
  await visible("#step-settings");
  await visible("#set-delete_mails_after");
  result.steps_classes = await page.$$eval("#steps li", (l) => l.map((x) => [x.dataset.step, x.className]));
  result.password_before_limits = await page.evaluate(() =>
    Boolean(document.getElementById("admin-password").compareDocumentPosition(document.getElementById("settings-form")) & Node.DOCUMENT_POSITION_FOLLOWING));
  result.setting_labels = await page.$$eval("#settings-form label", (l) => l.map((x) => x.textContent));
  // Everything wrong at once: a size that is no size, a short password, a repetition that differs.
  await page.fill("#set-max_mailbox_size", "lots");
  await page.fill("#admin-password", "short");
  await page.fill("#admin-password2", "shorter");
  await page.click("#finish");
  await visible("#finish-error");
  result.field_errors = {};
  for (const id of ["set-max_mailbox_size", "admin-password", "admin-password2"]) {
    const sel = "#err-" + id;
    result.field_errors[id] = (await page.locator(sel).isVisible()) ? await page.textContent(sel) : null;
  }
  result.finish_error = await page.textContent("#finish-error");
  const bb = await page.locator("#finish").boundingBox();
  const eb = await page.locator("#finish-error").boundingBox();
  result.finish_error_gap_px = Math.round(eb.y - (bb.y + bb.height));
  await both(page, "settings-errors");
  if (await page.locator("#step-done").isVisible()) throw new Error("set-up finished with errors");
  await page.fill("#set-max_mailbox_size", "500");
  await page.fill("#set-delete_mails_after", String(args.delete_days));
  await page.fill("#admin-password", args.password);
  await page.fill("#admin-password2", args.password);
  await shot(page, "settings");
  step("settings");
  // Set-up is not finished: the accounts the relay printed do not work yet.
  await scanExpectingRefusal();

  // 4. Finish: the relay restarts with the settings. The last page explains the browser's
  //    coming certificate warning and shows the fingerprint; then the admin page over HTTPS
  //    with the invite QR code.
  await page.click("#finish");
  await visible("#step-done");
  result.done_text = await page.textContent("#step-done");
  result.fingerprint = await page.textContent("#done-fingerprint");
  result.url_on_done_page = page.url();
  await visible("#done-link", 60000);
  result.done_restart_text = await page.textContent("#done-restart");
  result.steps_classes_done = await page.$$eval("#steps li", (l) => l.map((x) => [x.dataset.step, x.className]));
  await both(page, "done-certificate");
  step("done");
  // The accounts work now.
  await fs.promises.writeFile(path.join(args.sync, "set-up-finished"), "1");
  await page.click("#done-link");
  await page.waitForURL(/\/admin\?welcome/, { timeout: 60000 });
  await visible("#admin-box");
  await visible("#invite-qr svg");
  result.seconds_to_qr = (Date.now() - t0) / 1000;
  result.admin_url = page.url();
  await both(page, "invite-qr");
  step("invite-qr");

  // 4b. One QR code is one person: two scans by two Delta Chat cores, a new code after each.
  result.admin_invite = await followInvite(page, "#invite-qr", "admin");
  step("admin-invite");

  // 5. "Test my relay".
  await page.click("#run-test");
  await page.waitForFunction(() => /Works|Failed/.test(document.getElementById("test-result").textContent), null, { timeout: 30000 });
  result.test_result = await page.textContent("#test-result");
  await visible("#status tr >> nth=0");
  result.status_rows = await page.locator("#status tr").count();
  result.delete_days_shown = await page.inputValue("#set-delete_mails_after");
  await shot(page, "self-test");
  step("self-test");

  // 6. Log out (no "log out" link on the login page), a wrong password, then the right one.
  await page.click("#logout");
  await visible("#login-box");
  result.logout_link_on_login_page = await page.locator("#logout").isVisible();
  await page.fill("#password", args.password + "x");
  await page.click("#login");
  await visible("#login-error");
  result.wrong_password_error = await page.textContent("#login-error");
  await both(page, "login");
  await page.fill("#password", args.password);
  await page.click("#login");
  await visible("#admin-box");
  await shot(page, "admin");
  step("admin-login");

  // 6b. The log view, and maintenance on and off again (the note says what it means).
  await page.click("#show-logs");
  await page.waitForFunction(() => document.querySelectorAll("#log-lines li").length > 0);
  result.log_lines = await page.locator("#log-lines li").count();
  result.log_text = await page.textContent("#log-lines");
  await page.check("#maintenance");
  await visible("#maintenance-note");
  result.maintenance_note = await page.textContent("#maintenance-note");
  await shot(page, "maintenance-and-log");
  await page.uncheck("#maintenance");
  await page.locator("#maintenance-note").waitFor({ state: "hidden" });
  step("log-and-maintenance");

  // 6c. The admin page's settings: a bad size is reported beside its field and the button.
  await page.fill("#set-max_mailbox_size", "lots");
  await page.click("#save-settings");
  await visible("#save-settings-error");
  result.admin_field_error = await page.textContent("#err-set-max_mailbox_size");
  result.admin_button_error = await page.textContent("#save-settings-error");
  await both(page, "admin-settings-error");
  await page.fill("#set-max_mailbox_size", "500");

  // 6d. The public page: its text, and its QR code is one person too.
  const pub = await context.newPage();
  await pub.goto(new URL(result.admin_url).origin + "/");
  await pub.locator("#invite svg").waitFor({ state: "visible" });
  result.public_rules = await pub.textContent("#limits");
  await both(pub, "public-page");
  result.public_invite = await followInvite(pub, "#invite", "public");
  await pub.close();
  step("public-invite");

  // 7. An encrypted backup, downloaded from the admin page.
  if (args.http2) {
    await page.fill("#backup-passphrase", "passphrase of the backup");
    const [download] = await Promise.all([page.waitForEvent("download"), page.click("#download-backup")]);
    const backupFile = path.join(args.shots, "..", "relaybox-backup.asc");
    await download.saveAs(backupFile);
    result.backup_name = download.suggestedFilename();
    result.backup_bytes = fs.statSync(backupFile).size;
    step("backup");

    // 8. A second, new box: the wizard's first steps, then "move a relay to this box".
    p2 = await page.context().newPage();
    await p2.goto(args.http2 + "/");
    await p2.locator("#step-welcome").waitFor({ state: "visible" });
    await p2.fill("#setup-code", args.code2);
    await p2.click("#login");
    await p2.locator("#step-mode").waitFor({ state: "visible" });
    await p2.setInputFiles("#restore-file", backupFile);
    await p2.fill("#restore-passphrase", "passphrase of the backup");
    await p2.click("#restore");
    await p2.waitForURL(/\/admin/, { timeout: 60000 });
    // The restored admin password of the old box opens the new one.
    await p2.locator("#login-box").waitFor({ state: "visible" });
    await p2.fill("#password", args.password);
    await p2.click("#login");
    await p2.locator("#admin-box").waitFor({ state: "visible" });
    await p2.locator("#status tr >> nth=0").waitFor({ state: "visible" });
    result.restored_admin_url = p2.url();
    await p2.screenshot({ path: nextShotPath("restored"), fullPage: true });
    step("restored");
  }

  // 9. The setup code is dead now: the plain-HTTP address sends to HTTPS, the API refuses it.
  const r = await page.request.post(args.http + "/api/admin/login", {
    data: { setup_code: args.code },
    maxRedirects: 0,
  });
  result.code_after_setup_status = r.status();
  result.ok = true;
} catch (e) {
  result.error = String(e && e.stack || e);
  try { await shot(page, "failure"); } catch (_) { /* the page may be gone */ }
  if (p2) {
    try {
      result.second_box = { url: p2.url(), error: await p2.textContent("#error"), restore: await p2.textContent("#restore-result") };
      await p2.screenshot({ path: path.join(args.shots, "failure-second-box.png"), fullPage: true });
    } catch (_) { /* gone */ }
  }
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(result) + "\n");
