// ACE-Step 1.5 pack: show the text a node reports (detected variant, sampler summary) on the node itself.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const PREFIX = "AceStep15_";
const INFO = "info";

app.registerExtension({
  name: "acestep15.nodeInfo",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith(PREFIX)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.text;
      if (!text || !text.length) return;
      let widget = this.widgets?.find((w) => w.name === INFO);
      if (!widget) {
        widget = ComfyWidgets["STRING"](this, INFO, ["STRING", { multiline: true }], app).widget;
        widget.inputEl.readOnly = true;
        widget.inputEl.style.opacity = 0.8;
        widget.serialize = false; // display only: never saved into the workflow's widgets_values
      }
      widget.value = Array.isArray(text) ? text.join("\n") : String(text);
      this.setSize?.(this.computeSize());
      app.graph?.setDirtyCanvas(true, true);
    };
  },
});
