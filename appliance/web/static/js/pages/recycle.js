// The recycle bin: what a delayed deletion keeps until its purge date; restore it, or purge it now.
import { call, getPage, listPath } from "../api.js";
import { age, fill, h, table, when } from "../dom.js";
import { ROWS_PER_PAGE, actionButton, attempt, confirmAction, notify, pager } from "../ui.js";

export async function recyclePage(main) {
  let offset = 0;
  const draw = async () => {
    const { items, total } = await getPage(listPath("/recycle-bin", { sort: "-deleted_at", limit: ROWS_PER_PAGE, offset }));
    fill(main, h("h1", {}, "Recycle bin"),
      h("p", { class: "muted" }, "Deleted VMs, backups and policies wait here until their purge date."),
      table(["What", "Name", "Deleted", "Purged", ""], items.map((r) => {
        const path = `/recycle-bin/${encodeURIComponent(r.id)}`;
        return h("tr", { "data-recycled": r.name },
          h("td", {}, r.kind), h("td", {}, r.name), h("td", { title: when(r.deleted_at) }, age(r.deleted_at)),
          h("td", {}, when(r.purge_at)),
          h("td", { class: "actions" },
            actionButton("Restore", "POST", `${path}/restore`, () => call("POST", `${path}/restore`), async () => {
              notify(`Restored ${r.kind} ${r.name}.`);
              await draw();
            }),
            actionButton("Purge now", "DELETE", path, async () => (
              await confirmAction(`Purge ${r.kind} ${r.name}?`, ["It is gone for good: no restore after this."], "Purge")
                ? call("DELETE", path) : undefined), draw, { class: "danger" })));
      }), "the recycle bin is empty"),
      pager(offset, ROWS_PER_PAGE, total, (to) => { offset = to; attempt(draw); }));
  };
  await draw();
}
