// The recycle bin: what a delayed deletion keeps until its purge date; restore it, or purge it now.
// Either action answers the item that left the bin: the page drops it without asking for the list again.
import { call, getPage, listPath } from "../api.js";
import { age, fill, h, table, when } from "../dom.js";
import { ROWS_PER_PAGE, actionButton, attempt, confirmAction, notify, pager } from "../ui.js";

export async function recyclePage(main) {
  let offset = 0;
  let shown = { items: [], total: 0 };   // the page as the API last gave it, less what left the bin since
  const gone = (item) => {
    shown = { items: shown.items.filter((r) => r.id !== item.id), total: shown.total - 1 };
    render();
  };
  const render = () => fill(main, h("h1", {}, "Recycle bin"),
    h("p", { class: "muted" }, "Deleted VMs, backups and policies wait here until their purge date."),
    table(["What", "Name", "Deleted", "Purged", ""], shown.items.map((r) => {
      const path = `/recycle-bin/${encodeURIComponent(r.id)}`;
      return h("tr", { "data-recycled": r.name },
        h("td", {}, r.kind), h("td", {}, r.name), h("td", { title: when(r.deleted_at) }, age(r.deleted_at)),
        h("td", {}, when(r.purge_at)),
        h("td", { class: "actions" },
          actionButton("Restore", "POST", `${path}/restore`, () => call("POST", `${path}/restore`), (restored) => {
            notify(`Restored ${restored.kind} ${restored.name}.`);
            gone(restored);
          }),
          actionButton("Purge now", "DELETE", path, async () => (
            await confirmAction(`Purge ${r.kind} ${r.name}?`, ["It is gone for good: no restore after this."], "Purge")
              ? call("DELETE", path) : undefined), (purged) => {
            notify(`Purged ${purged.kind} ${purged.name}.`);
            gone(purged);
          }, { class: "danger" })));
    }), "the recycle bin is empty"),
    pager(offset, ROWS_PER_PAGE, shown.total, (to) => { offset = to; attempt(load); }));
  const load = async () => {
    shown = await getPage(listPath("/recycle-bin", { sort: "-deleted_at", limit: ROWS_PER_PAGE, offset }));
    render();
  };
  await load();
}
