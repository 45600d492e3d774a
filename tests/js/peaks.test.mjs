import assert from "node:assert/strict";
import { test } from "node:test";

import { PEAK_SCALE } from "../../web/acestep/limits.js";
import { computePeaks, peakLevel, peaksToColumns, quantize, sliceStart } from "../../web/acestep/peaks.js";

// Reference: the plain definition, slice by slice, written independently of peaks.js's loops.
function referencePeaks(channels, bins) {
  const samples = channels[0].length;
  const n = Math.min(bins, samples);
  const out = { bins: n, min: [], max: [] };
  for (let i = 0; i < n; i++) {
    const values = [];
    const from = Math.floor((i * samples) / n);
    const to = Math.floor(((i + 1) * samples) / n);
    for (const ch of channels) values.push(...ch.slice(from, to));
    const r = (v) => Math.max(-127, Math.min(127, Math.floor(v * 127 + 0.5)));
    out.min.push(r(Math.min(...values)));
    out.max.push(r(Math.max(...values)));
  }
  return out;
}

test("slices cover every sample once and differ in length by at most one", () => {
  for (const [samples, bins] of [[10, 3], [1000, 7], [48000 * 3 + 17, 1000], [5, 5]]) {
    const lengths = [];
    for (let i = 0; i < bins; i++) lengths.push(sliceStart(i + 1, samples, bins) - sliceStart(i, samples, bins));
    assert.equal(lengths.reduce((a, b) => a + b, 0), samples);
    assert.ok(Math.max(...lengths) - Math.min(...lengths) <= 1, `${samples}/${bins}: ${lengths}`);
    assert.ok(Math.min(...lengths) >= 1);
  }
});

test("quantize rounds half up, clamps and maps NaN to 0", () => {
  assert.equal(quantize(1), PEAK_SCALE);
  assert.equal(quantize(-1), -PEAK_SCALE);
  assert.equal(quantize(2.5), PEAK_SCALE);
  assert.equal(quantize(-7), -PEAK_SCALE);
  assert.equal(quantize(0), 0);
  assert.equal(quantize(0.5 / 127), 1); // exactly half a step rounds up
  assert.equal(quantize(-0.5 / 127), 0);
  assert.equal(quantize(NaN), 0);
});

test("peaks match the plain definition on a two-channel signal", () => {
  let seed = 12345;
  const rand = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648) * 2 - 1;
  const left = Float32Array.from({ length: 4801 }, () => rand() * 0.8);
  const right = Float32Array.from({ length: 4801 }, (_, i) => Math.sin(i / 30) * 0.3);
  for (const bins of [1, 7, 100, 4801, 9000]) {
    assert.deepEqual(computePeaks([left, right], bins), referencePeaks([left, right], bins), `bins=${bins}`);
  }
});

test("a sine's peaks reach its amplitude; silence and empty input", () => {
  const sine = Float32Array.from({ length: 48000 }, (_, i) => 0.5 * Math.sin((2 * Math.PI * 440 * i) / 48000));
  const p = computePeaks([sine], 100);
  assert.equal(p.bins, 100);
  assert.ok(p.max.every((v) => v === 64 || v === 63), p.max.join(","));
  assert.ok(p.min.every((v) => v === -64 || v === -63), p.min.join(","));
  assert.equal(peakLevel(p), 64);
  assert.equal(peakLevel(computePeaks([new Float32Array(10)], 4)), 0);
  assert.deepEqual(computePeaks([new Float32Array(0)], 10), { bins: 0, min: [], max: [] });
  assert.deepEqual(computePeaks([], 10), { bins: 0, min: [], max: [] });
});

test("columns: fewer columns merge bins, more columns repeat the nearest bin", () => {
  const peaks = { bins: 4, min: [-1, -5, -2, -9], max: [3, 1, 8, 2] };
  assert.deepEqual(peaksToColumns(peaks, 2), { lo: [-5, -9], hi: [3, 8] });
  assert.deepEqual(peaksToColumns(peaks, 8), { lo: [-1, -1, -5, -5, -2, -2, -9, -9], hi: [3, 3, 1, 1, 8, 8, 2, 2] });
  assert.deepEqual(peaksToColumns({ bins: 0, min: [], max: [] }, 3), { lo: [0, 0, 0], hi: [0, 0, 0] });
});
