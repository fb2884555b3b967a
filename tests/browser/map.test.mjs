// Real-browser test of the live map: headless Chromium (Debian's package) driven by playwright-core.
//
//   node map.test.mjs http://127.0.0.1:PORT/[?token=…]
//
// Loads the page, waits until vehicles are drawn and the counts are non-zero, clicks a vehicle with
// a real mouse click, waits for its details and its track, and saves artifacts/map.png.
// Exits 0 on success; non-zero with a message on any failure or after 60 s.
import { chromium } from "playwright-core";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const url = process.argv[2];
if (!url) {
  console.error("usage: node map.test.mjs URL");
  process.exit(2);
}
const here = dirname(fileURLToPath(import.meta.url));
const artifacts = join(here, "artifacts");
const screenshot = join(artifacts, "map.png");
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const TIMEOUT_MS = 60_000;

let step = "starting";
const log = (msg) => console.log(`[map test] ${msg}`);
const fail = (msg) => {
  console.error(`[map test] FAILED while ${step}: ${msg}`);
  process.exit(1);
};
const overall = setTimeout(() => fail(`timed out after ${TIMEOUT_MS / 1000} s`), TIMEOUT_MS);

const userDataDir = mkdtempSync(join(tmpdir(), "kickstand-chromium-"));
process.on("exit", () => rmSync(userDataDir, { recursive: true, force: true }));
let context;
try {
  step = "launching Chromium";
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    viewport: { width: 1280, height: 800 },
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(TIMEOUT_MS);
  const pageErrors = [];
  page.on("pageerror", (err) => pageErrors.push(String(err)));
  page.on("console", (m) => { if (m.type() === "error") log(`browser console: ${m.text()}`); });

  step = `loading ${url.replace(/token=[^&]*/, "token=…")}`;
  const res = await page.goto(url, { waitUntil: "domcontentloaded" });
  if (!res || !res.ok()) fail(`GET / answered ${res ? res.status() : "nothing"}`);

  step = "waiting for vehicles to be drawn and counted";
  const num = (sel) => `Number((document.querySelector(${JSON.stringify(sel)})?.textContent || "0").replace(/[^0-9]/g, ""))`;
  const states = ["available", "on_trip", "reserved", "non_operational", "elsewhere", "removed", "unknown"];
  await page.waitForFunction(
    `window.kickstand && window.kickstand.vehicles.size > 0 && Number(document.querySelector("#map").dataset.drawn || 0) > 0
     && ${num("#count-total")} > 0 && (${states.map((s) => num("#count-" + s)).join(" + ")}) > 0`,
    null,
    { timeout: 30_000 },
  ).catch(() => fail("no vehicles were drawn or the counts stayed at 0 within 30 s"));
  const counts = await page.evaluate(`({ total: ${num("#count-total")}, drawn: Number(document.querySelector("#map").dataset.drawn),
      ${states.map((s) => `${s}: ${num("#count-" + s)}`).join(", ")} })`);
  log(`counts: ${JSON.stringify(counts)}`);
  if (pageErrors.length) fail(`page errors: ${pageErrors.join("; ")}`);

  step = "picking a vehicle";
  // The most isolated vehicle well inside the canvas, so the click cannot land on a neighbour.
  // Riding ones first, so the screenshot shows a track; they move well under a pixel a second.
  const pick = await page.evaluate(() => {
    const canvas = document.querySelector("#map");
    const w = canvas.clientWidth, h = canvas.clientHeight;
    const pts = [];
    for (const v of window.kickstand.vehicles.values()) {
      const p = window.kickstand.project(v.lat, v.lon);
      if (p.x > 40 && p.y > 40 && p.x < w - 40 && p.y < h - 40) pts.push({ id: v.vehicle_id, state: v.state, x: p.x, y: p.y });
    }
    const sample = pts.slice(0, 4000);
    let best = null;
    for (const a of sample) {
      let near = Infinity;
      for (const b of pts) if (b !== a) near = Math.min(near, Math.hypot(a.x - b.x, a.y - b.y));
      const score = near + (a.state === "on_trip" && near >= 12 ? 1e6 : 0);
      if (!best || score > best.score) best = { ...a, near, score };
    }
    const r = canvas.getBoundingClientRect();
    return best && { ...best, pageX: r.left + best.x, pageY: r.top + best.y, onScreen: pts.length };
  });
  if (!pick) fail("no vehicle is inside the visible map");
  log(`clicking ${pick.id} (${pick.state}) at ${pick.pageX.toFixed(0)},${pick.pageY.toFixed(0)}; nearest other dot ${pick.near.toFixed(1)} px; ${pick.onScreen} on screen`);

  step = `clicking ${pick.id}`;
  await page.mouse.click(pick.pageX, pick.pageY);
  await page.waitForSelector("#details[data-vehicle-id]", { timeout: 10_000 })
    .catch(() => fail("the details panel did not open (no #details[data-vehicle-id])"));
  const selected = await page.getAttribute("#details", "data-vehicle-id");
  if (pick.near >= 10 && selected !== pick.id) fail(`clicked ${pick.id} but the panel shows ${selected}`);
  log(`details open for ${selected}`);

  step = `waiting for the track of ${selected}`;
  // data-fetched is the number of points GET /api/v1/vehicles/{id}/track?format=geojson returned;
  // the text is the number drawn (those plus live positions since).
  await page.waitForSelector("#details-track-points[data-fetched]", { timeout: 15_000 })
    .catch(() => fail("the track request did not complete (no #details-track-points[data-fetched])"));
  const fetched = Number(await page.getAttribute("#details-track-points", "data-fetched"));
  const trackPoints = await page.evaluate(num("#details-track-points"));
  if (!(fetched > 0)) fail(`the track of ${selected} came back empty`);
  if (!(trackPoints > 0)) fail("#details-track-points is 0 (no track drawn)");
  const details = (await page.textContent("#details")).replace(/\s+/g, " ").trim();
  log(`track: ${fetched} points from the server, ${trackPoints} drawn; panel: ${details}`);
  for (const word of ["state", "battery", "speed", "heading", "last seen", "lat, lon"]) {
    if (!details.includes(word)) fail(`the details panel lacks "${word}"`);
  }
  if (pageErrors.length) fail(`page errors: ${pageErrors.join("; ")}`);

  step = "saving the screenshot";
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  mkdirSync(artifacts, { recursive: true });
  await page.screenshot({ path: screenshot });
  log(`screenshot: ${screenshot}`);
} catch (err) {
  fail(err && err.message ? err.message.split("\n")[0] : String(err));
} finally {
  if (context) await context.close().catch(() => {});
}
clearTimeout(overall);
log("passed");
process.exit(0);
