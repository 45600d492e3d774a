// ACE-Step 1.5 pack: the frontend extension. Public frontend APIs only: `app` and its extension hooks,
// litegraph node and widget methods (addDOMWidget, getInputNode, onExecuted, ...), and the widget types the
// frontend registers itself (AUDIO_UI, ComfyUI's audio player). Plain ES modules, no build step, no request to
// any host but the ComfyUI server. Every widget added here is display only (never serialised), so workflows
// and prompts keep exactly the values they had.
import { app } from "../../scripts/app.js";
import { collapseAdvanced, syncAdvanced } from "./acestep/advanced.js";
import { ResultsPanel } from "./acestep/results.js";
import { SourceEditor } from "./acestep/source.js";

const PREFIX = "AceStep15_";
const INFO = "info";
const OUTPUT_NODES = [PREFIX + "SaveAudio", PREFIX + "PreviewAudio"];
const TASK_NODES = [PREFIX + "RepaintLatent", PREFIX + "ExtendLatent", PREFIX + "StemLatent", PREFIX + "CoverLatent"];
const POLL_MS = 700; // also notice a new Load Audio file where the canvas does not redraw our node

const editors = new Set();
setInterval(() => { for (const editor of editors) editor.poll(); }, POLL_MS);

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
    widget.serialize = false;
  }
  widget.element.value = text;
  fitNode(node);
}

/** Grow to fit new widgets, never narrower or shorter than the user (or the workflow) made the node. */
function fitNode(node) {
  const [w, h] = node.computeSize?.() ?? [0, 0];
  node.setSize?.([Math.max(node.size[0], w), Math.max(node.size[1], h)]);
  node.setDirtyCanvas?.(true, true);
}

function editorMode(node) {
  const has = (name) => node.widgets?.some((w) => w.name === name);
  if (has("start") && has("end")) return "repaint";
  if (has("seconds") && has("overlap") && has("direction")) return "extend";
  return "view";
}

function chain(proto, name, after) {
  const original = proto[name];
  proto[name] = function () {
    const result = original?.apply(this, arguments);
    after.apply(this, arguments);
    return result;
  };
}

app.registerExtension({
  name: "acestep15.nodeInfo",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith(PREFIX)) return;
    const proto = nodeType.prototype;
    chain(proto, "onNodeCreated", function () {
      collapseAdvanced(this); // first: before the display widgets the task and output nodes add
    });
    chain(proto, "onConfigure", function () {
      syncAdvanced(this); // a workflow may have saved showAdvanced
    });
    chain(proto, "onDrawForeground", function () {
      syncAdvanced(this); // the frontend's own "Show Advanced" menu entry toggles showAdvanced
    });
    if (OUTPUT_NODES.includes(nodeData.name)) {
      // ComfyUI's own audio player, as on its SaveAudio/PreviewAudio: the frontend builds an AUDIO_UI widget
      // for this input and fills it from the node's `audio` output after a run. Not a server input: the widget
      // is not serialised, so workflows and prompts stay as they were.
      nodeData.input ??= {};
      nodeData.input.required ??= {};
      nodeData.input.required.audioUI = ["AUDIO_UI", {}];
      chain(proto, "onNodeCreated", function () {
        this.acestepResults = new ResultsPanel(this, app);
      });
      chain(proto, "onExecuted", function (message) {
        this.acestepResults?.onExecuted(message);
      });
      chain(proto, "onRemoved", function () {
        this.acestepResults?.stopAll();
      });
    }
    if (TASK_NODES.includes(nodeData.name)) {
      chain(proto, "onNodeCreated", function () {
        this.acestepEditor = new SourceEditor(this, app, editorMode(this));
        editors.add(this.acestepEditor);
        fitNode(this);
      });
      chain(proto, "onDrawForeground", function () {
        this.acestepEditor?.poll();
      });
      chain(proto, "onConfigure", function () {
        this.acestepEditor?.render();
      });
      chain(proto, "onExecuted", function (message) {
        this.acestepEditor?.onExecuted(message);
      });
      chain(proto, "onRemoved", function () {
        this.acestepEditor?.stop();
        editors.delete(this.acestepEditor);
      });
    }
    chain(proto, "onExecuted", function (message) {
      const text = message?.text;
      if (!text || !text.length) return;
      showInfo(this, Array.isArray(text) ? text.join("\n") : String(text));
    });
  },
});
