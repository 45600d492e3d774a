import assert from "node:assert/strict";
import { test } from "node:test";

import { inputFileUrl, viewUrl } from "../../web/acestep/media.js";

test("file entries and Load Audio values become /view queries on the ComfyUI server", () => {
  assert.equal(viewUrl({ filename: "a b.flac", subfolder: "audio", type: "output" }),
               "/view?filename=a+b.flac&subfolder=audio&type=output");
  assert.equal(inputFileUrl("song.flac"), "/view?filename=song.flac&subfolder=&type=input");
  assert.equal(inputFileUrl("pasted/x.mp3"), "/view?filename=x.mp3&subfolder=pasted&type=input");
  assert.equal(inputFileUrl("y.wav [output]"), "/view?filename=y.wav&subfolder=&type=output");
});
