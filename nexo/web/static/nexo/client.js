// The web client's logic, without any DOM: account, device keys, verified peer keys,
// the outbox (exactly once by message_id) and the WebSocket. The page (chat.js) listens
// to its events: "status", "device", "peer", "message", "acked", "queued", "warning".
import { Api, ApiError } from "./api.js";
import { Store } from "./store.js";
import { LogVerifier, VerificationError, b64d, b64e, parseWitness } from "./log.js";
import * as envelope from "./envelope.js";

const RECONNECT_MAX_MS = 15_000;
const KEY_CACHE_MS = 30_000;

export class KeyChanged extends Error {
  constructor(message) { super(message); this.name = "KeyChanged"; this.kind = "KeyChanged"; }
}

export class WebClient extends EventTarget {
  constructor() {
    super();
    this.api = new Api();
    this.api.onSignedOut = (err) => this.emit("warning", { text: `Signed out: ${err.message}. Log in again.` });
    this.ws = null;
    this.online = navigator.onLine;
    this.attempt = 0;
    this.peers = new Map(); // username -> {keys, lookup, at}
    this.seenSeq = new Set();
    this.held = new Map(); // username -> reason: a failed check blocks sending to them
    addEventListener("offline", () => { this.online = false; this.ws?.close(1000, "offline"); });
    addEventListener("online", () => { this.online = true; this.attempt = 0; this.connect(); });
  }

  emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }

  // -- account and device -----------------------------------------------------------------

  async register(username, password) {
    await this.api.json("POST", "/api/auth/register", { auth: false, body: { username, password } });
    await this.login(username, password);
  }

  async login(username, password) {
    const tokens = await this.api.json("POST", "/api/auth/login", { auth: false, body: { username, password } });
    this.api.setTokens(tokens);
    this.username = username.toLowerCase();
    this.store = new Store(this.username);
    this.verifier = new LogVerifier(this.api, this.store);
    this.cursor = (await this.store.get("cursor")) || 0;
    await this.ensureDevice();
    this.connect();
    for (const item of await this.store.outbox()) this.emit("queued", item);
  }

  /** Make the device keys on first use (non-extractable), register both in the log, check the proofs. */
  async ensureDevice() {
    let identity = await this.store.get("identity");
    if (!identity) {
      identity = {
        signing: await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]),
        encryption: await crypto.subtle.generateKey({ name: "X25519" }, false, ["deriveBits"]),
      };
      await this.store.put("identity", identity);
    }
    this.identity = identity;
    let device = await this.store.get("device");
    if (!device) {
      device = {};
      for (const [keyType, pair] of [["ed25519", identity.signing], ["x25519", identity.encryption]]) {
        const publicKey = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
        const answer = await this.api.json("POST", "/api/devices",
          { body: { name: `browser ${navigator.platform || ""}`.trim().slice(0, 64), public_key: b64e(publicKey), key_type: keyType } });
        const lookup = await this.verifier.verifyRegistration(answer, publicKey, keyType);
        await this.verifier.commit(lookup.head);
        device[keyType] = { id: answer.device.id, leaf_index: Number(answer.log.leaf_index), public_key: b64e(publicKey),
                            sth_index: lookup.head.index, tree_size: lookup.head.tree_size };
      }
      await this.store.put("device", device);
    }
    this.device = device;
    this.emit("device", { device, sth: await this.store.get("sth") });
  }

  // -- verified keys ------------------------------------------------------------------------

  /** Active keys of `username`, each proven in the log; a changed key set is KeyChanged until accepted. */
  async keysOf(username, { fresh = false } = {}) {
    username = username.toLowerCase();
    const cached = this.peers.get(username);
    if (cached && !fresh && Date.now() - cached.at < KEY_CACHE_MS) return cached.keys;
    try {
      const { lookup, keys } = await this.verifier.userKeys(username);
      const seen = await this.store.get(`peer/${username}`);
      const now = Object.fromEntries(keys.map((k) => [k.device_id, b64e(k.public_key)]));
      if (seen && username !== this.username && !sameKeys(seen, now)) {
        throw new KeyChanged(`${username}'s keys changed since this browser last verified them`);
      }
      await this.verifier.commit(lookup.head);
      await this.store.put(`peer/${username}`, now);
      this.held.delete(username);
      const state = { username, keys, sthIndex: lookup.head.index, treeSize: lookup.head.tree_size, cosigned: lookup.cosigned,
                      consistentWith: lookup.consistentFrom ? lookup.consistentFrom.index : null, at: Date.now() };
      this.peers.set(username, state);
      this.emit("peer", state);
      return keys;
    } catch (err) {
      if (err instanceof VerificationError || err instanceof KeyChanged) {
        this.held.set(username, err);
        this.peers.delete(username);
        this.emit("peer", { username, error: err });
      }
      throw err;
    }
  }

  /** Save the witnesses to require (C2SP vkeys, one per line; empty: none); checked before saving. */
  async setWitnesses(text) {
    const vkeys = text.split("\n").map((l) => l.trim()).filter(Boolean);
    await Promise.all(vkeys.map(parseWitness));
    await this.store.put("witnesses", vkeys);
    this.peers.clear();
    return vkeys.length;
  }

  async witnessText() { return ((await this.store.get("witnesses")) || []).join("\n"); }

  /** Trust `username`'s current (verified) keys after a key change. */
  async acceptKeys(username) {
    await this.store.put(`peer/${username}`, null);
    this.held.delete(username);
    await this.keysOf(username, { fresh: true });
    this.flush();
  }

  // -- sending: the outbox ------------------------------------------------------------------

  /** Queue `text` for `to` with its message_id at once; it is sent (once) when connected. */
  async send(to, text) {
    to = to.toLowerCase();
    if (this.held.has(to)) throw this.held.get(to);
    const item = { message_id: crypto.randomUUID(), to, text, body: null, queued_at: Date.now() };
    await this.store.queue(item);
    this.emit("queued", item);
    this.flush();
    return item.message_id;
  }

  async seal(item) {
    const mine = this.device.x25519.id;
    let keys = (await this.keysOf(item.to, { fresh: true })).filter((k) => k.key_type === "x25519");
    if (!keys.length) throw new Error(`${item.to} has no device with an encryption key yet`);
    if (item.to !== this.username) keys = keys.concat((await this.keysOf(this.username)).filter((k) => k.key_type === "x25519"));
    return envelope.seal(item.text, {
      messageId: item.message_id, to: item.to, senderUser: this.username, senderDevice: this.device.ed25519.id,
      signingKey: this.identity.signing.privateKey, recipients: keys.filter((k) => k.device_id !== mine),
    });
  }

  async flush() {
    if (this.flushing) { this.flushAgain = true; return; }
    this.flushing = true;
    try {
      do {
        this.flushAgain = false;
        for (const item of await this.store.outbox()) {
          if (!this.ws || this.ws.readyState !== WebSocket.OPEN || !this.authenticated) return;
          if (this.held.has(item.to)) continue;
          if (!item.body) {
            try {
              item.body = await this.seal(item); // sealed once: a resend carries the same bytes
            } catch (err) {
              if (err instanceof ApiError && err.status === 0) return; // offline: try on reconnect
              this.emit("warning", { to: item.to, message_id: item.message_id,
                                     text: `Not sent to ${item.to}: ${err.message}` });
              continue;
            }
            await this.store.queue(item);
          }
          this.ws.send(JSON.stringify({ type: "send", message_id: item.message_id, to: item.to, body: item.body }));
        }
      } while (this.flushAgain);
    } finally {
      this.flushing = false;
    }
  }

  // -- the connection -----------------------------------------------------------------------

  connect() {
    if (!this.online || !this.api.access || (this.ws && this.ws.readyState <= WebSocket.OPEN)) return;
    const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
    this.ws = ws;
    this.authenticated = false;
    this.emit("status", { state: "connecting" });
    ws.onopen = async () => {
      ws.send(JSON.stringify({ type: "auth", token: await this.api.token() }));
      ws.send(JSON.stringify({ type: "sync", since: this.cursor }));
      this.authenticated = true;
      this.attempt = 0;
      this.emit("status", { state: "online" });
      this.flush();
    };
    ws.onmessage = (event) => this.incoming(JSON.parse(event.data)).catch((err) =>
      this.emit("warning", { text: `A message could not be handled: ${err.message}` }));
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.authenticated = false;
      this.emit("status", { state: this.online ? "reconnecting" : "offline", code: event.code });
      if (event.code === 4401) { this.api.expiresAt = 0; }
      if (!this.online) return;
      const delay = Math.min(RECONNECT_MAX_MS, 500 * 2 ** this.attempt++) * (0.5 + Math.random() / 2);
      setTimeout(() => this.connect(), delay);
    };
    clearInterval(this.renewTimer);
    this.renewTimer = setInterval(async () => {
      if (this.ws === ws && ws.readyState === WebSocket.OPEN && Date.now() > this.api.expiresAt - 120_000) {
        ws.send(JSON.stringify({ type: "auth", token: await this.api.token() }));
      }
    }, 30_000);
  }

  async incoming(frame) {
    if (frame.type === "ack") {
      await this.store.unqueue(frame.message_id);
      this.emit("acked", frame);
      return;
    }
    if (frame.type === "error") {
      this.emit("warning", { text: `Server: ${frame.message} (${frame.code})`, message_id: frame.message_id });
      return;
    }
    if (frame.type !== "message" || this.seenSeq.has(frame.seq)) return;
    this.seenSeq.add(frame.seq);
    try {
      const doc = envelope.parse(String(frame.body));
      if (doc.message_id !== frame.message_id || doc.sender.user !== frame.from || doc.to !== frame.to) {
        throw new envelope.EnvelopeInvalid("envelope does not match the message it came in (id, sender or recipient)");
      }
      if (doc.sender.device !== this.device.ed25519.id) { // our own message echoed by sync is shown already
        const senderKey = await this.senderKey(doc.sender.user, doc.sender.device);
        const opened = await envelope.open(doc, { senderKey, device: this.device.x25519.id, keyPair: this.identity.encryption });
        this.emit("message", { ...opened, seq: frame.seq, server_ts: frame.server_ts, verified: true });
        this.ws?.send(JSON.stringify({ type: "delivered", message_id: frame.message_id }));
      }
    } catch (err) {
      this.emit("warning", { text: `A message from ${frame.from} failed verification and is not shown: ${err.message}` });
    }
    if (frame.seq > this.cursor) { this.cursor = frame.seq; await this.store.put("cursor", this.cursor); }
  }

  async senderKey(user, deviceId) {
    for (const fresh of [false, true]) {
      const key = (await this.keysOf(user, { fresh })).find((k) => k.device_id === deviceId && k.key_type === "ed25519");
      if (key) return key.public_key;
    }
    throw new envelope.EnvelopeInvalid(`sender device ${deviceId} is not an active, logged key of ${user}`);
  }
}

function sameKeys(a, b) {
  if (a === null) return true; // accepted by the user: the next verified set is the new baseline
  const ka = Object.keys(a).sort(), kb = Object.keys(b).sort();
  return ka.join() === kb.join() && ka.every((k) => a[k] === b[k]);
}

export { b64d };
