// The set-up wizard in DOMAIN mode in a real browser (Debian's Chromium, headless, driven by
// playwright-core): setup code, domain, DNS records and the live check (first with only the
// address records published, then with the downloaded zone file published), the certificate
// from a real ACME server (pebble), the admin password, and the admin page with the invite QR
// code on https://<domain>. Run by tests/test_wizard.py, which starts dnsmasq, pebble and the
// relay and checks the JSON printed on stdout.
//
// The DNS server is the test's: once the zone file is downloaded this script writes it to
// args.zone_out and waits for the file args.dns_ready, which the test creates after it has
// restarted dnsmasq with the zone. The domain resolves to the relay's address in the browser
// through Chromium's --host-resolver-rules.
//
//   node wizard-domain.mjs '{"http":"http://127.0.0.5:10080","code":"ABCD-...","domain":"wizard.test",
//     "relay_ip":"127.0.0.5","password":"...","shots":"/dir","zone_out":"/tmp/z","dns_ready":"/tmp/r"}'
import { chromium } from "playwright-core";
import { run } from "./run.mjs";
import fs from "node:fs";

const args = JSON.parse(process.argv[2]);
const { result, t0, step, shot } = run(args);
const sleep = (ms) => new Promise((res) => setTimeout(res, ms));

const browser = await chromium.launch({
  executablePath: args.chromium || "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-dev-shm-usage",
    // The domain and its subdomains are the relay's address, as the public DNS would say.
    `--host-resolver-rules=MAP ${args.domain} ${args.relay_ip}, MAP *.${args.domain} ${args.relay_ip}`,
  ],
});
// pebble's certificates chain to a root the browser does not know.
const page = await (await browser.newContext({ ignoreHTTPSErrors: true, acceptDownloads: true, viewport: { width: 420, height: 900 } })).newPage();
page.setDefaultTimeout(30000);
const visible = (sel, timeout = 30000) => page.locator(sel).waitFor({ state: "visible", timeout });
// The page's errors: the general one and those beside the buttons (issue 16).
const errText = () => page.$$eval("#error, .button-error", (l) => l.map((e) => e.textContent).join(" ").trim());
const cellTexts = (sel) => page.$$eval(sel, (trs) => trs.map((tr) => [...tr.cells].map((c) => c.textContent)));

// Runs the page's live DNS check and returns its summary and rows.
async function dnsCheck() {
  await page.click("#dns-check");
  // The click handler says "Checking…" at once and replaces it with the verdict.
  await page.waitForFunction(() => {
    const s = document.getElementById("dns-check-summary").textContent;
    return s.length > 0 && !s.startsWith("Checking");
  }, null, { timeout: 60000 });
  const rows = await page.$$eval("#dns-check-table tbody tr", (trs) => trs.map((tr) => ({
    name: tr.cells[0].textContent,
    type: tr.cells[1].textContent,
    state: tr.dataset.state,
    state_text: tr.cells[2].textContent,
    detail: tr.cells[3].textContent,
  })));
  const reach = await page.$$eval("#reach li", (lis) => lis.map((li) => ({ cls: li.className, text: li.textContent })));
  return { summary: await page.textContent("#dns-check-summary"), rows, reach, error: await errText() };
}

try {
  // 1. The box's address in a browser: the wizard, asking for the setup code.
  await page.goto(args.http + "/");
  await visible("#step-welcome");
  await shot(page, "welcome");
  step("welcome");
  await page.fill("#setup-code", args.code);
  await page.click("#login");
  await visible("#step-mode");
  step("mode");

  // 2. Domain mode.
  await page.check("#mode-domain");
  await visible("#domain");
  await page.fill("#domain", args.domain);
  await page.fill("#acme-email", "owner@example.org");
  await shot(page, "mode-domain");
  await page.click("#save-mode");
  await visible("#step-dns");
  await page.waitForFunction(() => document.querySelectorAll("#dns-records tbody tr").length > 0);
  result.dns_domain = await page.textContent("#dns-domain");
  result.records = (await cellTexts("#dns-records tbody tr")).map((c) => ({ name: c[0], type: c[1], value: c[2] }));
  result.ports = (await cellTexts("#ports tbody tr")).map((c) => c[0]);
  await shot(page, "dns-records");
  step("dns-records");

  // 3. The live check with only the address records published: the rest is missing.
  result.check_before = await dnsCheck();
  await shot(page, "dns-check-missing");
  step("dns-check-missing");

  // 4. The zone file through the page's link; the test publishes it and restarts dnsmasq.
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#zone-download")]);
  result.zone_name = download.suggestedFilename();
  await download.saveAs(args.zone_out + ".part");
  fs.renameSync(args.zone_out + ".part", args.zone_out);
  step("zone-downloaded");
  const deadline = Date.now() + 30000;
  while (!fs.existsSync(args.dns_ready)) {
    if (Date.now() > deadline) throw new Error("the test did not publish the zone within 30 s");
    await sleep(100);
  }

  // 5. The live check again: now every record is there.
  result.check_after = await dnsCheck();
  await shot(page, "dns-check-ok");
  step("dns-check-ok");

  // 6. Certificate: restart with the domain, then ask the CA (pebble) through the page.
  await page.click("#dns-next");
  await visible("#step-cert");
  await shot(page, "cert");
  await page.click("#apply-domain");
  await page.waitForFunction(() => /Restarted with the new domain/.test(document.getElementById("cert-status").textContent)
    || [...document.querySelectorAll("#error, .button-error")].some((e) => e.textContent.length > 0), null, { timeout: 90000 });
  result.apply_error = await errText();
  if (result.apply_error) throw new Error("apply: " + result.apply_error);
  step("domain-applied");
  await page.click("#get-cert");
  await page.waitForFunction(() => /Certificate obtained|certificate authority said/.test(document.getElementById("cert-status").textContent)
    || [...document.querySelectorAll("#error, .button-error")].some((e) => e.textContent.length > 0), null, { timeout: 150000 });
  // The button stays disabled while the page polls; wait for the final status.
  await page.waitForFunction(() => !document.getElementById("get-cert").disabled, null, { timeout: 150000 });
  result.cert_status = await page.textContent("#cert-status");
  result.cert_error = await errText();
  await shot(page, "cert-obtained");
  step("cert-obtained");
  if (!/Certificate obtained/.test(result.cert_status)) throw new Error("no certificate: " + result.cert_status + " " + result.cert_error);

  // 7. Limits and password; finish: the relay restarts, the browser lands on the admin page at
  //    https://<domain>:<port>/admin. The wizard's session cookie belongs to the box's address,
  //    not to the domain: the page asks for the new password once, then shows the invite QR code.
  await page.click("#cert-next");
  await visible("#step-settings");
  await visible("#set-delete_mails_after");
  await page.fill("#admin-password", args.password);
  await page.fill("#admin-password2", args.password);
  await shot(page, "settings");
  step("settings");
  await page.click("#finish");
  await page.waitForURL(/\/admin\?welcome/, { timeout: 90000 });
  await page.waitForFunction(() => !document.getElementById("login-box").hidden || !document.getElementById("admin-box").hidden,
    null, { timeout: 60000 });
  if (await page.locator("#login-box").isVisible()) {
    const note = page.locator("#login-welcome");
    result.login_welcome_visible = await note.isVisible();
    result.login_welcome = result.login_welcome_visible ? await note.textContent() : null;
    await shot(page, "admin-login");
    await page.fill("#password", args.password);
    await page.click("#login");
  }
  await visible("#admin-box", 60000);
  await visible("#invite-qr svg");
  result.seconds_to_qr = (Date.now() - t0) / 1000;
  result.admin_url = page.url();
  result.invite_href = await page.getAttribute("#invite-qr", "href");
  await shot(page, "invite-qr");
  step("invite-qr");

  // 8. The status table names the certificate's expiry.
  await visible("#status tr >> nth=0");
  result.status = Object.fromEntries((await cellTexts("#status tr")).map((c) => [c[0], c[1]]));
  await shot(page, "admin-status");
  step("admin-status");
  result.ok = true;
} catch (e) {
  result.error = String(e && e.stack || e);
  try {
    result.failure_page = { url: page.url(), error: await errText() };
    await shot(page, "failure");
  } catch (_) { /* the page may be gone */ }
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(result) + "\n");
