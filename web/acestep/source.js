// The waveform editor on the task nodes (Repaint, Extend, Stems, Cover): the source song with a time ruler and
// the latent frame grid; drag to select Repaint's window or to size Extend's added region and overlap; play the
// selection in the browser. The node's own widgets (start/end, seconds/overlap/direction) stay the only state
// that is saved: this editor reads them and writes them, nothing else.
import { computePeaks } from "./peaks.js";
import {
  AFTER, BEFORE, clampExtend, clampRepaint, extendFromHandle, extendLayout, extendPreviewRange, extendViewRange,
  formatTime, hitEdge, makeView, moveEdge, pxToSeconds, repaintError, repaintWidgetValues, resolveRepaint,
  secondsToPx, tidy,
} from "./timeline.js";
import {
  COLORS, RULER_HEIGHT, drawBackground, drawHandle, drawMessage, drawPeaks, drawPlayhead, drawRegion, drawRuler,
  fitCanvas,
} from "./draw.js";
import { audioContext, fetchAudioBuffer, inputFileUrl } from "./media.js";

const DECODED_BINS = 4000; // peaks kept from a decoded file (the canvas picks its columns from them)
const HANDLE_TOLERANCE_PX = 8;

function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

/** The file behind the node's `audio` input when it comes from Load Audio (or any node with an `audio` file combo). */
export function upstreamAudioFile(node) {
  const slot = node.inputs?.findIndex((i) => i.name === "audio") ?? -1;
  if (slot < 0) return null;
  const source = node.getInputNode?.(slot);
  const w = source?.widgets?.find((x) => x.name === "audio");
  if (!w || typeof w.value !== "string" || !w.value || w.value === "none") return null;
  return w.value;
}

export class SourceEditor {
  constructor(node, app, mode) {
    this.node = node;
    this.app = app;
    this.mode = mode; // "repaint" | "extend" | "view"
    this.file = null; // file name the decoded buffer came from
    this.buffer = null; // AudioBuffer for playback
    this.peaks = null;
    this.seconds = null;
    this.status = "Connect Load Audio (or run once) to see the source";
    this.drag = null;
    this.frozenView = null; // the view during a drag (Extend's range does not jump under the pointer)
    this.player = null;
    this.lastKey = "";

    this.root = document.createElement("div");
    this.root.className = "acestep-source";
    Object.assign(this.root.style, { display: "flex", flexDirection: "column", gap: "2px", width: "100%" });
    this.canvas = document.createElement("canvas");
    Object.assign(this.canvas.style, { width: "100%", height: "96px", cursor: "crosshair", touchAction: "none",
                                       borderRadius: "4px" });
    const bar = document.createElement("div");
    Object.assign(bar.style, { display: "flex", gap: "6px", alignItems: "center", fontSize: "11px",
                               color: COLORS.text, fontFamily: "sans-serif", minHeight: "20px" });
    this.playButton = document.createElement("button");
    this.playButton.textContent = "▶ selection";
    this.playButton.className = "acestep-play";
    Object.assign(this.playButton.style, { fontSize: "11px", padding: "1px 6px", cursor: "pointer" });
    this.playButton.addEventListener("click", (e) => { e.stopPropagation(); this.togglePlay(); });
    this.label = document.createElement("span");
    this.label.className = "acestep-label";
    bar.append(this.playButton, this.label);
    this.root.append(this.canvas, bar);

    this.widget = node.addDOMWidget("acestep_waveform", "acestep_waveform", this.root, {
      serialize: false,
      hideOnZoom: false,
      getMinHeight: () => 124,
      getMaxHeight: () => 124,
    });
    this.widget.serialize = false; // display only: widgets_values stay exactly as before

    this.canvas.addEventListener("pointerdown", (e) => this.onPointerDown(e));
    this.canvas.addEventListener("pointermove", (e) => this.onPointerMove(e));
    this.canvas.addEventListener("pointerup", (e) => this.onPointerUp(e));
    this.canvas.addEventListener("pointercancel", (e) => this.onPointerUp(e));
    new ResizeObserver(() => this.render()).observe(this.canvas);
    for (const name of ["start", "end", "seconds", "overlap", "direction"]) this.watchWidget(name);
  }

  /** Typing in a widget moves the selection: redraw after the widget's own callback. */
  watchWidget(name) {
    const w = widget(this.node, name);
    if (!w) return;
    const callback = w.callback;
    const editor = this;
    w.callback = function () {
      const result = callback?.apply(this, arguments);
      editor.frozenView = null;
      editor.render();
      return result;
    };
  }

  // ------------------------------------------------------------------------------------------ source

  /** Called often (every node redraw): fetch and decode the Load Audio file when it changed. */
  poll() {
    const file = upstreamAudioFile(this.node);
    if (file && file !== this.file) this.load(file);
    const key = this.stateKey();
    if (key !== this.lastKey) this.render();
  }

  async load(file) {
    this.file = file;
    this.status = `Loading ${file}…`;
    this.root.dataset.state = "loading";
    this.render();
    try {
      const buffer = await fetchAudioBuffer(this.app, inputFileUrl(file));
      if (this.file !== file) return; // another file was chosen meanwhile
      const channels = Array.from({ length: buffer.numberOfChannels }, (_, c) => buffer.getChannelData(c));
      this.buffer = buffer;
      this.setSource(computePeaks(channels, DECODED_BINS), buffer.duration);
    } catch (err) {
      if (this.file !== file) return;
      this.buffer = null;
      this.status = `Could not load ${file}: ${err?.message ?? err}`;
      this.root.dataset.state = "error";
      this.render();
    }
  }

  /** Peaks from the node's last run (any AUDIO source, not only files). A decoded file is kept if present. */
  onExecuted(message) {
    const summary = message?.acestep_source?.[0];
    if (!summary || (this.buffer && upstreamAudioFile(this.node))) return;
    this.buffer = null;
    this.setSource(summary, summary.seconds);
  }

  setSource(peaks, seconds) {
    this.peaks = peaks;
    this.seconds = seconds;
    this.status = "";
    this.frozenView = null;
    this.root.dataset.state = "ready";
    this.root.dataset.seconds = String(tidy(seconds));
    this.render();
  }

  // ------------------------------------------------------------------------------------------ widgets

  values() {
    const v = (name) => widget(this.node, name)?.value;
    return { start: v("start"), end: v("end"), seconds: v("seconds"), overlap: v("overlap"), direction: v("direction") };
  }

  setValues(values) {
    let changed = false;
    for (const [name, value] of Object.entries(values)) {
      const w = widget(this.node, name);
      if (!w || w.value === value) continue;
      const old = w.value;
      w.value = value;
      this.node.onWidgetChanged?.(name, value, old, w);
      changed = true;
    }
    if (changed) this.node.setDirtyCanvas?.(true, true);
  }

  stateKey() {
    const v = this.values();
    const w = this.canvas.clientWidth;
    return JSON.stringify([v, w, this.seconds, this.status, this.player?.at]);
  }

  view() {
    const width = this.canvas.clientWidth || 300;
    if (this.frozenView) return { ...this.frozenView, width };
    if (this.mode === "extend") {
      const v = this.values();
      const [lo, hi] = extendViewRange(v.direction, v.seconds, this.seconds);
      return makeView(lo, hi, width);
    }
    return makeView(0, this.seconds, width);
  }

  // ------------------------------------------------------------------------------------------ pointer

  onPointerDown(e) {
    if (this.seconds == null || e.button !== 0) return;
    e.preventDefault();
    e.stopPropagation();
    const view = this.view();
    const px = e.offsetX * (view.width / (this.canvas.getBoundingClientRect().width || view.width));
    const at = pxToSeconds(view, px);
    if (this.mode === "repaint") {
      const v = this.values();
      const window = resolveRepaint(v.start, v.end, this.seconds);
      const edge = hitEdge(view, window, px, HANDLE_TOLERANCE_PX);
      this.drag = edge ? { kind: "edge", edge, window } : { kind: "new", anchor: at };
    } else if (this.mode === "extend") {
      const v = this.values();
      const layout = extendLayout(v.direction, v.seconds, v.overlap, this.seconds);
      const near = (s) => Math.abs(secondsToPx(view, s) - px) <= HANDLE_TOLERANCE_PX;
      let handle = near(layout.lengthHandle) ? "length" : near(layout.overlapHandle) ? "overlap" : null;
      if (!handle) handle = (v.direction === BEFORE ? at < 0 : at > this.seconds) ? "length" : "overlap";
      this.drag = { kind: "handle", handle };
      this.frozenView = view;
    } else {
      this.playRange(at, this.seconds);
      return;
    }
    this.canvas.setPointerCapture?.(e.pointerId);
    this.onPointerMove(e);
  }

  onPointerMove(e) {
    if (!this.drag) return;
    e.preventDefault();
    e.stopPropagation();
    const view = this.view();
    const px = e.offsetX * (view.width / (this.canvas.getBoundingClientRect().width || view.width));
    const at = pxToSeconds(view, px);
    if (this.drag.kind === "new") {
      const window = clampRepaint(this.drag.anchor, at, this.seconds);
      if (window) this.setValues(repaintWidgetValues(window, this.seconds));
    } else if (this.drag.kind === "edge") {
      const window = moveEdge(this.drag.window, this.drag.edge, at, this.seconds);
      if (window) this.setValues(repaintWidgetValues(window, this.seconds));
    } else if (this.drag.kind === "handle") {
      const v = this.values();
      const next = extendFromHandle(v.direction, this.drag.handle, at, v, this.seconds);
      if (next) this.setValues(next);
    }
    this.render();
  }

  onPointerUp(e) {
    if (!this.drag) return;
    e.stopPropagation();
    this.drag = null;
    this.frozenView = null;
    this.canvas.releasePointerCapture?.(e.pointerId);
    this.render();
  }

  // ------------------------------------------------------------------------------------------ playback

  selectionRange() {
    const v = this.values();
    if (this.mode === "repaint") {
      const w = resolveRepaint(v.start, v.end, this.seconds);
      return { start: Math.max(0, w.start), end: Math.min(this.seconds, w.end) };
    }
    if (this.mode === "extend") return extendPreviewRange(v.direction, v.overlap, this.seconds);
    return { start: 0, end: this.seconds };
  }

  togglePlay() {
    if (this.player) return this.stop();
    const r = this.selectionRange();
    this.playRange(r.start, r.end);
  }

  playRange(start, end) {
    this.stop();
    if (!this.buffer || !(end > start)) return;
    const ctx = audioContext();
    ctx.resume?.();
    const src = ctx.createBufferSource();
    src.buffer = this.buffer;
    src.connect(ctx.destination);
    src.start(0, start, end - start);
    const player = { src, t0: ctx.currentTime, start, end, at: start };
    src.onended = () => { if (this.player === player) this.stop(); };
    this.player = player;
    this.root.dataset.playing = "1";
    this.playButton.textContent = "■ stop";
    const tick = () => {
      if (this.player !== player) return;
      player.at = Math.min(end, start + (ctx.currentTime - player.t0));
      this.render();
      requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  }

  stop() {
    const p = this.player;
    this.player = null;
    this.root.dataset.playing = "";
    this.playButton.textContent = this.mode === "view" ? "▶ play" : "▶ selection";
    try { p?.src.stop(); } catch { /* already ended */ }
    this.render();
  }

  // ------------------------------------------------------------------------------------------ drawing

  render() {
    this.lastKey = this.stateKey();
    const { ctx, width, height } = fitCanvas(this.canvas);
    drawBackground(ctx, width, height);
    this.playButton.disabled = !this.buffer;
    this.playButton.title = this.buffer ? "" : "Playback needs the source from Load Audio";
    if (this.seconds == null) {
      drawMessage(ctx, width, height, this.status);
      this.label.textContent = "";
      return;
    }
    const view = this.view();
    const top = RULER_HEIGHT;
    const h = height - RULER_HEIGHT;
    drawRuler(ctx, view, height);
    const v = this.values();
    let label = `source ${formatTime(this.seconds, true)}`;
    if (this.mode === "repaint") {
      const error = repaintError(v.start, v.end, this.seconds);
      const w = resolveRepaint(v.start, v.end, this.seconds);
      drawPeaks(ctx, view, this.peaks, this.seconds, top, h, COLORS.waveDim);
      if (!error) {
        ctx.save();
        ctx.beginPath();
        ctx.rect(secondsToPx(view, w.start), top, secondsToPx(view, w.end) - secondsToPx(view, w.start), h);
        ctx.clip();
        drawPeaks(ctx, view, this.peaks, this.seconds, top, h, COLORS.wave);
        ctx.restore();
        drawRegion(ctx, view, w.start, w.end, top, h, COLORS.selection, COLORS.selectionEdge);
        label = `repaint ${formatTime(w.start, true)} – ${formatTime(w.end, true)} (${tidy(w.end - w.start)} s) · ${label}`;
      } else {
        label = `⚠ ${error}`;
      }
      Object.assign(this.root.dataset, { selStart: String(w.start), selEnd: String(w.end), valid: error ? "0" : "1" });
      this.label.style.color = error ? COLORS.error : COLORS.text;
    } else if (this.mode === "extend") {
      const lay = extendLayout(v.direction, v.seconds, v.overlap, this.seconds);
      drawPeaks(ctx, view, this.peaks, this.seconds, top, h, COLORS.wave);
      drawRegion(ctx, view, lay.added[0], lay.added[1], top, h, COLORS.added, null);
      drawRegion(ctx, view, lay.overlap[0], lay.overlap[1], top, h, COLORS.overlap, null);
      drawHandle(ctx, view, lay.lengthHandle, top, h, COLORS.addedEdge);
      drawHandle(ctx, view, lay.overlapHandle, top, h, COLORS.selectionEdge);
      const ok = clampExtend(v.seconds, v.overlap, this.seconds);
      label = ok ? `+${tidy(v.seconds)} s ${v.direction === BEFORE ? "before" : "after"}, overlap ${tidy(v.overlap)} s → ` +
                   `${formatTime(lay.resultSeconds, true)}` : "⚠ the source leaves no room to extend (600 s at most)";
      Object.assign(this.root.dataset, { added: String(lay.added), overlap: String(lay.overlap) });
    } else {
      drawPeaks(ctx, view, this.peaks, this.seconds, top, h, COLORS.wave);
    }
    if (this.player) drawPlayhead(ctx, view, this.player.at, top, h);
    this.label.textContent = label;
  }
}

export { AFTER, BEFORE };
