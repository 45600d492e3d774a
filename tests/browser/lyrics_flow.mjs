// Real-browser check of the lyric line in the results panel (run by tests/test_browser_lyrics.py, which starts
// ComfyUI): loads a text-to-music graph with Lyric Timestamps → Save Audio, queues it, plays the result and seeks
// to several moments by clicking the waveform; records the player's time and the line shown each time. Prints
// one JSON line of observations; the Python test asserts on them.
//   node lyrics_flow.mjs <url> <workflow.json> <screenshot dir> <tag>
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

import { queueAndShowSave } from "./save_result.mjs";

const [url, workflowPath, shotDir, tag] = process.argv.slice(2);
const require = createRequire(path.join(process.env.PLAYWRIGHT_NODE_MODULES ?? process.cwd(), "noop.js"));
const { chromium } = require("playwright-core");

const out = { console: [], samples: [] };
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1500, height: 950 } });
  page.on("console", (m) => out.console.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => out.console.push(`pageerror: ${e.message}`));
  await page.goto(url);
  await page.waitForFunction(() => window.app?.graph != null, null, { timeout: 90000 });
  out.frontend = await page.evaluate(() => window.__COMFYUI_FRONTEND_VERSION__ ?? null);
  const workflow = JSON.parse(readFileSync(workflowPath, "utf8"));
  // The frontend may still put its default graph up after `app.graph` exists: load until ours stays.
  for (let attempt = 0; attempt < 5; attempt++) {
    await page.evaluate(async (workflow) => { await app.loadGraphData(workflow); }, workflow);
    await page.waitForTimeout(1500);
    const ours = await page.evaluate(() => app.graph._nodes.some((n) => n.type === "AceStep15_LyricTimestamps"));
    if (ours) break;
  }
  out.graph = await page.evaluate(() => app.graph._nodes.map((n) => n.type));
  await queueAndShowSave(page, { lyric: true });
  const state = () => page.evaluate(() => {
    const panel = app.graph._nodes.find((n) => n.type === "AceStep15_SaveAudio").acestepResults;
    const row = panel.rows[0];
    return { current: row.audio.currentTime, at: row.at, paused: row.audio.paused, line: row.lyric.dataset.line,
             text: row.lyric.textContent, visible: row.lyric.getBoundingClientRect().height > 0 };
  });
  out.lines = await page.evaluate(() => app.graph._nodes.find((n) => n.type === "AceStep15_SaveAudio")
    .acestepResults.lyrics);
  out.rest = await state();
  const rect = await page.evaluate(() => {
    const c = app.graph._nodes.find((n) => n.type === "AceStep15_SaveAudio").acestepResults.rows[0].canvas;
    const r = c.getBoundingClientRect();
    return { x: r.x, y: r.y, width: r.width, height: r.height };
  });
  // The tiny test VAE writes 200 Hz audio, which Chromium cannot decode: the row's player gets a playable tone of
  // the same length instead (same <audio> element, same panel code), so the panel is checked against a real,
  // running player clock.
  out.media = await page.evaluate(async () => {
    const row = app.graph._nodes.find((n) => n.type === "AceStep15_SaveAudio").acestepResults.rows[0];
    const rate = 8000;
    const n = Math.round(row.seconds * rate);
    const buf = new ArrayBuffer(44 + 2 * n);
    const v = new DataView(buf);
    const text = (at, s) => { for (let i = 0; i < s.length; i++) v.setUint8(at + i, s.charCodeAt(i)); };
    text(0, "RIFF"); v.setUint32(4, 36 + 2 * n, true); text(8, "WAVEfmt "); v.setUint32(16, 16, true);
    v.setUint16(20, 1, true); v.setUint16(22, 1, true); v.setUint32(24, rate, true); v.setUint32(28, 2 * rate, true);
    v.setUint16(32, 2, true); v.setUint16(34, 16, true); text(36, "data"); v.setUint32(40, 2 * n, true);
    for (let i = 0; i < n; i++) v.setInt16(44 + 2 * i, Math.round(3000 * Math.sin(2 * Math.PI * 220 * i / rate)), true);
    const original = row.audio.src;
    row.audio.src = URL.createObjectURL(new Blob([buf], { type: "audio/wav" }));
    await new Promise((resolve) => { row.audio.onloadedmetadata = resolve; setTimeout(resolve, 5000); });
    return { original, duration: row.audio.duration, seconds: row.seconds };
  });
  await page.click(".acestep-results .acestep-play");
  for (const fraction of [0.02, 0.2, 0.5, 0.8, 0.93]) {
    await page.mouse.click(rect.x + rect.width * fraction, rect.y + rect.height * 0.6);
    await page.waitForTimeout(250);
    out.samples.push({ fraction, ...(await state()) });
    if (fraction === 0.5) await page.screenshot({ path: path.join(shotDir, `${tag}-lyrics.png`) });
  }
  await page.click(".acestep-results .acestep-play");
} catch (err) {
  out.error = String(err?.stack ?? err);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(out) + "\n");
