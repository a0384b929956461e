// The invite QR code on the public and the admin page. In LAN/IP mode a code holds one new
// address and its password, so it is one person: once its account exists (somebody scanned it
// and the app logged in), the page shows a fresh code for the next person. "Next person" asks
// for a fresh one at once. A DCACCOUNT: code (domain mode) serves everybody: nothing to do.
"use strict";
(function () {
  const box = document.getElementById("invite-box");
  if (!box || !box.dataset.addr) return;
  const link = box.querySelector("a.qr");
  const note = document.getElementById("invite-used");
  const next = document.getElementById("next-person");
  let addr = box.dataset.addr;
  let tag = box.dataset.tag;
  let busy = false;

  async function fresh(message) {
    const r = await fetch("/invite.json", { cache: "no-store", credentials: "same-origin" });
    if (!r.ok) throw new Error("the relay gave no new code (" + r.status + ")");
    const j = await r.json();
    const svg = new DOMParser().parseFromString(j.svg, "image/svg+xml").documentElement;
    link.replaceChildren(document.importNode(svg, true));
    link.href = j.url;
    addr = box.dataset.addr = j.addr;
    tag = box.dataset.tag = j.tag;
    box.dataset.shown = String(Number(box.dataset.shown || "1") + 1);
    if (note) note.textContent = message;
  }

  async function check() {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const q = "addr=" + encodeURIComponent(addr) + "&tag=" + encodeURIComponent(tag);
      const r = await fetch("/invite/used?" + q, { cache: "no-store", credentials: "same-origin" });
      if (r.status === 400) {
        // A code from before a restart of the relay: still fine to use, but it cannot be
        // followed any more; show one that can.
        await fresh("");
      } else if (r.ok && (await r.json()).used) {
        await fresh("The code was just used (" + addr + " is taken). This is a new code for the next person.");
      }
    } catch (e) {
      // The relay is restarting or the network is gone: ask again at the next tick.
    } finally {
      busy = false;
    }
  }

  if (next) {
    next.hidden = false;
    next.addEventListener("click", async () => {
      next.disabled = true;
      try { await fresh("A new code for the next person."); } catch (e) { if (note) note.textContent = e.message; }
      next.disabled = false;
    });
  }
  setInterval(check, 2000);
  document.addEventListener("visibilitychange", check);
})();
