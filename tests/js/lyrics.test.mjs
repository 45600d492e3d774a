import assert from "node:assert/strict";
import { test } from "node:test";

import { LINE_HOLD_SECONDS, lineAt } from "../../web/acestep/lyrics.js";

const LINES = [
  { text: "one", start: 1.0, end: 3.0 },
  { text: "two", start: 3.2, end: 6.0 },
  { text: "three", start: 12.0, end: 14.0 },
];

test("the line being sung is the last one started", () => {
  assert.equal(lineAt(LINES, 0.5), -1); // before the first line
  assert.equal(lineAt(LINES, 1.0), 0);
  assert.equal(lineAt(LINES, 3.1), 0); // between two lines: the earlier one stays
  assert.equal(lineAt(LINES, 3.2), 1);
  assert.equal(lineAt(LINES, 12.5), 2);
});

test("a line is held for a while after its end, then nothing in a long gap", () => {
  assert.equal(lineAt(LINES, 6.0 + LINE_HOLD_SECONDS - 0.01), 1);
  assert.equal(lineAt(LINES, 6.0 + LINE_HOLD_SECONDS + 0.01), -1);
  assert.equal(lineAt(LINES, 14.0 + LINE_HOLD_SECONDS + 1), -1); // after the last line
});

test("no lines, or a time that is not a number, show nothing", () => {
  assert.equal(lineAt([], 5), -1);
  assert.equal(lineAt(undefined, 5), -1);
  assert.equal(lineAt(LINES, NaN), -1);
});
