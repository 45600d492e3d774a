// The numbers the server's request validation uses, in one place for the frontend. The Python side owns them
// (acestep_core/constants.py); a test checks that both agree.

export const LATENT_RATE = 25; // latent frames per second
export const FRAME_SECONDS = 1 / LATENT_RATE; // one latent frame: the snapping grid and the shortest window
export const MIN_WINDOW_SECONDS = FRAME_SECONDS; // a repaint window is at least one latent frame long
export const DURATION_MAX = 600; // the longest result (and source) in seconds
export const EXTEND_SECONDS_MIN = 1; // Extend adds at least this many seconds ...
export const EXTEND_SECONDS_MAX = 600; // ... and at most this many
export const OVERLAP_MIN = 0; // Extend's overlap with the source, seconds ...
export const OVERLAP_MAX = 60; // ... at most this, and never more than the source is long
export const END_OF_SOURCE = -1; // Repaint's `end` widget value meaning "to the end of the source"
export const PEAK_SCALE = 127; // peaks are quantised to integers in [-PEAK_SCALE, PEAK_SCALE]
export const PEAK_BINS = 1000; // peak pairs per song in the summaries the nodes return
