// Real-browser check of the pack's frontend extension, driven with playwright-core in Debian's Chromium (run by
// tests/test_browser.py, which starts ComfyUI). Loads the repaint workflow, picks a source in Load Audio, drags
// across the waveform, types in a widget, plays the selection, queues the prompt and inspects the result
// players. Prints one JSON line of observations; the Python test asserts on them.
//   node repaint_flow.mjs <url> <workflow.json> <source file name> <screenshot dir> <tag>
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

import { queueAndShowSave } from "./save_result.mjs";

const [url, workflowPath, sourceName, shotDir, tag] = process.argv.slice(2);
const require = createRequire(path.join(process.env.PLAYWRIGHT_NODE_MODULES ?? process.cwd(), "noop.js"));
const { chromium } = require("playwright-core");

const out = { console: [], requests: [] };
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required",
         "--use-fake-device-for-media-stream"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1500, height: 950 } });
  page.on("console", (m) => out.console.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => out.console.push(`pageerror: ${e.message}`));
  page.on("request", (r) => out.requests.push(r.url()));
  await page.goto(url);
  await page.waitForFunction(() => window.app?.graph != null, null, { timeout: 90000 });
  out.frontend = await page.evaluate(() => window.__COMFYUI_FRONTEND_VERSION__ ?? null);
  const shot = (name) => page.screenshot({ path: path.join(shotDir, `${tag}-${name}.png`) });

  // Load the workflow, choose the source file in Load Audio as a user's pick does (value + the combo's callback).
  const workflow = JSON.parse(readFileSync(workflowPath, "utf8"));
  out.loaded = await page.evaluate(async ({ workflow, sourceName }) => {
    await app.loadGraphData(workflow);
    const load = app.graph._nodes.find((n) => n.type === "LoadAudio");
    const combo = load.widgets.find((w) => w.name === "audio");
    combo.value = sourceName;
    combo.callback?.(sourceName);
    const repaint = app.graph._nodes.find((n) => n.type === "AceStep15_RepaintLatent");
    // Bring the Repaint node into view at 100 % zoom.
    app.canvas.ds.scale = 1;
    app.canvas.ds.offset = [-repaint.pos[0] + 420, -repaint.pos[1] + 150];
    app.canvas.setDirty(true, true);
    return { options: combo.options?.values?.includes(sourceName) ?? null };
  }, { workflow, sourceName });
  await page.waitForFunction(() => {
    const ed = app.graph._nodes.find((n) => n.acestepEditor)?.acestepEditor;
    return ed?.root.dataset.state === "ready" && ed.file !== "acestep_source.flac";
  }, null, { timeout: 30000 });
  const editorState = () => page.evaluate(() => {
    const node = app.graph._nodes.find((n) => n.type === "AceStep15_RepaintLatent");
    const ed = node.acestepEditor;
    const r = ed.canvas.getBoundingClientRect();
    const v = (name) => node.widgets.find((w) => w.name === name).value;
    return { data: { ...ed.root.dataset }, label: ed.label.textContent, file: ed.file, start: v("start"),
             end: v("end"), rect: { x: r.x, y: r.y, width: r.width, height: r.height } };
  });
  out.before = await editorState();
  await shot("1-source");

  // Drag from 25 % to 50 % of the waveform: start/end follow, snapped to the latent frame grid.
  const { rect } = out.before;
  const y = rect.y + rect.height * 0.6;
  const drag = async (fromFraction, toFraction) => {
    await page.mouse.move(rect.x + rect.width * fromFraction, y);
    await page.mouse.down();
    await page.mouse.move(rect.x + rect.width * ((fromFraction + toFraction) / 2), y, { steps: 4 });
    await page.mouse.move(rect.x + rect.width * toFraction, y, { steps: 4 });
    await page.mouse.up();
    return await editorState();
  };
  out.dragToEnd = await drag(0.6, 1.02); // past the right edge: end becomes -1 (the end of the source)
  out.dragged = await drag(0.25, 0.5);
  // Grab the end edge and pull it to 60 %.
  out.edgeMoved = await drag(0.5, 0.6);
  await shot("2-selected");

  // Typing in a widget moves the selection (the widget's own callback path).
  out.typed = await page.evaluate(() => {
    const node = app.graph._nodes.find((n) => n.type === "AceStep15_RepaintLatent");
    const w = node.widgets.find((x) => x.name === "start");
    const keep = w.value;
    w.value = 2;
    w.callback?.(2);
    const seen = node.acestepEditor.root.dataset.selStart;
    w.value = keep; // (put back without the callback: the frontend rounds typed values to the widget's 0.1 step)
    node.acestepEditor.render();
    return { seen, restored: node.acestepEditor.root.dataset.selStart };
  });

  // Play the selection in the browser (Web Audio): the playhead runs, then stop.
  await page.click(".acestep-source .acestep-play");
  await page.waitForTimeout(400);
  out.playing = await page.evaluate(() => app.graph._nodes.find((n) => n.acestepEditor).acestepEditor.root.dataset.playing);
  await page.click(".acestep-source .acestep-play");

  // What the workflow saves: widgets_values of every node (display widgets must not appear).
  out.serialized = await page.evaluate(() => Object.fromEntries(app.graph._nodes.map((n) => [n.type, n.serialize().widgets_values ?? null])));
  out.prompt = await page.evaluate(async () => (await app.graphToPrompt()).output);

  // Queue and wait for the Save node's players.
  await queueAndShowSave(page);
  out.result = await page.evaluate(() => {
    const save = app.graph._nodes.find((n) => n.type === "AceStep15_SaveAudio");
    const panel = save.acestepResults;
    const native = save.widgets.find((w) => w.name === "audioUI")?.element;
    const canvas = panel.root.querySelector("canvas.acestep-result-wave");
    const r = canvas.getBoundingClientRect();
    return { data: { ...panel.root.dataset }, canvas: { ...canvas.dataset }, nativeSrc: native?.src ?? null,
             nativeVisible: native ? native.getBoundingClientRect().height > 0 : false,
             sourceSrc: panel.source.src, rect: { x: r.x, y: r.y, width: r.width, height: r.height },
             seconds: panel.rows[0].seconds, peaks: panel.rows[0].peaks?.bins ?? 0 };
  });
  // After the run: every node's box on the graph (the texts and players a run adds must not make nodes overlap)
  // and every text the nodes show (the loader's files, the sampler's summary).
  out.afterRun = await page.evaluate(() => {
    const title = window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
    return {
      boxes: app.graph._nodes.map((n) => ({ title: n.title, bounds: [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title] })),
      texts: Array.from(document.querySelectorAll(".acestep-info, .acestep-result-time")).map((e) => e.value ?? e.textContent),
      timeLabel: (() => {
        const save = app.graph._nodes.find((n) => n.type === "AceStep15_SaveAudio");
        const row = save.acestepResults.rows[0];
        const c = row.canvas.getBoundingClientRect(), t = row.time.getBoundingClientRect();
        return { canvasBottom: c.bottom, labelTop: t.top, text: row.time.textContent };
      })(),
    };
  });
  // The highlighted region, as pixels: the canvas column in the middle of the region is highlighted (orange),
  // one well outside it is not.
  out.pixels = await page.evaluate(() => {
    const save = app.graph._nodes.find((n) => n.type === "AceStep15_SaveAudio");
    const row = save.acestepResults.rows[0];
    const c = row.canvas;
    const ctx = c.getContext("2d");
    const ratio = c.width / c.clientWidth;
    const at = (seconds) => {
      const x = Math.round((seconds / row.seconds) * c.clientWidth * ratio);
      const y = Math.round(c.height - 3 * ratio);
      return Array.from(ctx.getImageData(Math.min(c.width - 1, x), y, 1, 1).data);
    };
    const e = save.acestepResults.edit;
    return { inside: at((e.start + e.end) / 2), outside: at(e.end + (row.seconds - e.end) / 2) };
  });
  // A/B: switch to the source and play; the source element plays at the same moment.
  await page.click(".acestep-results .acestep-ab");
  await page.click(".acestep-results .acestep-play");
  await page.waitForTimeout(500);
  out.ab = await page.evaluate(() => {
    const panel = app.graph._nodes.find((n) => n.type === "AceStep15_SaveAudio").acestepResults;
    return { side: panel.rows[0].side, sourcePaused: panel.source.paused, resultPaused: panel.rows[0].audio.paused,
             sourceTime: panel.source.currentTime };
  });
  await shot("3-result");
  await page.click(".acestep-results .acestep-play");
} catch (err) {
  out.error = String(err?.stack ?? err);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(out) + "\n");
