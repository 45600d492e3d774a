// Canvas drawing of waveforms, time rulers and regions (browser only; the geometry comes from timeline.js).
import { peakLevel, peaksToColumns } from "./peaks.js";
import { pixelsPerSecond, rulerTicks, secondsToPx } from "./timeline.js";
import { FRAME_SECONDS } from "./limits.js";

export const COLORS = {
  background: "#1b1d22",
  ruler: "#8a8f98",
  grid: "rgba(255,255,255,0.06)",
  wave: "#6fa8dc",
  waveDim: "#3f5a73",
  selection: "rgba(255,166,0,0.28)",
  selectionEdge: "#ffa600",
  added: "rgba(80,200,120,0.22)",
  addedEdge: "#50c878",
  overlap: "rgba(255,166,0,0.30)",
  playhead: "#ffffff",
  text: "#c8ccd4",
  error: "#ff6b6b",
};

export const RULER_HEIGHT = 14;

/** A canvas sized to its element's CSS box at the screen's pixel density; returns the 2D context in CSS px. */
export function fitCanvas(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(canvas.clientWidth));
  const height = Math.max(1, Math.round(canvas.clientHeight));
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  return { ctx, width, height };
}

export function drawBackground(ctx, width, height) {
  ctx.fillStyle = COLORS.background;
  ctx.fillRect(0, 0, width, height);
}

/** Time ruler along the top, and the latent frame grid once frames are at least 5 px apart. */
export function drawRuler(ctx, view, height) {
  const { ticks } = rulerTicks(view);
  ctx.font = "10px sans-serif";
  ctx.textBaseline = "top";
  ctx.fillStyle = COLORS.ruler;
  ctx.strokeStyle = COLORS.ruler;
  ctx.lineWidth = 1;
  for (const tick of ticks) {
    const x = Math.round(secondsToPx(view, tick.seconds)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(x, RULER_HEIGHT - 4);
    ctx.lineTo(x, RULER_HEIGHT);
    ctx.stroke();
    if (x < view.width - 24) ctx.fillText(tick.label, x + 2, 1);
  }
  if (pixelsPerSecond(view) * FRAME_SECONDS >= 5) {
    ctx.strokeStyle = COLORS.grid;
    const first = Math.ceil(view.lo / FRAME_SECONDS);
    for (let k = first; k * FRAME_SECONDS <= view.hi; k++) {
      const x = Math.round(secondsToPx(view, k * FRAME_SECONDS)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(x, RULER_HEIGHT);
      ctx.lineTo(x, height);
      ctx.stroke();
    }
  }
}

/** The song's peaks drawn where it lies on the view: from `offset` seconds for `seconds` seconds. */
export function drawPeaks(ctx, view, peaks, seconds, top, height, color, offset = 0) {
  const x0 = secondsToPx(view, offset);
  const x1 = secondsToPx(view, offset + seconds);
  const columns = Math.max(1, Math.round(x1 - x0));
  const { lo, hi } = peaksToColumns(peaks, columns);
  const level = Math.max(peakLevel(peaks), 1);
  const mid = top + height / 2;
  const half = height / 2 - 1;
  ctx.fillStyle = color;
  for (let c = 0; c < columns; c++) {
    const y1 = mid - (hi[c] / level) * half;
    const y2 = mid - (lo[c] / level) * half;
    ctx.fillRect(Math.floor(x0 + c), y1, 1, Math.max(1, y2 - y1));
  }
}

export function drawRegion(ctx, view, start, end, top, height, fill, edge) {
  const a = secondsToPx(view, start);
  const b = secondsToPx(view, end);
  ctx.fillStyle = fill;
  ctx.fillRect(a, top, b - a, height);
  if (edge) {
    ctx.fillStyle = edge;
    ctx.fillRect(a - 1, top, 2, height);
    ctx.fillRect(b - 1, top, 2, height);
  }
}

/** A draggable handle: a bar with a grip in the middle. */
export function drawHandle(ctx, view, seconds, top, height, color) {
  const x = secondsToPx(view, seconds);
  ctx.fillStyle = color;
  ctx.fillRect(x - 1, top, 2, height);
  ctx.fillRect(x - 4, top + height / 2 - 9, 8, 18);
}

export function drawPlayhead(ctx, view, seconds, top, height) {
  const x = Math.round(secondsToPx(view, seconds)) + 0.5;
  ctx.strokeStyle = COLORS.playhead;
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(x, top);
  ctx.lineTo(x, top + height);
  ctx.stroke();
}

export function drawMessage(ctx, width, height, text, color = COLORS.text) {
  ctx.fillStyle = color;
  ctx.font = "11px sans-serif";
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  ctx.fillText(text, width / 2, height / 2, width - 12);
  ctx.textAlign = "left";
}
