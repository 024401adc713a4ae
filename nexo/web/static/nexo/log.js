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

// -- witnesses: C2SP signed-note checkpoints and tlog-cosignature v1 ------------------------

const EM_DASH = "\u2014";

async function noteKeyId(name, algorithm, publicKey) {
  return (await sha256(enc.encode(`${name}\n`), Uint8Array.of(algorithm), publicKey)).slice(0, 4);
}

/** A trusted witness from its C2SP vkey `<name>+<hex key ID>+<base64(0x04 || key)>`. */
export async function parseWitness(vkey) {
  // Split from the left, as the SDK does: the base64 part may itself hold "+".
  const text = vkey.trim(), first = text.indexOf("+"), second = text.indexOf("+", first + 1);
  const parts = first > 0 && second > first ? [text.slice(0, first), text.slice(first + 1, second), text.slice(second + 1)] : [];
  let blob = null;
  try { blob = parts.length === 3 ? b64d(parts[2], "vkey") : null; } catch { blob = null; }
  if (!blob || blob.length !== 33 || blob[0] !== 0x04) {
    throw new Error(`witness key ${vkey.trim()} is not an Ed25519 cosignature vkey (name+keyid+base64)`);
  }
  const witness = { name: parts[0], publicKey: blob.slice(1) };
  witness.keyId = await noteKeyId(witness.name, 0x04, witness.publicKey);
  if ([...witness.keyId].map((b) => b.toString(16).padStart(2, "0")).join("") !== parts[1].toLowerCase()) {
    throw new Error(`witness key ${vkey.trim()}: key ID does not match the key`);
  }
  return witness;
}

/** The tree head and signature lines of a checkpoint note (GET /api/log/checkpoint). */
export async function parseCheckpoint(note, logKey) {
  const at = note.indexOf("\n\n");
  if (at < 0) throw proofInvalid("checkpoint has no blank line before its signatures");
  const body = note.slice(0, at), lines = body.split("\n");
  if (lines.length !== 6) throw proofInvalid(`checkpoint body has ${lines.length} lines, Nexo's has 6`);
  const signatures = [];
  for (const line of note.slice(at + 2).split("\n")) {
    const parts = line.startsWith(`${EM_DASH} `) ? line.slice(2).split(" ") : [];
    if (parts.length === 2) signatures.push({ name: parts[0], blob: b64d(parts[1], "checkpoint signature") });
  }
  const wanted = await noteKeyId(lines[0], 0x01, logKey);
  const own = signatures.find((s) => s.name === lines[0] && equal(s.blob.slice(0, 4), wanted));
  if (!own || own.blob.length !== 68) {
    throw new VerificationError("SignatureInvalid", "checkpoint carries no signature by the log's pinned key");
  }
  const head = await parseHead({ origin: lines[0], tree_size: lines[1], root_hash: lines[2], index: lines[3],
                                 timestamp_ms: lines[4], prev_sth_hash: lines[5], signature: b64e(own.blob.slice(4)) });
  if (new TextDecoder().decode(head.body) !== `${body}\n`) throw proofInvalid("checkpoint body is not in canonical form");
  return { head, signatures };
}

/** Names of the trusted witnesses whose cosignature verifies; at least `quorum`, a forged one is an error. */
export async function verifyCosignatures(checkpoint, witnesses, quorum) {
  const valid = [];
  for (const w of witnesses) {
    const line = checkpoint.signatures.find((s) => s.name === w.name && equal(s.blob.slice(0, 4), w.keyId));
    if (!line) continue;
    const cosigned = new VerificationError("CosignatureInvalid", `cosignature by witness ${w.name} does not verify`);
    if (line.blob.length !== 76) throw cosigned;
    const time = new DataView(line.blob.buffer, line.blob.byteOffset + 4, 8).getBigUint64(0);
    const message = enc.encode(`cosignature/v1\ntime ${time}\n`);
    const key = await crypto.subtle.importKey("raw", w.publicKey, { name: "Ed25519" }, false, ["verify"]);
    const signed = new Uint8Array(message.length + checkpoint.head.body.length);
    signed.set(message); signed.set(checkpoint.head.body, message.length);
    if (!await crypto.subtle.verify({ name: "Ed25519" }, key, line.blob.slice(12), signed)) throw cosigned;
    valid.push(w.name);
  }
  if (valid.length < quorum) {
    throw new VerificationError("CosignatureInvalid",
      `${valid.length} valid witness cosignature(s) of ${witnesses.length} configured, quorum is ${quorum}`);
  }
  return valid;
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

  /** The witnesses this browser trusts for this account (vkeys saved by the user); all must cosign. */
  async witnesses() {
    return Promise.all(((await this.store.get("witnesses")) || []).map(parseWitness));
  }

  async latest() {
    const key = await this.logKey();
    const witnesses = await this.witnesses();
    let head, cosigned = null;
    if (witnesses.length) {
      const checkpoint = await parseCheckpoint(await this.api.text("/api/log/checkpoint"), key);
      head = checkpoint.head;
      await verifyHead(head, key);
      cosigned = await verifyCosignatures(checkpoint, witnesses, witnesses.length);
    } else {
      head = await parseHead(await this.api.json("GET", "/api/sth/latest", { auth: false }));
      await verifyHead(head, key);
    }
    const lookup = await this.extend(head);
    lookup.cosigned = cosigned;
    return lookup;
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
