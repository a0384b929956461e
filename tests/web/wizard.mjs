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

const browser = await chromium.launch({
  executablePath: args.chromium || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 420, height: 900 } });
// Anything the pages' Content-Security-Policy blocked (inline script or style, a foreign source)
// shows up as a console message on every page of the context. Not the browser's own favicon
// request: on plain HTTP after set-up it is redirected to the HTTPS origin, which img-src
// 'self' of the HTTP page does not cover (the pages have no icon).
result.csp_violations = [];
context.on("console", (m) => {
  const t = m.text();
  if (/Content Security Policy/i.test(t) && !t.includes("/favicon.ico")) result.csp_violations.push(t);
});
const page = await context.newPage();
const visible = (sel, timeout = 30000) => page.locator(sel).waitFor({ state: "visible", timeout });
try {
  // 1. The box's address in a browser: the wizard, asking for the setup code.
  await page.goto(args.http + "/");
  await visible("#step-welcome");
  await shot(page, "welcome");
  step("welcome");

  await page.fill("#setup-code", "AAAA-BBBB-CCCC-DDDD");
  await page.click("#login");
  await page.waitForFunction(() => document.getElementById("error").textContent.length > 0);
  result.wrong_code_error = await page.textContent("#error");
  if (await page.locator("#step-mode").isVisible()) throw new Error("a wrong setup code was accepted");
  await shot(page, "wrong-code");

  // 2. The right code (typed in lower case, as people do).
  await page.fill("#setup-code", args.code.toLowerCase());
  await page.click("#login");
  await visible("#step-mode");
  await shot(page, "mode");
  step("mode");

  // 3. LAN mode: no DNS, no certificate; straight to the limits and the password.
  await page.check("#mode-lan");
  await page.click("#save-mode");
  await visible("#step-settings");
  await visible("#set-delete_mails_after");
  await page.fill("#set-delete_mails_after", String(args.delete_days));
  await page.fill("#admin-password", args.password);
  await page.fill("#admin-password2", args.password);
  await shot(page, "settings");
  step("settings");

  // 4. Finish: the relay restarts with the settings; the browser lands on the admin page over
  //    HTTPS with the invite QR code.
  await page.click("#finish");
  await page.waitForURL(/\/admin\?welcome/, { timeout: 60000 });
  await visible("#admin-box");
  await page.waitForFunction(() => {
    const img = document.getElementById("invite-img");
    return img && img.complete && img.naturalWidth > 0;
  });
  result.seconds_to_qr = (Date.now() - t0) / 1000;
  result.admin_url = page.url();
  await shot(page, "invite-qr");
  step("invite-qr");

  // 5. "Test my relay".
  await page.click("#run-test");
  await page.waitForFunction(() => /Works|Failed/.test(document.getElementById("test-result").textContent), null, { timeout: 30000 });
  result.test_result = await page.textContent("#test-result");
  await visible("#status tr >> nth=0");
  result.status_rows = await page.locator("#status tr").count();
  result.delete_days_shown = await page.inputValue("#set-delete_mails_after");
  await shot(page, "self-test");
  step("self-test");

  // 6. Log out, a wrong password, then the right one.
  await page.click("#logout");
  await visible("#login-box");
  await page.fill("#password", args.password + "x");
  await page.click("#login");
  await page.waitForFunction(() => document.getElementById("error").textContent.length > 0);
  result.wrong_password_error = await page.textContent("#error");
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
