// A VM's backup calendar: one square per day of the last weeks, by the browser's own days (local
// midnight to midnight): green when a backup of that day succeeded, red when the day's backups all
// failed, empty when none ran. Plain elements, no library.
import { h } from "./dom.js";

export const CALENDAR_DAYS = 28;

const dayKey = (date) => `${date.getFullYear()}-${date.getMonth()}-${date.getDate()}`;

// The first moment shown: local midnight CALENDAR_DAYS - 1 days ago, as the API's ISO time.
export function calendarStart(now = new Date()) {
  return new Date(now.getFullYear(), now.getMonth(), now.getDate() - (CALENDAR_DAYS - 1));
}

export function backupCalendar(backups, now = new Date()) {
  const byDay = new Map();
  for (const b of backups) {
    const key = dayKey(new Date(b.started_at));
    const day = byDay.get(key) ?? { ok: 0, failed: 0 };
    if (b.status === "ok") day.ok += 1;
    else if (b.status === "failed") day.failed += 1;
    byDay.set(key, day);
  }
  const start = calendarStart(now);
  const days = [];
  for (let i = 0; i < CALENDAR_DAYS; i += 1) {
    const date = new Date(start.getFullYear(), start.getMonth(), start.getDate() + i);
    const day = byDay.get(dayKey(date));
    const result = !day ? "none" : day.ok ? "ok" : day.failed ? "failed" : "running";
    const label = `${date.toLocaleDateString(undefined, { weekday: "short", day: "numeric", month: "short" })}: `
      + (day ? `${day.ok} succeeded, ${day.failed} failed` : "no backup");
    days.push(h("li", { class: `day day-${result}`, "data-day": date.toISOString().slice(0, 10), "data-result": result,
                        title: label, "aria-label": label, tabindex: "0" },
      String(date.getDate())));
  }
  return h("ol", { class: "calendar", "aria-label": `backups of the last ${CALENDAR_DAYS} days` }, days);
}
