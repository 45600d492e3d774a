// Every bundled workflow as a new user opens it, driven with playwright-core in Debian's Chromium (run by
// tests/test_browser.py, which starts ComfyUI): load it, let the frontend lay it out, and report each node's box
// on the graph and on screen, what the frontend needs (computeSize), which advanced inputs it shows, and every
// text a node shows; screenshot it. Then make one run fail (Repaint past the source's end) and read ComfyUI's
// error toast. Prints one JSON line; the Python test asserts on it.
//   node workflows_check.mjs <url> <screenshot dir> <tag> <repaint source file> <workflow.json>...
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const [url, shotDir, tag, sourceName, ...workflowPaths] = process.argv.slice(2);
const require = createRequire(path.join(process.env.PLAYWRIGHT_NODE_MODULES ?? process.cwd(), "noop.js"));
const { chromium } = require("playwright-core");

const out = { console: [], workflows: {} };
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
let page;
try {
  page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  page.on("console", (m) => out.console.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => out.console.push(`pageerror: ${e.message}`));
  await page.goto(url);
  await page.waitForFunction(() => window.app?.graph != null && document.querySelector(".graph-canvas-panel"),
                             null, { timeout: 90000 });
  await page.waitForTimeout(1000);
  out.frontend = await page.evaluate(() => window.__COMFYUI_FRONTEND_VERSION__ ?? null);

  for (const file of workflowPaths) {
    const name = path.basename(file, ".json");
    const workflow = JSON.parse(readFileSync(file, "utf8"));
    await page.evaluate(async (w) => { await app.loadGraphData(w); }, workflow);
    await page.waitForTimeout(1200); // DOM widgets, the source waveform, a redraw or two
    out.workflows[name] = await page.evaluate(() => {
      const box = (e) => { const r = e?.getBoundingClientRect(); return r ? [r.x, r.y, r.width, r.height] : null; };
      const title = window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
      const { scale, offset } = app.canvas.ds;
      const toScreen = ([x, y]) => [(x + offset[0]) * scale, (y + offset[1]) * scale];
      const canvasRect = app.canvas.canvas.getBoundingClientRect();
      // What a widget's row shows on the canvas: its label and value, as LiteGraph draws them (Inter 12 px).
      const ctx = document.createElement("canvas").getContext("2d");
      ctx.font = app.canvas.inner_text_font ?? "normal 12px Inter";
      const nodes = app.graph._nodes.map((n) => {
        const [sx, sy] = toScreen([n.pos[0], n.pos[1] - title]);
        const widgets = (n.widgets ?? []).map((w) => {
          const element = w.element ?? null;
          const text = element ? (element.value ?? element.innerText ?? "") : null;
          const label = w.label ?? w.name;
          const value = typeof w.value === "string" || typeof w.value === "number" ? String(w.value) : null;
          const linked = (n.inputs ?? []).some((i) => i.widget?.name === w.name && i.link != null);
          return {
            name: w.name, type: w.type, advanced: !!w.options?.advanced, visible: n.isWidgetVisible?.(w) ?? true, linked,
            value, text, labelPx: ctx.measureText(label).width, valuePx: value == null ? 0 : ctx.measureText(value).width,
          };
        });
        return {
          id: n.id, type: n.type, title: n.title, pos: [...n.pos], size: [...n.size],
          needs: Array.from(n.computeSize()), bounds: [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title],
          screen: [sx + canvasRect.x, sy + canvasRect.y, n.size[0] * scale, (n.size[1] + title) * scale],
          showAdvanced: n.showAdvanced ?? null, widgets,
        };
      });
      return {
        nodes, scale, panel: box(document.querySelector(".graph-canvas-panel")),
        minimap: box(document.querySelector(".litegraph-minimap")),
        nodeTexts: Array.from(document.querySelectorAll(".dom-widget, .comfy-multiline-input"))
          .map((e) => e.value ?? e.innerText ?? ""),
      };
    });
    await page.screenshot({ path: path.join(shotDir, `${tag}-${name}.png`) });
  }

  // An error a user can act on, as ComfyUI's toast shows it: Repaint past the end of the source.
  const repaint = workflowPaths.find((p) => p.endsWith("acestep15_repaint.json"));
  await page.evaluate(async ({ workflow, sourceName }) => {
    await app.loadGraphData(workflow);
    const load = app.graph._nodes.find((n) => n.type === "LoadAudio");
    const combo = load.widgets.find((w) => w.name === "audio");
    combo.value = sourceName;
    combo.callback?.(sourceName);
    const node = app.graph._nodes.find((n) => n.type === "AceStep15_RepaintLatent");
    node.widgets.find((w) => w.name === "start").value = 400;
    node.widgets.find((w) => w.name === "end").value = -1;
    const { api } = await import("/scripts/api.js");
    window.acestepErrors = [];
    api.addEventListener("execution_error", (e) => window.acestepErrors.push(e.detail));
    await app.queuePrompt(0, 1);
  }, { workflow: { ...JSON.parse(readFileSync(repaint, "utf8")), id: "acestep15_repaint_error_check" }, sourceName });
  // The toast: 1.43 "1 ERROR" with the exception's type and message and "See Errors"; 1.58 "<node> failed" with
  // "View details". Read it, then open the details.
  await page.waitForFunction(() => window.acestepErrors.length > 0, null, { timeout: 120000 });
  out.errorEvent = await page.evaluate(() => window.acestepErrors[0]);
  const details = await page.waitForFunction(() => {
    const button = Array.from(document.querySelectorAll("button"))
      .find((b) => /^(See Errors|View details)$/.test(b.innerText.trim()));
    if (!button) return null;
    let toast = button;
    while (toast.parentElement && !/ERROR|failed/.test(toast.innerText)) toast = toast.parentElement;
    button.dataset.acestepDetails = "1";
    return toast.innerText;
  }, null, { timeout: 30000, polling: 100 });
  out.toast = await details.jsonValue();
  await page.screenshot({ path: path.join(shotDir, `${tag}-error-toast.png`) });
  await page.click("button[data-acestep-details]");
  const message = await page.waitForFunction(() => Array.from(document.querySelectorAll("body *"))
    .filter((e) => e.children.length < 6 && /repaint window/.test(e.innerText ?? ""))
    .map((e) => e.innerText).sort((a, b) => a.length - b.length)[0] ?? null, null, { timeout: 30000, polling: 200 });
  out.errorDetails = await message.jsonValue(); // the panel's message (1.58: the error report)
  await page.screenshot({ path: path.join(shotDir, `${tag}-error-details.png`) });
} catch (err) {
  out.error = String(err?.stack ?? err);
  await page?.screenshot({ path: path.join(shotDir, `${tag}-failed.png`) }).catch(() => {});
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(out) + "\n");
