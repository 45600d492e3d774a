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
        const el = widget.element ?? widget.inputEl;
        if (el) {
          el.readOnly = true;
          el.style.opacity = 0.8;
        }
        widget.serialize = false; // display only: never saved into the workflow's widgets_values
      }
      widget.value = Array.isArray(text) ? text.join("\n") : String(text);
      // Grow to fit the new widget, never narrower than the user (or the workflow) made the node.
      const [w, h] = this.computeSize?.() ?? [0, 0];
      this.setSize?.([Math.max(this.size[0], w), Math.max(this.size[1], h)]);
      app.graph?.setDirtyCanvas(true, true);
    };
  },
});
