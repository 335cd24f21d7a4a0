// The image library: disk images and ISOs to create VMs from. Upload one from this computer (with its
// progress, and its SHA-256 worked out here and compared with the appliance's), verify, delete. An
// upload answers the image, a deletion nothing: the table is redrawn from that, not asked for again.
import { call, get, upload } from "../api.js";
import { bytes, fill, h, table, when } from "../dom.js";
import { actionButton, actionForm, field, notify, withAnswer } from "../ui.js";

// Hashing needs the whole file in memory (crypto.subtle has no streaming digest): only up to this size.
const HASHED_IN_BROWSER = 512 * 1024 * 1024;

async function sha256Of(file) {
  if (file.size > HASHED_IN_BROWSER) return null;
  const digest = await crypto.subtle.digest("SHA-256", await file.arrayBuffer());
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

function uploadForm(uploaded) {
  const progress = h("progress", { max: "1", value: "0", hidden: true, "data-upload-progress": "" });
  const form = actionForm("PUT", "/images/x", [
    field("File", h("input", { name: "file", type: "file", required: true })),
    field("Name", h("input", { name: "name", required: true, placeholder: "debian-12" })),
    field("Kind", h("select", { name: "kind" }, h("option", { value: "" }, "as its content says"),
      h("option", { value: "disk" }, "disk"), h("option", { value: "iso" }, "ISO"))),
  ], "Upload", async (values, shown) => {
    const file = values.file;
    const path = `/images/${encodeURIComponent(values.name)}${values.kind ? `?kind=${values.kind}` : ""}`;
    progress.hidden = false;
    const [record, local] = await Promise.all([
      upload(path, file, (sent, total) => { progress.value = total ? sent / total : 0; }),
      sha256Of(file)]).finally(() => { progress.hidden = true; });
    if (local !== null && local !== record.sha256) {
      notify(`Image ${record.name} arrived damaged: SHA-256 ${record.sha256} here, ${local} on this computer.`, true);
    } else {
      notify(`Image ${record.name} uploaded (${bytes(record.size)}), SHA-256 ${record.sha256}`
             + (local ? ", the same as on this computer." : "."));
    }
    shown.reset();
    uploaded(record);
  });
  return form && [form, progress];
}

export async function imagesPage(main) {
  let images = await get("/images");
  const uploading = uploadForm((image) => { images = withAnswer(images, image); render(); });
  const render = () => {
    fill(main, h("h1", {}, "Images"),
      table(["Image", "Kind", "Format", "Size", "Guest sees", "SHA-256", "Added", ""], images.map((i) => {
        const path = `/images/${encodeURIComponent(i.name)}`;
        return h("tr", { "data-image": i.name },
          h("td", {}, i.name), h("td", {}, i.kind), h("td", {}, i.format), h("td", {}, bytes(i.size)),
          h("td", {}, bytes(i.virtual_size)), h("td", {}, h("code", { title: i.sha256 }, i.sha256.slice(0, 16), "…")),
          h("td", {}, when(i.created_at)),
          h("td", { class: "actions" },
            actionButton("Verify", "POST", `${path}/verify`, () => call("POST", `${path}/verify`),
              (checked) => notify(`Image ${checked.name}: its bytes match SHA-256 ${checked.sha256}.`)),
            actionButton("Delete", "DELETE", path, () => call("DELETE", path), () => {
              images = images.filter((other) => other.name !== i.name);
              render();
            }, { class: "danger" })));
      }), "no images yet"),
      h("h2", {}, "Upload an image"), uploading);
  };
  render();
}
