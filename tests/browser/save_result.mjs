// Shared by the browser flows: queue the loaded graph, wait until the Save node's results panel holds one item
// (and, with `lyric`, its lyric line), then bring the Save node into view at 100 % zoom.
export async function queueAndShowSave(page, { lyric = false } = {}) {
  await page.evaluate(() => app.queuePrompt(0, 1));
  await page.waitForFunction((needLyric) => {
    const save = app.graph._nodes.find((n) => n.type === "AceStep15_SaveAudio");
    return save?.acestepResults?.root.dataset.items === "1" && (!needLyric || save.acestepResults.rows[0].lyric != null);
  }, lyric, { timeout: 240000 });
  await page.evaluate(() => {
    const save = app.graph._nodes.find((n) => n.type === "AceStep15_SaveAudio");
    app.canvas.ds.scale = 1;
    app.canvas.ds.offset = [-save.pos[0] + 700, -save.pos[1] + 150];
    app.canvas.setDirty(true, true);
  });
  await page.waitForTimeout(800);
}
