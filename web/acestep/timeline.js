// Time on a waveform: pixels <-> seconds <-> latent frames, snapping to the latent frame grid, and the rules a
// Repaint window or an Extend region must follow (the server's rules, numbers from limits.js). Pure functions:
// no DOM, unit-tested with Node's test runner (tests/js/).
import {
  DURATION_MAX, END_OF_SOURCE, EXTEND_SECONDS_MAX, EXTEND_SECONDS_MIN, FRAME_SECONDS, LATENT_RATE,
  MIN_WINDOW_SECONDS, OVERLAP_MAX, OVERLAP_MIN,
} from "./limits.js";

const EPS = 1e-9;

export function clamp(value, lo, hi) {
  return Math.min(hi, Math.max(lo, value));
}

export function secondsToFrames(seconds) {
  return Math.round(seconds * LATENT_RATE);
}

export function framesToSeconds(frames) {
  return frames / LATENT_RATE;
}

/** Seconds rounded to 1/100 s, the precision of every time the pack writes into a widget. */
export function tidy(seconds) {
  return Number(seconds.toFixed(2)) + 0; // + 0 turns -0 into 0
}

/** The nearest latent frame boundary (25 per second), as seconds. */
export function snap(seconds) {
  return tidy(framesToSeconds(secondsToFrames(seconds)));
}

/** The last frame boundary at or before `seconds` (a snapped value that never passes a limit). */
export function snapDown(seconds) {
  return tidy(framesToSeconds(Math.floor(seconds * LATENT_RATE + EPS)));
}

/** A view maps the time range [lo, hi] (seconds) onto `width` pixels. */
export function makeView(lo, hi, width) {
  return { lo, hi: Math.max(hi, lo + EPS), width: Math.max(1, width) };
}

export function pxToSeconds(view, px) {
  return view.lo + (clamp(px, 0, view.width) / view.width) * (view.hi - view.lo);
}

export function secondsToPx(view, seconds) {
  return ((seconds - view.lo) / (view.hi - view.lo)) * view.width;
}

export function pixelsPerSecond(view) {
  return view.width / (view.hi - view.lo);
}

/** Ruler ticks: a step from a fixed list giving at least `minSpacingPx` between labels. */
export function rulerTicks(view, minSpacingPx = 56) {
  const steps = [FRAME_SECONDS, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600];
  const pps = pixelsPerSecond(view);
  const step = steps.find((s) => s * pps >= minSpacingPx) ?? steps[steps.length - 1];
  const ticks = [];
  for (let k = Math.ceil(view.lo / step - EPS); k * step <= view.hi + EPS; k++) {
    const t = tidy(k * step);
    ticks.push({ seconds: t, label: formatTime(t, step < 1) });
  }
  return { step, ticks };
}

/** 75.5 -> "1:15.5"; 9 -> "0:09"; negative values (before a source) get a minus sign. */
export function formatTime(seconds, fraction = false) {
  const sign = seconds < -EPS ? "-" : "";
  const abs = Math.abs(seconds);
  const m = Math.floor((abs + EPS) / 60);
  const s = abs - m * 60;
  const sec = fraction ? s.toFixed(s < 10 ? 2 : 2).padStart(5, "0") : String(Math.floor(s + EPS)).padStart(2, "0");
  return `${sign}${m}:${sec}`;
}

// ------------------------------------------------------------------------------------------------ repaint

/** The window (seconds on the source) that Repaint's widgets describe; `end` -1 is the end of the source. */
export function resolveRepaint(start, end, sourceSeconds) {
  return { start, end: end === END_OF_SOURCE || end < 0 ? sourceSeconds : end };
}

/** Why the server would refuse this window, or null: 0 <= start < end <= source, at least one latent frame. */
export function repaintError(start, end, sourceSeconds) {
  const w = resolveRepaint(start, end, sourceSeconds);
  if (!(w.start >= 0)) return `start=${start} is below 0`;
  if (!(w.end <= sourceSeconds + 1e-6)) return `end=${end} is after the end of the source (${tidy(sourceSeconds)} s)`;
  if (!(w.end - w.start >= MIN_WINDOW_SECONDS - 1e-6)) {
    return `the window ${tidy(w.start)}–${tidy(w.end)} s is shorter than one latent frame (${MIN_WINDOW_SECONDS} s)`;
  }
  return null;
}

/**
 * The valid window nearest to [start, end] (either order), edges snapped to the frame grid except an end at the
 * source's own end (a source need not last a whole number of frames). Null when the source is shorter than
 * one frame.
 */
export function clampRepaint(start, end, sourceSeconds) {
  if (!(sourceSeconds >= MIN_WINDOW_SECONDS)) return null;
  let a = Math.min(start, end);
  let b = Math.max(start, end);
  const last = snapDown(sourceSeconds - MIN_WINDOW_SECONDS); // latest start that leaves room for one frame
  a = clamp(snap(a), 0, last);
  b = b >= sourceSeconds - FRAME_SECONDS / 2 ? sourceSeconds : snap(b);
  b = clamp(b, a + MIN_WINDOW_SECONDS, sourceSeconds);
  if (b !== sourceSeconds) b = tidy(b);
  return { start: a, end: b };
}

/** Widget values for a window: an end at the source's end is written as -1, like the node's default. */
export function repaintWidgetValues(window, sourceSeconds) {
  const atEnd = window.end >= sourceSeconds - 1e-6;
  return { start: tidy(window.start), end: atEnd ? END_OF_SOURCE : tidy(window.end) };
}

/** Which edge of `window` (if any) is under pixel `px`, within `tolerancePx`; the nearer edge wins. */
export function hitEdge(view, window, px, tolerancePx = 6) {
  const ds = Math.abs(secondsToPx(view, window.start) - px);
  const de = Math.abs(secondsToPx(view, window.end) - px);
  if (Math.min(ds, de) > tolerancePx) return null;
  return ds < de ? "start" : "end";
}

/** Moving one edge of a window to `seconds`; the other edge stays, the result is valid. */
export function moveEdge(window, edge, seconds, sourceSeconds) {
  if (edge === "start") {
    const start = Math.min(seconds, window.end - MIN_WINDOW_SECONDS);
    return clampRepaint(start, window.end, sourceSeconds);
  }
  const end = Math.max(seconds, window.start + MIN_WINDOW_SECONDS);
  return clampRepaint(window.start, end, sourceSeconds);
}

// ------------------------------------------------------------------------------------------------ extend

export const AFTER = "after the end";
export const BEFORE = "before the start";

/** How far Extend's widgets may go for a source of this length (null: the source leaves no room). */
export function extendLimits(sourceSeconds) {
  const secondsMax = Math.min(EXTEND_SECONDS_MAX, DURATION_MAX - sourceSeconds);
  if (secondsMax < EXTEND_SECONDS_MIN) return null;
  return {
    secondsMin: EXTEND_SECONDS_MIN,
    secondsMax: snapDown(secondsMax),
    overlapMin: OVERLAP_MIN,
    overlapMax: Math.min(OVERLAP_MAX, snapDown(sourceSeconds)),
  };
}

/** Why the server would refuse these Extend settings, or null. */
export function extendError(seconds, overlap, sourceSeconds) {
  if (!(seconds >= EXTEND_SECONDS_MIN && seconds <= EXTEND_SECONDS_MAX)) {
    return `seconds=${seconds} is outside ${EXTEND_SECONDS_MIN}–${EXTEND_SECONDS_MAX}`;
  }
  if (!(overlap >= OVERLAP_MIN && overlap <= OVERLAP_MAX)) return `overlap=${overlap} is outside ${OVERLAP_MIN}–${OVERLAP_MAX}`;
  if (overlap > sourceSeconds + 1e-6) return `overlap=${overlap} is longer than the source (${tidy(sourceSeconds)} s)`;
  if (sourceSeconds + seconds > DURATION_MAX + 1e-6) {
    return `the result would last ${tidy(sourceSeconds + seconds)} s; at most ${DURATION_MAX} s`;
  }
  return null;
}

/** The nearest valid (seconds, overlap), snapped to the frame grid; null when the source leaves no room. */
export function clampExtend(seconds, overlap, sourceSeconds) {
  const lim = extendLimits(sourceSeconds);
  if (!lim) return null;
  return {
    seconds: clamp(snap(seconds), lim.secondsMin, lim.secondsMax),
    overlap: clamp(snap(overlap), lim.overlapMin, lim.overlapMax),
  };
}

/**
 * Extend drawn on the source's own time axis (the source is [0, source]): the added region, the part of the
 * source the model may regenerate (overlap), and the two handles (length at the added region's outer edge,
 * overlap inside the source).
 */
export function extendLayout(direction, seconds, overlap, sourceSeconds) {
  if (direction === BEFORE) {
    return {
      source: [0, sourceSeconds], added: [-seconds, 0], overlap: [0, overlap],
      lengthHandle: -seconds, overlapHandle: overlap, resultSeconds: sourceSeconds + seconds,
    };
  }
  return {
    source: [0, sourceSeconds], added: [sourceSeconds, sourceSeconds + seconds],
    overlap: [sourceSeconds - overlap, sourceSeconds], lengthHandle: sourceSeconds + seconds,
    overlapHandle: sourceSeconds - overlap, resultSeconds: sourceSeconds + seconds,
  };
}

/** Extend's widgets from a dragged handle at `at` seconds on the source's axis (valid, snapped). */
export function extendFromHandle(direction, handle, at, current, sourceSeconds) {
  const before = direction === BEFORE;
  let { seconds, overlap } = current;
  if (handle === "length") seconds = before ? -at : at - sourceSeconds;
  else overlap = before ? at : sourceSeconds - at;
  return clampExtend(seconds, overlap, sourceSeconds);
}

/** The time range to show for Extend: the source, the added region and some room to drag the handle further. */
export function extendViewRange(direction, seconds, sourceSeconds) {
  const lim = extendLimits(sourceSeconds);
  const room = Math.max(5, 0.3 * (sourceSeconds + seconds));
  const reach = Math.min(seconds + room, lim ? lim.secondsMax : seconds);
  const extent = Math.max(seconds, reach);
  return direction === BEFORE ? [-extent, sourceSeconds] : [0, sourceSeconds + extent];
}

/** Where the added music sits in the result, and where the source starts in it (for the A/B player). */
export function extendResultRegion(direction, seconds, overlap, sourceSeconds) {
  if (direction === BEFORE) return { start: 0, end: seconds + overlap, sourceOffset: seconds };
  return { start: sourceSeconds - overlap, end: sourceSeconds + seconds, sourceOffset: 0 };
}

/** What to play for "play selection" on Extend: a stretch of the source next to the join (up to 10 s). */
export function extendPreviewRange(direction, overlap, sourceSeconds, context = 10) {
  if (direction === BEFORE) return { start: 0, end: Math.min(sourceSeconds, overlap + context) };
  return { start: Math.max(0, sourceSeconds - overlap - context), end: sourceSeconds };
}
