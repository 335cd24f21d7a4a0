// The files of a backed-up disk, browsed without restoring or booting anything, and downloaded.
import { download, get } from "../api.js";
import { bytes, fill, h, table } from "../dom.js";
import { actionButton, describeError, field } from "../ui.js";

// "#/files/<backup>/<disk>?path=/etc&partition=1": the address says where one is, so Back works.
export function filesAddress(backup, disk, path = "/", partition = "") {
  const query = new URLSearchParams({ path });
  if (partition) query.set("partition", partition);
  return `#/files/${encodeURIComponent(backup)}/${encodeURIComponent(disk)}?${query}`;
}

function save(blob, name) {
  const link = h("a", { href: URL.createObjectURL(blob), download: name });
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
}

export async function filesPage(main, { backup, disk, query }) {
  const params = new URLSearchParams(query ?? "");
  const path = params.get("path") || "/";
  const partition = params.get("partition") || "";
  const api = `/backups/${encodeURIComponent(backup)}/disks/${encodeURIComponent(disk)}/files`;
  const where = (p) => `?path=${encodeURIComponent(p)}${partition ? `&partition=${partition}` : ""}`;
  const join = (name) => `${path.replace(/\/$/, "")}/${name}`;
  const choosePartition = h("input", { type: "number", min: "1", value: partition, placeholder: "whole disk" });
  choosePartition.addEventListener("change", () => { location.hash = filesAddress(backup, disk, "/", choosePartition.value); });
  fill(main, h("h1", {}, `Files of ${disk} in backup ${backup}`), field("Partition", choosePartition),
    h("p", {}, "Loading…"));
  let entries;
  try {
    entries = await get(`${api}${where(path)}`);
  } catch (e) {
    // Where the listing would be, what stopped it (no filesystem, no such partition); the notice too.
    fill(main, h("h1", {}, `Files of ${disk} in backup ${backup}`), field("Partition", choosePartition),
      h("p", { class: "error", "data-files-error": "" }, `Nothing to browse here: ${describeError(e)}`));
    throw e;
  }
  const up = path === "/" ? null : path.replace(/\/[^/]+\/?$/, "") || "/";
  fill(main, h("h1", {}, `Files of ${disk} in backup ${backup}`), field("Partition", choosePartition),
    h("p", { "data-path": path }, "In ", h("code", {}, path), " ",
      up && h("a", { href: filesAddress(backup, disk, up, partition) }, "up one level")),
    table(["Name", "Kind", "Size", "Modified", ""], entries.map((e) => h("tr", { "data-file": e.name },
      h("td", {}, e.kind === "dir" ? h("a", { href: filesAddress(backup, disk, join(e.name), partition) }, `${e.name}/`)
        : e.name + (e.target ? ` → ${e.target}` : "")),
      h("td", {}, e.kind), h("td", {}, e.kind === "file" ? bytes(e.size) : ""),
      h("td", {}, new Date(e.mtime * 1000).toLocaleString()),
      h("td", {}, e.kind === "file" && actionButton("Download", "GET", `${api}/content`,
        () => download(`${api}/content${where(join(e.name))}`), (blob) => save(blob, e.name))))),
    "empty directory"));
}
