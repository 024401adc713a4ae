// Verified keys only: tree heads, Merkle proofs (RFC 9162) and log leaves, checked with
// WebCrypto. The rules are the SDK's (docs/client.md); names of failures match its exceptions.

export class VerificationError extends Error {
  constructor(kind, message) { super(message); this.kind = kind; this.name = kind; }
}
const proofInvalid = (m) => new VerificationError("ProofInvalid", m);
const splitView = (m) => new VerificationError("SplitViewDetected", m);

const enc = new TextEncoder();

export function b64e(bytes) {
  let s = "";
  for (const b of new Uint8Array(bytes)) s += String.fromCharCode(b);
  return btoa(s);
}

export function b64d(text, what) {
  if (typeof text !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4) {
    throw proofInvalid(`${what} is not base64`);
  }
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

export const equal = (a, b) => a.length === b.length && a.every((v, i) => v === b[i]);

async function sha256(...parts) {
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { all.set(p, at); at += p.length; }
  return new Uint8Array(await crypto.subtle.digest("SHA-256", all));
}

export const leafHash = (leaf) => sha256(Uint8Array.of(0), leaf);
const nodeHash = (l, r) => sha256(Uint8Array.of(1), l, r);

/** RFC 9162 §2.1.3.2: `leaf` (a leaf hash) is leaf `index` of the tree `root` of `size`. */
export async function verifyInclusion(index, size, leaf, path, root) {
  if (!(index >= 0 && index < size)) throw proofInvalid(`leaf ${index} is outside a tree of ${size}`);
  let fn = index, sn = size - 1, r = leaf;
  for (const p of path) {
    if (sn === 0) throw proofInvalid("inclusion proof is longer than the tree is deep");
    if (fn % 2 === 1 || fn === sn) {
      r = await nodeHash(p, r);
      while (fn !== 0 && fn % 2 === 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
    } else {
      r = await nodeHash(r, p);
    }
    fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
  }
  if (sn !== 0 || !equal(r, root)) {
    throw proofInvalid(`inclusion proof of leaf ${index} does not lead to the root of tree ${size}`);
  }
}

/** RFC 9162 §2.1.4.2: the tree of size `second` extends the tree of size `first`. */
export async function verifyConsistency(first, second, firstRoot, secondRoot, path) {
  if (second < first) throw proofInvalid(`tree shrank from ${first} to ${second}`);
  if (first === 0) return;
  if (first === second) {
    if (path.length || !equal(firstRoot, secondRoot)) throw proofInvalid(`two different roots for size ${first}`);
    return;
  }
  if (!path.length) throw proofInvalid("empty consistency proof for different tree sizes");
  const items = [...path];
  if ((first & (first - 1)) === 0) items.unshift(firstRoot);
  let fn = first - 1, sn = second - 1;
  while (fn % 2 === 1) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
  let fr = items[0], sr = items[0];
  for (const c of items.slice(1)) {
    if (sn === 0) throw proofInvalid("consistency proof is too long");
    if (fn % 2 === 1 || fn === sn) {
      fr = await nodeHash(c, fr); sr = await nodeHash(c, sr);
      while (fn !== 0 && fn % 2 === 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
    } else {
      sr = await nodeHash(sr, c);
    }
    fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
  }
  if (sn !== 0 || !equal(fr, firstRoot) || !equal(sr, secondRoot)) {
    throw proofInvalid(`tree ${second} does not extend tree ${first}`);
  }
}

/** A tree head as served: parsed, with its signed body and hash (docs/transparency.md). */
export async function parseHead(doc) {
  try {
    const head = {
      index: Number(doc.index), tree_size: Number(doc.tree_size), timestamp_ms: Number(doc.timestamp_ms),
      origin: String(doc.origin), root_hash: b64d(doc.root_hash, "root_hash"),
      prev_sth_hash: b64d(doc.prev_sth_hash, "prev_sth_hash"), signature: b64d(doc.signature, "signature"),
    };
    if (!Number.isSafeInteger(head.index) || !Number.isSafeInteger(head.tree_size) || head.index < 0 ||
        head.tree_size < 0 || head.root_hash.length !== 32 || head.signature.length !== 64) {
      throw proofInvalid("malformed tree head");
    }
    const lines = [head.origin, head.tree_size, doc.root_hash, head.index, head.timestamp_ms, doc.prev_sth_hash];
    head.body = enc.encode(lines.map((l) => `${l}\n`).join(""));
    head.sth_hash = await sha256(head.body, head.signature);
    return head;
  } catch (err) {
    if (err instanceof VerificationError) throw err;
    throw proofInvalid(`malformed tree head: ${err.message}`);
  }
}

export function headToJson(head) {
  return { index: head.index, tree_size: head.tree_size, timestamp_ms: head.timestamp_ms, origin: head.origin,
           root_hash: b64e(head.root_hash), prev_sth_hash: b64e(head.prev_sth_hash),
           signature: b64e(head.signature) };
}

async function verifyHead(head, logKey) {
  const key = await crypto.subtle.importKey("raw", logKey, { name: "Ed25519" }, false, ["verify"]);
  if (!await crypto.subtle.verify({ name: "Ed25519" }, key, head.signature, head.body)) {
    throw new VerificationError("SignatureInvalid",
      `tree head ${head.index} (size ${head.tree_size}) is not signed by the pinned log key`);
  }
}

function checkLeaf(leaf, deviceId, username, keyType, publicKey) {
  let event;
  try { event = JSON.parse(new TextDecoder().decode(leaf)); } catch { event = null; }
  if (!event || typeof event !== "object") throw proofInvalid(`device ${deviceId}: its log leaf is not a Nexo key event`);
  if (event.action !== "register" || event.device_id !== deviceId || event.key_type !== keyType) {
    throw proofInvalid(`device ${deviceId}: the log leaf records another event or device`);
  }
  if (!equal(b64d(event.public_key, "leaf public_key"), publicKey)) {
    throw proofInvalid(`device ${deviceId}: the key served differs from the key in the log`);
  }
  if (username !== null && event.username !== username.toLowerCase()) {
    throw proofInvalid(`device ${deviceId}: the log leaf belongs to ${event.username}, not ${username}`);
  }
}

/**
 * The browser's view of the log. `store` keeps the pinned log key and the last verified
 * tree head; nothing is stored until every check of an operation passed (`commit`).
 */
export class LogVerifier {
  constructor(api, store) { this.api = api; this.store = store; }

  async logKey() {
    const pinned = await this.store.get("log_key");
    if (pinned) return b64d(pinned.public_key, "pinned log key");
    const doc = await this.api.json("GET", "/api/log/key", { auth: false });
    const key = b64d(doc.public_key, "log public key");
    if (key.length !== 32) throw proofInvalid("the log's public key is not 32 bytes");
    await this.store.put("log_key", { public_key: doc.public_key, origin: doc.origin });
    return key;
  }

  async trusted() {
    const doc = await this.store.get("sth");
    return doc ? parseHead(doc) : null;
  }

  async latest() {
    const key = await this.logKey();
    const head = await parseHead(await this.api.json("GET", "/api/sth/latest", { auth: false }));
    await verifyHead(head, key);
    return this.extend(head);
  }

  /** Check that a signature-checked `head` extends the last one this browser verified. */
  async extend(head) {
    const previous = await this.trusted();
    const lookup = { head, previous, consistentFrom: null };
    if (!previous) return lookup; // trust on first use
    if (head.origin !== previous.origin) throw splitView(`log origin changed from ${previous.origin} to ${head.origin}`);
    if (head.tree_size < previous.tree_size || head.index < previous.index) {
      throw splitView(`the server's tree head (#${head.index}, size ${head.tree_size}) is older than the one ` +
                      `this browser verified (#${previous.index}, size ${previous.tree_size})`);
    }
    if (head.index === previous.index && !equal(head.sth_hash, previous.sth_hash)) {
      throw splitView(`two different tree heads with index ${head.index}`);
    }
    let path = [];
    if (previous.tree_size && head.tree_size !== previous.tree_size) {
      const doc = await this.api.json("GET",
        `/api/log/proof/consistency?first=${previous.tree_size}&second=${head.tree_size}`, { auth: false });
      path = (doc.consistency_path || []).map((p) => b64d(p, "consistency_path"));
    }
    try {
      await verifyConsistency(previous.tree_size, head.tree_size, previous.root_hash, head.root_hash, path);
    } catch (err) {
      throw splitView(`tree head #${head.index} (size ${head.tree_size}) is not consistent with the verified ` +
                      `tree head #${previous.index} (size ${previous.tree_size}): ${err.message}`);
    }
    lookup.consistentFrom = previous;
    return lookup;
  }

  async commit(head) {
    const previous = await this.trusted();
    if (!previous || head.tree_size > previous.tree_size || head.index > previous.index) {
      await this.store.put("sth", headToJson(head));
    }
  }

  /** A device registration answer: its STH, our leaf and its inclusion proof. */
  async verifyRegistration(answer, publicKey, keyType) {
    const key = await this.logKey();
    const head = await parseHead(answer.sth);
    await verifyHead(head, key);
    const lookup = await this.extend(head);
    const leaf = b64d(answer.log.leaf, "leaf");
    checkLeaf(leaf, answer.device.id, null, keyType, publicKey);
    const path = (answer.inclusion_proof || []).map((p) => b64d(p, "inclusion_proof"));
    await verifyInclusion(Number(answer.log.leaf_index), head.tree_size, await leafHash(leaf), path, head.root_hash);
    return lookup;
  }

  /** Every active key of `username`, each proven by an inclusion proof against a fresh verified head. */
  async userKeys(username) {
    const devices = (await this.api.json("GET", `/api/users/${encodeURIComponent(username)}/devices`)).devices;
    const lookup = await this.latest(); // after the list: every listed leaf is in this head
    const keys = await Promise.all(devices.map((d) => this.prove(username, d, lookup.head)));
    return { lookup, keys };
  }

  async prove(username, device, head) {
    const index = Number(device.leaf_index);
    if (!(index < head.tree_size)) throw proofInvalid(`device ${device.id}: leaf ${index} is beyond the verified tree`);
    const [entries, proof] = await Promise.all([
      this.api.json("GET", `/api/log/entries?start=${index}&end=${index}`, { auth: false }),
      this.api.json("GET", `/api/log/proof/inclusion?leaf_index=${index}&tree_size=${head.tree_size}`, { auth: false }),
    ]);
    if (!entries.entries?.length) throw proofInvalid(`device ${device.id}: the log has no leaf ${index}`);
    const leaf = b64d(entries.entries[0].leaf, "leaf");
    const publicKey = b64d(device.public_key, "public_key");
    checkLeaf(leaf, String(device.id), username, String(device.key_type), publicKey);
    const path = (proof.audit_path || []).map((p) => b64d(p, "audit_path"));
    try {
      await verifyInclusion(index, head.tree_size, await leafHash(leaf), path, head.root_hash);
    } catch (err) {
      throw proofInvalid(`${username}'s device ${device.id}: ${err.message}`);
    }
    return { device_id: String(device.id), username, key_type: String(device.key_type), public_key: publicKey,
             leaf_index: index, name: String(device.name || ""), tree_size: head.tree_size, sth_index: head.index };
  }
}
