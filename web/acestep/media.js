// Audio files from ComfyUI's own /view route, decoded in the browser (no other server work, no other host).

let context = null;

/** One AudioContext for the whole extension (created on first use; resumed on the first play). */
export function audioContext() {
  context ??= new AudioContext();
  return context;
}

/** /view query of a file entry as ComfyUI's history gives it ({filename, subfolder, type}). */
export function viewUrl(entry) {
  const q = new URLSearchParams({ filename: entry.filename ?? "", subfolder: entry.subfolder ?? "",
                                  type: entry.type ?? "output" });
  return `/view?${q}`;
}

/** A Load Audio combo value ("song.flac", "sub/song.flac", "song.flac [input]") as an input-folder /view query. */
export function inputFileUrl(value) {
  const name = value.replace(/\s*\[(input|output|temp)\]$/, "");
  const type = (/\[(input|output|temp)\]$/.exec(value) ?? [null, "input"])[1];
  const cut = name.lastIndexOf("/");
  return viewUrl({ filename: name.slice(cut + 1), subfolder: cut < 0 ? "" : name.slice(0, cut), type });
}

/** Fetch through the frontend's API client (so a base path or auth header is kept) and decode. */
export async function fetchAudioBuffer(app, path) {
  const response = await app.api.fetchApi(path);
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return await audioContext().decodeAudioData(await response.arrayBuffer());
}

/** The URL an <audio> element plays for a /view path (the frontend's API prefix added). */
export function mediaUrl(app, path) {
  return app.api.apiURL(path);
}
