// ACE-Step 1.5 pack: the frontend extension. Public frontend APIs only: `app` and its extension hooks,
// litegraph node and widget methods (addDOMWidget, onExecuted, ...), and the widget types the frontend
// registers itself (AUDIO_UI, ComfyUI's audio player).
import { app } from "../../scripts/app.js";

const PREFIX = "AceStep15_";
const INFO = "info";
const OUTPUT_NODES = [PREFIX + "SaveAudio", PREFIX + "PreviewAudio"];

/** Read-only text under the node (detected variant, sampler summary); display only, never serialised. */
function showInfo(node, text) {
  let widget = node.widgets?.find((w) => w.name === INFO);
  if (!widget) {
    const area = document.createElement("textarea");
    area.readOnly = true;
    area.rows = 2;
    area.className = "comfy-multiline-input acestep-info";
    area.style.opacity = "0.8";
    area.style.resize = "none";
    widget = node.addDOMWidget(INFO, "acestep_info", area, {
      serialize: false,
      getValue: () => area.value,
      setValue: (v) => { area.value = v; },
      getMinHeight: () => 44,
    });
    widget.serialize = false; // display only: never saved into the workflow's widgets_values
  }
  widget.element.value = text;
  // Grow to fit the new widget, never narrower than the user (or the workflow) made the node.
  const [w, h] = node.computeSize?.() ?? [0, 0];
  node.setSize?.([Math.max(node.size[0], w), Math.max(node.size[1], h)]);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "acestep15.nodeInfo",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith(PREFIX)) return;
    if (OUTPUT_NODES.includes(nodeData.name)) {
      // ComfyUI's own audio player, as on its SaveAudio/PreviewAudio: the frontend builds an AUDIO_UI widget
      // for this input and fills it from the node's `audio` output after a run. Not a server input: the widget
      // is not serialised, so workflows and prompts stay as they were.
      nodeData.input ??= {};
      nodeData.input.required ??= {};
      nodeData.input.required.audioUI = ["AUDIO_UI", {}];
    }
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.text;
      if (!text || !text.length) return;
      showInfo(this, Array.isArray(text) ? text.join("\n") : String(text));
    };
  },
});
