// What every browser script of the wizard tests shares: the JSON result it prints, step timing,
// and numbered full-page screenshots into args.shots.
import fs from "node:fs";
import path from "node:path";

export function run(args) {
  const result = { ok: false, steps: [] };
  const t0 = Date.now();
  fs.mkdirSync(args.shots, { recursive: true });
  let n = 0;
  return {
    result,
    t0,
    step: (name) => result.steps.push({ name, at_ms: Date.now() - t0 }),
    shot: async (page, name) =>
      page.screenshot({ path: path.join(args.shots, `${String(++n).padStart(2, "0")}-${name}.png`), fullPage: true }),
    nextShotPath: (name) => path.join(args.shots, `${String(++n).padStart(2, "0")}-${name}.png`),
  };
}
