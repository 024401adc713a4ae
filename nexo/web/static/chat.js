// The chat page: the DOM around nexo/client.js.
import { WebClient } from "./nexo/client.js";

const $ = (id) => document.getElementById(id);
const client = new WebClient();
let peer = null;
const shown = new Map(); // message_id -> <li>

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
}

const short = (b64) => b64.replace(/[^A-Za-z0-9]/g, "").slice(0, 12);

$("sign-in").addEventListener("submit", async (event) => {
  event.preventDefault();
  const action = event.submitter?.value || "login";
  const username = $("username").value.trim(), password = $("password").value;
  $("sign-in-error").textContent = "";
  for (const b of $("sign-in").querySelectorAll("button")) b.disabled = true;
  try {
    if (action === "register") await client.register(username, password);
    else await client.login(username, password);
    $("sign-in").hidden = true;
    $("app").hidden = false;
    $("me").textContent = `Signed in as ${client.username}`;
    $("witnesses").value = await client.witnessText();
    $("peer").focus();
  } catch (err) {
    $("sign-in-error").textContent = `${action === "register" ? "Could not create the account" : "Could not log in"}: ${err.message}`;
  } finally {
    for (const b of $("sign-in").querySelectorAll("button")) b.disabled = false;
  }
});

client.addEventListener("status", ({ detail }) => {
  $("connection").textContent = { online: "connected", connecting: "connecting…", reconnecting: "reconnecting…",
                                  offline: "offline: messages are kept and sent on reconnect" }[detail.state];
  $("connection").dataset.state = detail.state;
});

client.addEventListener("device", ({ detail }) => {
  const { device, sth } = detail;
  $("my-keys").replaceChildren(...["ed25519", "x25519"].map((t) => el("li", { "data-key-type": t },
    `${t === "ed25519" ? "Signing" : "Encryption"} key ${short(device[t].public_key)}… — leaf ${device[t].leaf_index}, `,
    el("span", { class: "ok" }, `inclusion proof checked against STH #${device[t].sth_index}`),
    ` (tree size ${device[t].tree_size})`)));
  if (sth) $("log-state").textContent = `Last tree head this browser verified: #${sth.index}, ${sth.tree_size} leaves.`;
});

client.addEventListener("peer", ({ detail }) => {
  if (detail.username !== peer) return;
  if (detail.error) {
    $("peer-keys").replaceChildren(el("li", { class: "bad" }, `Not verified: ${detail.error.message}`));
    showWarning(detail.error);
    $("send").disabled = true;
    return;
  }
  $("send").disabled = false;
  $("warnings").replaceChildren();
  const consistent = detail.consistentWith === null
    ? "first tree head this browser saw"
    : `consistent with STH #${detail.consistentWith} this browser saw before`;
  $("peer-keys").replaceChildren(...(detail.keys.length ? detail.keys.map((k) => el("li", { "data-state": "verified" },
    `${k.key_type} ${short(b64(k.public_key))}… (${k.name}) — `,
    el("span", { class: "ok" }, `✔ verified against STH #${detail.sthIndex}`),
    `, ${consistent}; leaf ${k.leaf_index} of ${detail.treeSize}. `, witnessText(detail.cosigned)))
    : [el("li", { class: "muted" }, `${detail.username} has no device yet.`)]));
  const sth = detail.sthIndex;
  $("log-state").textContent = `Last tree head this browser verified: #${sth}, ${detail.treeSize} leaves.`;
});

function witnessText(cosigned) {
  if (cosigned === null || cosigned === undefined) return "Witness cosignatures: none required (see Witnesses).";
  return el("span", { class: "ok" }, `✔ cosigned by ${cosigned.join(", ")}.`);
}

$("witness-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const n = await client.setWitnesses($("witnesses").value);
    $("witness-state").textContent = n ? `${n} witness(es) required on every tree head.` : "No witnesses required.";
    if (peer) await client.keysOf(peer, { fresh: true }).catch(() => {});
  } catch (err) {
    $("witness-state").textContent = `Not saved: ${err.message}`;
  }
});

function b64(bytes) { let s = ""; for (const b of bytes) s += String.fromCharCode(b); return btoa(s); }

function showWarning(err) {
  const box = el("div", { class: "warning" }, `⚠ ${err.kind === "KeyChanged" ? "Key change" : "Verification failed"}: ${err.message}. Nothing is sent to ${peer} until this is resolved.`);
  if (err.kind === "KeyChanged") {
    const accept = el("button", { type: "button", class: "secondary" }, "I checked: trust the new keys");
    accept.addEventListener("click", () => client.acceptKeys(peer).catch(showWarning));
    box.append(" ", accept);
  }
  $("warnings").replaceChildren(box);
}

client.addEventListener("warning", ({ detail }) => {
  $("warnings").append(el("div", { class: "warning" }, `⚠ ${detail.text}`));
  if (detail.message_id) shown.get(detail.message_id)?.setAttribute("data-state", "held");
});

function addMessage(id, who, text, state, mine) {
  if (shown.has(id)) return shown.get(id);
  const li = el("li", { "data-message-id": id, "data-state": state, class: mine ? "mine" : "" },
    el("span", { class: "meta" }, `${who}: `), el("span", { class: "text" }, text), " ",
    el("span", { class: "meta status" }, state === "received" ? "✓ verified" : state));
  shown.set(id, li);
  $("messages").append(li);
  li.scrollIntoView({ block: "nearest" });
  return li;
}

client.addEventListener("queued", ({ detail }) => addMessage(detail.message_id, `you → ${detail.to}`, detail.text, "queued", true));
client.addEventListener("acked", ({ detail }) => {
  const li = shown.get(detail.message_id);
  if (li) { li.dataset.state = "sent"; li.querySelector(".status").textContent = "✓ sent"; }
});
client.addEventListener("message", ({ detail }) => addMessage(detail.messageId,
  detail.senderUser === client.username ? `you (other device) → ${detail.to}` : detail.senderUser, detail.text, "received", false));

$("peer-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  peer = $("peer").value.trim().toLowerCase();
  $("chat-title").textContent = `Conversation with ${peer}`;
  $("peer-keys").replaceChildren(el("li", { class: "muted" }, "Verifying…"));
  $("warnings").replaceChildren();
  try { await client.keysOf(peer, { fresh: true }); } catch (err) { if (!err.kind) showWarning(err); }
  $("text").focus();
});

async function send() {
  $("send-error").textContent = "";
  const text = $("text").value;
  if (!peer) { $("send-error").textContent = "Open a conversation first."; $("peer").focus(); return; }
  if (!text.trim()) { $("send-error").textContent = "Type a message first."; return; }
  try {
    await client.send(peer, text);
    $("text").value = "";
  } catch (err) {
    $("send-error").textContent = `Not sent: ${err.message}`;
  }
}

$("composer").addEventListener("submit", (event) => { event.preventDefault(); send(); });
$("text").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); send(); }
});
