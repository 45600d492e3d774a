// The results on Save/Preview: one row per batch item with its waveform, a play button and, for a repaint or
// extend result, the edited region highlighted and an A/B switch that plays the source at the same moment.
// ComfyUI's own player (the AUDIO_UI widget) stays above it; only one of them plays at a time. With Lyric
// Timestamps connected, the line being sung shows under each waveform while it plays (or where it was clicked).
import { formatTime, makeView, pxToSeconds } from "./timeline.js";
import {
  COLORS, RULER_HEIGHT, drawBackground, drawPeaks, drawPlayhead, drawRegion, drawRuler, fitCanvas,
} from "./draw.js";
import { lineAt } from "./lyrics.js";
import { mediaUrl, viewUrl } from "./media.js";

const ROW_HEIGHT = 78; // the waveform plus its time label under it
const LYRIC_HEIGHT = 18; // the line being sung, under the row

function button(text, title) {
  const b = document.createElement("button");
  b.textContent = text;
  b.title = title;
  Object.assign(b.style, { fontSize: "11px", padding: "1px 6px", cursor: "pointer", minWidth: "28px" });
  return b;
}

export class ResultsPanel {
  constructor(node, app) {
    this.node = node;
    this.app = app;
    this.rows = [];
    this.edit = null;
    this.root = document.createElement("div");
    this.root.className = "acestep-results";
    Object.assign(this.root.style, { display: "flex", flexDirection: "column", gap: "4px", width: "100%" });
    this.root.dataset.items = "0";
    this.source = new Audio();
    this.source.preload = "auto";
    this.widget = node.addDOMWidget("acestep_results", "acestep_results", this.root, {
      serialize: false,
      hideOnZoom: false,
      getMinHeight: () => this.height(),
      getMaxHeight: () => this.height(),
    });
    this.widget.serialize = false;
    new ResizeObserver(() => this.renderAll()).observe(this.root);
  }

  height() {
    if (!this.rows.length) return 0;
    const lyricRows = this.rows.filter((r) => r.lyric).length;
    return this.rows.length * (ROW_HEIGHT + 4) + lyricRows * (LYRIC_HEIGHT + 4) + 8;
  }

  nativePlayer() {
    return this.node.widgets?.find((w) => w.name === "audioUI")?.element ?? null;
  }

  onExecuted(message) {
    const files = message?.audio ?? [];
    const peaks = message?.acestep_peaks ?? [];
    this.stopAll();
    this.edit = message?.acestep_edit?.[0] ?? null;
    this.source.src = this.edit ? mediaUrl(this.app, viewUrl(this.edit.source)) : "";
    this.lyrics = message?.acestep_lyrics ?? [];
    this.root.replaceChildren();
    this.rows = files.map((file, i) => this.makeRow(file, peaks[i] ?? null, i));
    this.root.dataset.items = String(this.rows.length);
    if (this.edit) Object.assign(this.root.dataset, { regionStart: String(this.edit.start), regionEnd: String(this.edit.end) });
    const native = this.nativePlayer();
    if (native && !native.dataset.acestepHooked) {
      native.dataset.acestepHooked = "1";
      native.addEventListener("play", () => this.stopAll());
    }
    const [w, h] = this.node.computeSize?.() ?? [0, 0];
    this.node.setSize?.([Math.max(this.node.size[0], w), Math.max(this.node.size[1], h)]);
    this.node.setDirtyCanvas?.(true, true);
    requestAnimationFrame(() => this.renderAll());
  }

  makeRow(file, peaks, index) {
    const row = { file, peaks, seconds: peaks?.seconds ?? null, side: "A", at: 0 };
    row.el = document.createElement("div");
    row.el.className = "acestep-result";
    row.el.dataset.index = String(index);
    Object.assign(row.el.style, { display: "flex", gap: "4px", alignItems: "stretch", height: `${ROW_HEIGHT}px` });
    const controls = document.createElement("div");
    Object.assign(controls.style, { display: "flex", flexDirection: "column", gap: "2px", justifyContent: "center" });
    row.play = button("▶", `Play item ${index + 1}`);
    row.play.className = "acestep-play";
    row.play.addEventListener("click", (e) => { e.stopPropagation(); this.toggle(row); });
    controls.append(row.play);
    if (this.edit) {
      row.ab = button("A", "A: the result · B: the source at the same moment (click to switch)");
      row.ab.className = "acestep-ab";
      row.ab.addEventListener("click", (e) => { e.stopPropagation(); this.switchSide(row); });
      controls.append(row.ab);
    }
    row.canvas = document.createElement("canvas");
    row.canvas.className = "acestep-result-wave";
    Object.assign(row.canvas.style, { flex: "1", minHeight: "0", width: "100%", cursor: "pointer", borderRadius: "4px" });
    // The time label sits under the waveform, never over it.
    row.time = document.createElement("div");
    row.time.className = "acestep-result-time";
    Object.assign(row.time.style, { font: "10px sans-serif", lineHeight: "12px", height: "12px", opacity: "0.8",
                                    whiteSpace: "nowrap", overflow: "hidden" });
    const wave = document.createElement("div");
    Object.assign(wave.style, { flex: "1", minWidth: "0", display: "flex", flexDirection: "column", gap: "2px" });
    wave.append(row.canvas, row.time);
    row.canvas.dataset.filename = file.filename;
    if (this.edit) Object.assign(row.canvas.dataset, { regionStart: String(this.edit.start), regionEnd: String(this.edit.end) });
    row.canvas.addEventListener("pointerdown", (e) => {
      e.stopPropagation();
      e.preventDefault();
      if (row.seconds == null) return;
      const rect = row.canvas.getBoundingClientRect();
      const view = makeView(0, row.seconds, rect.width);
      this.seek(row, pxToSeconds(view, e.clientX - rect.left));
    });
    row.audio = new Audio(mediaUrl(this.app, viewUrl(file)));
    row.audio.preload = "metadata";
    row.audio.addEventListener("loadedmetadata", () => { row.seconds ??= row.audio.duration; this.render(row); });
    row.el.append(controls, wave);
    this.root.append(row.el);
    row.lines = this.lyrics[index] ?? null;
    if (row.lines) {
      row.lyric = document.createElement("div");
      row.lyric.className = "acestep-lyric";
      row.lyric.dataset.index = String(index);
      row.lyric.dataset.line = "-1";
      Object.assign(row.lyric.style, {
        height: `${LYRIC_HEIGHT}px`, lineHeight: `${LYRIC_HEIGHT}px`, fontSize: "12px", textAlign: "center",
        overflow: "hidden", whiteSpace: "nowrap", textOverflow: "ellipsis", opacity: "0.9",
      });
      this.root.append(row.lyric);
    }
    return row;
  }

  /** Result time ↔ source time: the source starts at `source_offset` in the result (extend before the start). */
  sourceTime(t) {
    return Math.max(0, t - (this.edit?.source_offset ?? 0));
  }

  element(row) {
    return row.side === "B" ? this.source : row.audio;
  }

  toggle(row) {
    const el = this.element(row);
    if (this.playing === row && !el.paused) return this.stopAll();
    this.play(row, row.at);
  }

  play(row, t) {
    this.stopAll();
    this.nativePlayer()?.pause?.();
    const el = this.element(row);
    el.currentTime = row.side === "B" ? this.sourceTime(t) : t;
    this.playing = row;
    row.play.textContent = "■";
    row.el.dataset.playing = row.side;
    el.onended = () => this.stopAll();
    // A seek while playing starts again; the earlier play() then rejects (interrupted) and must not stop this one.
    const token = (this.playToken = (this.playToken ?? 0) + 1);
    el.play().catch(() => { if (this.playToken === token) this.stopAll(); });
    const tick = () => {
      if (this.playing !== row) return;
      row.at = row.side === "B" ? el.currentTime + (this.edit?.source_offset ?? 0) : el.currentTime;
      this.render(row);
      requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  }

  seek(row, t) {
    row.at = t;
    if (this.playing === row) this.play(row, t);
    else this.render(row);
  }

  switchSide(row) {
    row.side = row.side === "A" ? "B" : "A";
    row.ab.textContent = row.side;
    row.el.dataset.side = row.side;
    if (this.playing === row) this.play(row, row.at);
    else this.render(row);
  }

  stopAll() {
    const row = this.playing;
    this.playing = null;
    for (const r of this.rows) {
      r.audio.pause();
      r.play.textContent = "▶";
      r.el.dataset.playing = "";
    }
    this.source.pause();
    if (row) this.render(row);
  }

  renderAll() {
    for (const row of this.rows) this.render(row);
  }

  /** The line being sung at the row's time (the playhead), under its waveform. */
  showLine(row) {
    if (!row.lyric) return;
    const index = lineAt(row.lines, row.at);
    if (row.lyric.dataset.line === String(index)) return;
    row.lyric.dataset.line = String(index);
    row.lyric.textContent = index >= 0 ? row.lines[index].text : "";
  }

  render(row) {
    this.showLine(row);
    const { ctx, width, height } = fitCanvas(row.canvas);
    drawBackground(ctx, width, height);
    if (row.seconds == null) return;
    const view = makeView(0, row.seconds, width);
    const top = RULER_HEIGHT;
    const h = height - RULER_HEIGHT;
    drawRuler(ctx, view, height);
    if (this.edit) drawRegion(ctx, view, this.edit.start, this.edit.end, top, h, COLORS.selection, COLORS.selectionEdge);
    if (row.peaks) drawPeaks(ctx, view, row.peaks, row.seconds, top, h, row.side === "B" ? COLORS.waveDim : COLORS.wave);
    if (row.at > 0 || this.playing === row) drawPlayhead(ctx, view, row.at, top, h);
    const side = this.edit ? (row.side === "A" ? " · A result" : " · B source") : "";
    row.time.textContent = `${formatTime(row.at, true)} / ${formatTime(row.seconds, true)}${side}`;
  }
}
