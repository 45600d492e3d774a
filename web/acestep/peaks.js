// Waveform peaks: for each of `bins` equal slices of a song, the lowest and highest sample over all channels,
// quantised to integers in [-PEAK_SCALE, PEAK_SCALE]; a NaN sample counts as 0. acestep_core/peaks.py computes the very same numbers on
// the server (a test runs both on one signal), so a summary from either side draws the same picture.
import { PEAK_BINS, PEAK_SCALE } from "./limits.js";

/** First sample of slice `i` when `samples` samples are cut into `bins` slices (integer arithmetic). */
export function sliceStart(i, samples, bins) {
  return Math.floor((i * samples) / bins);
}

/** A sample value in [-1, 1] as an integer in [-PEAK_SCALE, PEAK_SCALE] (rounded half up; NaN as 0). */
export function quantize(value) {
  if (Number.isNaN(value)) return 0;
  const q = Math.floor(value * PEAK_SCALE + 0.5);
  return Math.max(-PEAK_SCALE, Math.min(PEAK_SCALE, q));
}

/**
 * Peaks of a song given as one Float32Array per channel (all the same length).
 * Returns {bins, min, max} with `bins` = min(requested bins, samples); empty arrays for no samples.
 */
export function computePeaks(channels, bins = PEAK_BINS) {
  const samples = channels.length ? channels[0].length : 0;
  const n = Math.max(0, Math.min(bins, samples));
  const min = new Array(n);
  const max = new Array(n);
  for (let i = 0; i < n; i++) {
    const a = sliceStart(i, samples, n);
    const b = sliceStart(i + 1, samples, n);
    let lo = Infinity;
    let hi = -Infinity;
    for (const data of channels) {
      for (let s = a; s < b; s++) {
        const v = Number.isNaN(data[s]) ? 0 : data[s];
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
    }
    min[i] = quantize(lo);
    max[i] = quantize(hi);
  }
  return { bins: n, min, max };
}

/** The loudest quantised peak (0 for silence): the frontend scales the drawing by it. */
export function peakLevel(peaks) {
  let level = 0;
  for (let i = 0; i < peaks.bins; i++) level = Math.max(level, Math.abs(peaks.min[i]), Math.abs(peaks.max[i]));
  return level;
}

/**
 * Peaks resampled to `columns` pixel columns (each column: min of mins and max of maxes of the bins it covers);
 * a column between two bins takes the nearer bin, so a short song still fills the width.
 */
export function peaksToColumns(peaks, columns) {
  const lo = new Array(columns).fill(0);
  const hi = new Array(columns).fill(0);
  if (!peaks || peaks.bins === 0 || columns <= 0) return { lo, hi };
  for (let c = 0; c < columns; c++) {
    const a = Math.floor((c * peaks.bins) / columns);
    const b = Math.max(a + 1, Math.floor(((c + 1) * peaks.bins) / columns));
    let l = Infinity;
    let h = -Infinity;
    for (let i = a; i < b && i < peaks.bins; i++) {
      l = Math.min(l, peaks.min[i]);
      h = Math.max(h, peaks.max[i]);
    }
    lo[c] = l === Infinity ? 0 : l;
    hi[c] = h === -Infinity ? 0 : h;
  }
  return { lo, hi };
}
