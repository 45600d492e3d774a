// Advanced inputs collapsed on the canvas. The nodes mark them with V3's `advanced=True`, which the frontend keeps
// as the widget's `options.advanced`; the 1.4x canvas (LiteGraph) hides a widget only when the widget's own
// `advanced` flag is set and the node's `showAdvanced` is off, and never sets that flag itself (1.43), or sets it
// but still shows the widget (1.58). Setting the flag gives the frontend's own behaviour: hidden until "Show
// Advanced" (node context menu), saved with the workflow as the node's `showAdvanced`. 1.43 still reserves the
// hidden widgets' rows (the node keeps its full height, with a gap); there the widgets are also marked `hidden`
// while collapsed, which removes them from its layout (their values are still saved and sent). A display-only
// button under the common inputs toggles the same state, so the hidden inputs can be found.

const BUTTON = "acestep_advanced";

export function advancedWidgets(node) {
  return (node.widgets ?? []).filter((w) => w.options?.advanced);
}

/** Put the widgets and the button in line with the node's `showAdvanced` (also after the frontend's own
 * "Show Advanced" menu entry or a loaded workflow changed it); returns true when something changed. */
export function syncAdvanced(node) {
  const state = node.acestepAdvanced;
  if (!state) return false;
  const shown = !!node.showAdvanced;
  if (state.shown === shown) return false;
  state.shown = shown;
  if (state.reservesRows) for (const w of state.widgets) w.hidden = !shown;
  state.button.label = shown ? `▾ hide ${state.widgets.length} advanced inputs`
    : `▸ show ${state.widgets.length} advanced inputs`;
  const [, h] = node.computeSize?.() ?? [0, node.size[1]];
  node.setSize?.([node.size[0], h]);
  node.setDirtyCanvas?.(true, true);
  return true;
}

/** Mark the node's advanced widgets so the canvas hides them, and add the toggle button (display only). */
export function collapseAdvanced(node) {
  const widgets = advancedWidgets(node);
  if (!widgets.length) return;
  for (const w of widgets) w.advanced = true;
  node.showAdvanced = false;
  const reservesRows = node.getLayoutWidgets?.().includes(widgets[0]) ?? false;
  const button = node.addWidget("button", BUTTON, null, () => {
    if (typeof node.toggleAdvanced === "function") node.toggleAdvanced();
    else node.showAdvanced = !node.showAdvanced;
    syncAdvanced(node);
  }, { serialize: false });
  // Last of the node's own widgets (widgets_values are saved by position): drawn right under the common inputs
  // while the advanced ones are hidden, and above any display widget added later.
  button.serialize = false;
  node.acestepAdvanced = { widgets, button, reservesRows, shown: null };
  syncAdvanced(node);
}
