// Triage CDS EHR sandbox: builds a patient-view call, sends it to the real endpoint with a
// sandbox-signed JWT, renders the cards as an EHR does, posts feedback. Card text is only ever
// set with textContent; the Markdown detail arrives as HTML already sanitised by the server.
"use strict";

const REFRESH_MS = 2000;
const MAX_REFRESHES = 15;
const VITALS = ["heart_rate", "respiratory_rate", "systolic", "diastolic", "temperature", "spo2", "pain", "avpu"];
const WORDS = { critical: "Critical", warning: "Warning", info: "Info" };

let uploaded = null;   // a Bundle the user uploaded
let lastCall = null;   // {url, body} of the last patient-view, resent to refresh a pending report
let refreshes = 0;
let refreshTimer = null;

const $ = (id) => document.getElementById(id);

function status(text) { $("status").textContent = text; }

async function postJson(url, body, token) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = "Bearer " + token;
  const response = await fetch(url, { method: "POST", headers, body: JSON.stringify(body) });
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) {
    const why = data && (data.message || data.error) ? (data.message || data.error) : response.statusText;
    throw new Error(`HTTP ${response.status}: ${why}`);
  }
  return data;
}

async function token(path) {
  const data = await postJson("/sandbox/api/token", { path });
  return data.token;
}

function safeHref(url) {
  try {
    const parsed = new URL(url, window.location.href);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch (e) { return null; }
}

function el(tag, props, children) {
  const node = document.createElement(tag);
  Object.assign(node, props || {});
  for (const child of children || []) node.append(child);
  return node;
}

async function loadPatients() {
  const data = await (await fetch("/sandbox/api/patients")).json();
  const select = $("source");
  for (const p of data.patients) select.append(el("option", { value: p.id, textContent: p.label }));
  await loadDefaults();
}

let defaultsRequest = 0;  // only the newest request fills the form (a slower, older one never overwrites it)

async function loadDefaults() {
  const source = $("source").value;
  const mine = ++defaultsRequest;
  try {
    const data = await postJson("/sandbox/api/defaults", { source, bundle: source === "upload" ? uploaded : undefined });
    if (mine !== defaultsRequest) return;
    for (const name of VITALS) $(name).value = data.vitals[name] ?? "";
    $("complaint").value = data.complaint || "";
    status("");
  } catch (e) { status("Could not read this patient: " + e.message); }
}

async function onUpload(event) {
  const file = event.target.files[0];
  if (!file) return;
  try {
    uploaded = JSON.parse(await file.text());
  } catch (e) { status("The file is not JSON."); return; }
  const select = $("source");
  let option = select.querySelector('option[value="upload"]');
  if (!option) { option = el("option", { value: "upload" }); select.prepend(option); }
  option.textContent = "Uploaded: " + file.name;
  select.value = "upload";
  await loadDefaults();
}

function vitals() {
  const out = {};
  for (const name of VITALS) {
    if ($(name).value !== "") out[name] = name === "avpu" ? $(name).value : Number($(name).value);
  }
  return out;
}

async function fire(event) {
  event.preventDefault();
  clearTimeout(refreshTimer);
  refreshes = 0;
  $("fire").disabled = true;
  status("Opening the chart…");
  try {
    const source = $("source").value;
    const built = await postJson("/sandbox/api/hook-request", {
      source, bundle: source === "upload" ? uploaded : undefined, vitals: vitals(), complaint: $("complaint").value });
    lastCall = { url: built.url, body: built.body };
    await call(built.token, true);
  } catch (e) {
    status("The service refused the call: " + e.message);
  } finally {
    $("fire").disabled = false;
  }
}

async function call(jwt, moveFocus) {
  const body = Object.assign({}, lastCall.body, { hookInstance: crypto.randomUUID() });
  const response = await postJson(lastCall.url, body, jwt);
  const rendered = await postJson("/sandbox/api/render", { cards: response.cards });
  showCards(response.cards, rendered.cards);
  const pending = rendered.cards.some((c) => c.kind === "pending");
  const n = response.cards.length;
  status(`${n} card${n === 1 ? "" : "s"}.` + (pending ? " The AI report is being prepared; refreshing…" : ""));
  if (moveFocus) $("cards-heading").focus();
  if (pending && refreshes < MAX_REFRESHES) {
    refreshes += 1;
    refreshTimer = setTimeout(refresh, REFRESH_MS);
  }
}

async function refresh() {
  try {
    await call(await token(lastCall.url), false);
  } catch (e) { status("Refresh failed: " + e.message); }
}

function showCards(cards, rendered) {
  const box = $("cards");
  box.replaceChildren();
  if (!cards.length) { box.append(el("p", { textContent: "No guidance for this chart." })); return; }
  cards.forEach((card, i) => box.append(cardView(card, rendered[i])));
}

function cardView(card, rendered) {
  const indicator = WORDS[card.indicator] ? card.indicator : "info";
  const id = "card-" + card.uuid;
  const article = el("article", { className: `card ${indicator}`, id });
  article.setAttribute("aria-labelledby", id + "-summary");
  article.dataset.kind = rendered.kind;
  article.append(el("span", { className: "badge", textContent: WORDS[indicator] }));
  article.append(el("h3", { id: id + "-summary", textContent: card.summary }));
  const detail = el("div", { className: "detail" });
  detail.innerHTML = rendered.html;  // sanitised by the server (markdown-it, raw HTML off, then nh3)
  article.append(detail);
  if (card.source) {
    const source = el("p", { className: "source" }, ["Source: "]);
    const href = card.source.url ? safeHref(card.source.url) : null;
    source.append(href ? el("a", { href, textContent: card.source.label, rel: "noopener noreferrer", target: "_blank" })
                       : el("span", { textContent: card.source.label }));
    article.append(source);
  }
  for (const link of card.links || []) {
    const href = safeHref(link.url);
    if (href) article.append(el("p", {}, [el("a", { href, textContent: link.label, rel: "noopener noreferrer", target: "_blank" })]));
  }
  if (rendered.kind !== "pending") article.append(actions(card));
  return article;
}

function actions(card) {
  const box = el("div", { className: "actions" });
  const result = el("p", { className: "feedback-result" });
  result.setAttribute("role", "status");
  const buttons = [];
  for (const s of card.suggestions || []) {
    const b = el("button", { type: "button", textContent: "Accept suggestion: " + s.label });
    b.addEventListener("click", () => send(card, { outcome: "accepted", acceptedSuggestions: s.uuid ? [{ id: s.uuid }] : undefined }, buttons, result));
    buttons.push(b);
  }
  const accept = el("button", { type: "button", className: "primary", textContent: "Accept" });
  accept.addEventListener("click", () => send(card, { outcome: "accepted" }, buttons, result));
  buttons.push(accept);
  const reasons = card.overrideReasons || [];
  const selectId = "reason-" + card.uuid;
  const select = el("select", { id: selectId });
  select.append(el("option", { value: "", textContent: "(no reason given)" }));
  reasons.forEach((r, i) => select.append(el("option", { value: String(i), textContent: r.display || r.code })));
  const override = el("button", { type: "button", textContent: "Override" });
  override.addEventListener("click", () => {
    const reason = select.value === "" ? null : reasons[Number(select.value)];
    send(card, { outcome: "overridden", overrideReason: reason ? { reason } : undefined }, buttons, result);
  });
  buttons.push(override, select);
  box.append(...buttons.slice(0, -2), el("label", { htmlFor: selectId, textContent: " Override reason" }), select, override, result);
  return box;
}

async function send(card, entry, controls, result) {
  const path = lastCall.url + "/feedback";
  const feedback = Object.assign({ card: card.uuid, outcomeTimestamp: new Date().toISOString() }, entry);
  try {
    const stored = await postJson(path, { feedback: [feedback] }, await token(path));
    controls.forEach((c) => { c.disabled = true; });
    result.textContent = `Feedback stored (${entry.outcome}${stored.duplicates ? ", already stored" : ""}).`;
  } catch (e) {
    result.textContent = "Feedback not stored: " + e.message;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("source").addEventListener("change", () => { if ($("source").value !== "upload") loadDefaults(); });
  $("upload").addEventListener("change", onUpload);
  $("chart-form").addEventListener("submit", fire);
  loadPatients().catch((e) => status("Could not list patients: " + e.message));
});
