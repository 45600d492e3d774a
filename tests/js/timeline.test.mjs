import assert from "node:assert/strict";
import { test } from "node:test";

import * as L from "../../web/acestep/limits.js";
import {
  AFTER, BEFORE, clampExtend, clampRepaint, extendError, extendFromHandle, extendLayout, extendLimits,
  extendPreviewRange, extendResultRegion, extendViewRange, formatTime, framesToSeconds, hitEdge, makeView,
  moveEdge, pxToSeconds, repaintError, repaintWidgetValues, resolveRepaint, rulerTicks, secondsToFrames,
  secondsToPx, snap, snapDown, tidy,
} from "../../web/acestep/timeline.js";

test("the limits are the server's numbers", () => {
  assert.equal(L.LATENT_RATE, 25);
  assert.equal(L.FRAME_SECONDS, 0.04);
  assert.equal(L.MIN_WINDOW_SECONDS, 0.04);
  assert.equal(L.DURATION_MAX, 600);
  assert.deepEqual([L.EXTEND_SECONDS_MIN, L.EXTEND_SECONDS_MAX, L.OVERLAP_MIN, L.OVERLAP_MAX], [1, 600, 0, 60]);
  assert.equal(L.END_OF_SOURCE, -1);
});

test("seconds <-> frames at 25 frames per second, snapping to the frame grid", () => {
  assert.equal(secondsToFrames(1), 25);
  assert.equal(secondsToFrames(12.04), 301);
  assert.equal(framesToSeconds(301), 12.04);
  assert.equal(snap(12.05), 12.04); // 301.25 frames -> 301
  assert.equal(snap(12.07), 12.08);
  assert.equal(snap(-0.01), 0);
  assert.equal(snapDown(12.079), 12.04);
  assert.equal(snapDown(12.08), 12.08);
  for (let f = 0; f < 15000; f += 37) assert.equal(secondsToFrames(snap(f / 25)), f); // exact on the grid
  assert.equal(tidy(0.1 + 0.2), 0.3);
  assert.ok(Object.is(tidy(-0.001), 0));
});

test("pixels <-> seconds on a view, clamped to its width", () => {
  const view = makeView(0, 30, 600); // 20 px per second
  assert.equal(pxToSeconds(view, 200), 10);
  assert.equal(secondsToPx(view, 10), 200);
  assert.equal(pxToSeconds(view, -50), 0);
  assert.equal(pxToSeconds(view, 9999), 30);
  const before = makeView(-20, 10, 300); // Extend before the start: negative time on the left
  assert.equal(pxToSeconds(before, 0), -20);
  assert.equal(pxToSeconds(before, 200), 0);
  assert.equal(secondsToPx(before, 10), 300);
  for (const px of [0, 13, 150.5, 299]) assert.ok(Math.abs(secondsToPx(before, pxToSeconds(before, px)) - px) < 1e-9);
});

test("ruler ticks are spaced for reading and labelled m:ss", () => {
  const { step, ticks } = rulerTicks(makeView(0, 60, 600), 56);
  assert.equal(step, 10);
  assert.deepEqual(ticks.map((t) => t.label), ["0:00", "0:10", "0:20", "0:30", "0:40", "0:50", "1:00"]);
  assert.equal(rulerTicks(makeView(0, 2, 800), 56).step, 0.2);
  assert.equal(formatTime(75.5), "1:15");
  assert.equal(formatTime(75.5, true), "1:15.50");
  assert.equal(formatTime(-5), "-0:05");
});

test("repaint: -1 means the end of the source; the server's rules", () => {
  assert.deepEqual(resolveRepaint(3, -1, 30), { start: 3, end: 30 });
  assert.equal(repaintError(0, -1, 30), null);
  assert.equal(repaintError(10, 20, 30), null);
  assert.equal(repaintError(29.96, 30, 30), null); // exactly one latent frame
  assert.match(repaintError(-1, 20, 30), /start=-1/);
  assert.match(repaintError(10, 31, 30), /after the end/);
  assert.match(repaintError(10, 10.02, 30), /one latent frame/);
  assert.match(repaintError(20, 10, 30), /one latent frame/);
  assert.match(repaintError(30, -1, 30), /one latent frame/);
});

test("repaint: a drag gives a valid, snapped window; the end of the source is written as -1", () => {
  assert.deepEqual(clampRepaint(12.05, 3.01, 30), { start: 3.0, end: 12.04 }); // either order, snapped
  assert.deepEqual(clampRepaint(-4, 50, 30), { start: 0, end: 30 });
  assert.deepEqual(clampRepaint(10, 10.01, 30), { start: 10, end: 10.04 }); // grown to one frame
  assert.deepEqual(clampRepaint(30, 30, 30), { start: 29.96, end: 30 });
  // A source that is not a whole number of frames long: the end stays exactly at the source's end.
  assert.deepEqual(clampRepaint(5, 30.01, 30.017), { start: 5, end: 30.017 });
  assert.deepEqual(clampRepaint(29.99, 31, 30.017), { start: 29.96, end: 30.017 });
  assert.equal(clampRepaint(0, 1, 0.03), null); // shorter than a frame: nothing to select
  for (const [a, b, src] of [[1, 2, 3], [0, 0, 0.05], [7.77, 7.78, 9.99], [599, 700, 600]]) {
    const w = clampRepaint(a, b, src);
    const v = repaintWidgetValues(w, src);
    assert.equal(repaintError(v.start, v.end, src), null, `${a} ${b} ${src} -> ${JSON.stringify(v)}`);
  }
  assert.deepEqual(repaintWidgetValues({ start: 3, end: 30 }, 30), { start: 3, end: -1 });
  assert.deepEqual(repaintWidgetValues({ start: 3, end: 29.96 }, 30), { start: 3, end: 29.96 });
});

test("repaint: edges are grabbed within the tolerance and moved without crossing", () => {
  const view = makeView(0, 30, 300); // 10 px per second
  const w = { start: 10, end: 20 };
  assert.equal(hitEdge(view, w, 103), "start");
  assert.equal(hitEdge(view, w, 196), "end");
  assert.equal(hitEdge(view, w, 150), null);
  assert.deepEqual(moveEdge(w, "start", 4.99, 30), { start: 5, end: 20 });
  assert.deepEqual(moveEdge(w, "start", 25, 30), { start: 19.96, end: 20 });
  assert.deepEqual(moveEdge(w, "end", 2, 30), { start: 10, end: 10.04 });
  assert.deepEqual(moveEdge(w, "end", 99, 30), { start: 10, end: 30 });
});

test("extend: limits follow the source length and the 600 s result", () => {
  assert.deepEqual(extendLimits(30), { secondsMin: 1, secondsMax: 570, overlapMin: 0, overlapMax: 30 });
  assert.deepEqual(extendLimits(120), { secondsMin: 1, secondsMax: 480, overlapMin: 0, overlapMax: 60 });
  assert.equal(extendLimits(599.5), null);
  assert.equal(extendError(30, 0, 30), null);
  assert.match(extendError(0.5, 0, 30), /seconds=0.5/);
  assert.match(extendError(30, 61, 300), /overlap=61/);
  assert.match(extendError(30, 20, 10), /longer than the source/);
  assert.match(extendError(580, 0, 30), /610 s/);
  assert.deepEqual(clampExtend(1000, -3, 30), { seconds: 570, overlap: 0 });
  assert.deepEqual(clampExtend(12.33, 99, 30), { seconds: 12.32, overlap: 30 });
  assert.equal(clampExtend(10, 0, 599.5), null);
});

test("extend: layout, handles and result region in both directions", () => {
  const after = extendLayout(AFTER, 20, 5, 30);
  assert.deepEqual(after.added, [30, 50]);
  assert.deepEqual(after.overlap, [25, 30]);
  assert.equal(after.lengthHandle, 50);
  assert.equal(after.overlapHandle, 25);
  assert.equal(after.resultSeconds, 50);
  const before = extendLayout(BEFORE, 20, 5, 30);
  assert.deepEqual(before.added, [-20, 0]);
  assert.deepEqual(before.overlap, [0, 5]);
  assert.equal(before.lengthHandle, -20);
  assert.equal(before.overlapHandle, 5);

  const cur = { seconds: 20, overlap: 5 };
  assert.deepEqual(extendFromHandle(AFTER, "length", 42.01, cur, 30), { seconds: 12, overlap: 5 });
  assert.deepEqual(extendFromHandle(AFTER, "overlap", 22, cur, 30), { seconds: 20, overlap: 8 });
  assert.deepEqual(extendFromHandle(BEFORE, "length", -33.31, cur, 30), { seconds: 33.32, overlap: 5 });
  assert.deepEqual(extendFromHandle(BEFORE, "overlap", 70, cur, 30), { seconds: 20, overlap: 30 });
  assert.deepEqual(extendFromHandle(AFTER, "length", 30.2, cur, 30), { seconds: 1, overlap: 5 }); // minimum

  assert.deepEqual(extendResultRegion(AFTER, 20, 5, 30), { start: 25, end: 50, sourceOffset: 0 });
  assert.deepEqual(extendResultRegion(BEFORE, 20, 5, 30), { start: 0, end: 25, sourceOffset: 20 });
  assert.deepEqual(extendPreviewRange(AFTER, 5, 30), { start: 15, end: 30 });
  assert.deepEqual(extendPreviewRange(BEFORE, 5, 30), { start: 0, end: 15 });

  const [lo, hi] = extendViewRange(AFTER, 20, 30);
  assert.equal(lo, 0);
  assert.ok(hi > 50 && hi <= 600, String(hi));
  const [blo, bhi] = extendViewRange(BEFORE, 20, 30);
  assert.ok(blo < -20, String(blo));
  assert.equal(bhi, 30);
  assert.equal(extendViewRange(AFTER, 570, 30)[1], 600); // never beyond the longest result
});
