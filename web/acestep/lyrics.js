// The sung line at a moment of a song, for the results panel (lines from the Lyric Timestamps node, sent by
// Save/Preview as `acestep_lyrics`: [{text, start, end}] per song, sorted by start, in seconds).

// How long a line stays up after its aligned end when the next line has not started (a pause, an instrumental
// break): long enough to read, short enough not to caption a solo.
export const LINE_HOLD_SECONDS = 2;

/** Index of the line being sung at `t` seconds, or -1 (before the first line, or in a gap after a line's end). */
export function lineAt(lines, t) {
  if (!Array.isArray(lines) || !Number.isFinite(t)) return -1;
  let index = -1;
  for (let i = 0; i < lines.length && lines[i].start <= t; i++) index = i;
  if (index < 0) return -1;
  return t <= lines[index].end + LINE_HOLD_SECONDS ? index : -1;
}
