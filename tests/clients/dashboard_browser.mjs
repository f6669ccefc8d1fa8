// The /dashboard page in headless Chromium: opens it, waits until it has charted `samples`
// seconds of /stats, reads the figures it shows and saves a screenshot.
//
//   node dashboard_browser.mjs URL CHROMIUM OUT_PNG [SAMPLES]
//
// Prints one JSON line: {"samples", "connections", "deliveries", "measured", "predicted",
// "left", "polylines", "screenshot"} (or {"error"}).
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { cdp, openPage, startChromium } from "./cdp.mjs";

const [url, chromiumPath, out, wanted = "5"] = process.argv.slice(2);
const profile = fs.mkdtempSync(path.join(os.tmpdir(), "roomcast-dashboard-"));
const { proc, url: devtools } = startChromium(chromiumPath, profile, ["--window-size=1200,900"]);
let result;
try {
  const browser = await cdp(await devtools);
  const { send, evaluate } = await openPage(browser, url);
  await send("Emulation.setDeviceMetricsOverride", { width: 1200, height: 900, deviceScaleFactor: 1, mobile: false });
  const deadline = Date.now() + 30_000;
  while (Number(await evaluate("document.body.dataset.samples || 0")) < Number(wanted)) {
    if (Date.now() > deadline) throw new Error(`fewer than ${wanted} samples in 30 s: ${await evaluate("document.getElementById('status').textContent")}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  const text = (id) => evaluate(`document.getElementById('${id}').textContent`);
  const shot = await send("Page.captureScreenshot", { format: "png" });
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, Buffer.from(shot.data, "base64"));
  result = {
    samples: Number(await evaluate("document.body.dataset.samples")),
    connections: Number(await text("now-connections")),
    deliveries: Number(await text("now-deliveries")),
    measured: Number(await text("now-measured")),
    predicted: Number(await text("now-predicted")),
    left: Number(await text("now-left")),
    polylines: await evaluate("document.querySelectorAll('svg polyline').length"),
    screenshot: out,
  };
  browser.close();
} catch (e) {
  result = { error: String(e && e.stack ? e.stack : e) };
} finally {
  try { process.kill(-proc.pid, "SIGKILL"); } catch {}
  fs.rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(result));
