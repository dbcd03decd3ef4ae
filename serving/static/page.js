// Helpers shared by the feed pages (index.html, news.html), served at /page.js.

function text(tag, cls, value) {
  const el = document.createElement(tag);
  if (cls) el.className = cls;
  el.textContent = value;
  return el;
}

// "12 min ago", "2 h ago", "3 d ago" from an ISO 8601 time; "" when there is none.
function ago(iso) {
  if (!iso) return "";
  const minutes = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 60000));
  if (minutes < 60) return `${minutes} min ago`;
  if (minutes < 48 * 60) return `${Math.round(minutes / 60)} h ago`;
  return `${Math.round(minutes / 1440)} d ago`;
}

// The headline: a link to the story when it has one (opened in a new tab), else plain text
// (a `plainTag` element).
function headline(item, cls, label, plainTag) {
  if (!item.link || !/^https?:\/\//.test(item.link)) return text(plainTag, cls, label);
  const a = text("a", cls, label);
  a.href = item.link;
  a.target = "_blank";
  a.rel = "noopener noreferrer";
  return a;
}
