// The message envelope of docs/client.md ("The envelope"), byte for byte as the SDK
// writes it: HPKE (RFC 9180, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305,
// base mode, info "nexo-envelope/v1", empty AAD) to each device, one Ed25519 signature
// over the canonical JSON of the envelope without "sig".
import { CipherSuite, DhkemX25519HkdfSha256, HkdfSha256, Chacha20Poly1305 } from "../vendor/hpke.js";
import { b64d, b64e } from "./log.js";

export const VERSION = 1;
export const SUITE_NAME = "DHKEM-X25519-HKDF-SHA256/HKDF-SHA256/ChaCha20Poly1305";
const INFO = new TextEncoder().encode("nexo-envelope/v1");
const FIELDS = ["message_id", "recipients", "sender", "sig", "suite", "to", "v"];
const suite = new CipherSuite({ kem: new DhkemX25519HkdfSha256(), kdf: new HkdfSha256(), aead: new Chacha20Poly1305() });

export class EnvelopeInvalid extends Error { constructor(m) { super(m); this.name = "EnvelopeInvalid"; this.kind = "EnvelopeInvalid"; } }

/** Sorted keys, no whitespace, ASCII only: Python's json.dumps(sort_keys, separators, ensure_ascii). */
export function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const keys = Object.keys(value).sort();
    return `{${keys.map((k) => `${canonical(k)}:${canonical(value[k])}`).join(",")}}`;
  }
  if (typeof value === "number" && !Number.isInteger(value)) throw new Error("only integers are canonical here");
  return JSON.stringify(value).replace(/[\u007f-\uffff]/g,
    (c) => (c === "\u007f" ? c : `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`));
}

const bytes = (text) => new TextEncoder().encode(text);

/** Encrypt `text` to every {device_id, public_key} and sign with `signingKey`: the body string. */
export async function seal(text, { messageId, to, senderUser, senderDevice, signingKey, recipients }) {
  const unique = new Map(recipients.map((r) => [r.device_id, r.public_key]));
  const entries = [];
  for (const device of [...unique.keys()].sort()) {
    const recipientPublicKey = await suite.kem.deserializePublicKey(unique.get(device));
    const sealed = await suite.seal({ recipientPublicKey, info: INFO }, bytes(text));
    entries.push({ device, enc: b64e(sealed.enc), ct: b64e(sealed.ct) });
  }
  if (!entries.length) throw new Error("an envelope needs at least one recipient device");
  const doc = { v: VERSION, suite: SUITE_NAME, message_id: messageId, to,
                sender: { user: senderUser, device: senderDevice }, recipients: entries };
  doc.sig = b64e(await crypto.subtle.sign({ name: "Ed25519" }, signingKey, bytes(canonical(doc))));
  return canonical(doc);
}

/** The envelope's JSON, shape-checked, or EnvelopeInvalid. */
export function parse(body) {
  let doc;
  try { doc = JSON.parse(body); } catch { throw new EnvelopeInvalid("message body is not a JSON envelope"); }
  if (!doc || typeof doc !== "object" || Array.isArray(doc) || Object.keys(doc).sort().join() !== FIELDS.join()) {
    throw new EnvelopeInvalid(`envelope fields are not exactly ${FIELDS.join(", ")}`);
  }
  if (doc.v !== VERSION || doc.suite !== SUITE_NAME) throw new EnvelopeInvalid(`unsupported envelope ${doc.v} / ${doc.suite}`);
  const s = doc.sender;
  if (!s || typeof s !== "object" || Object.keys(s).sort().join() !== "device,user") {
    throw new EnvelopeInvalid("envelope sender must be {user, device}");
  }
  if (!Array.isArray(doc.recipients) ||
      !doc.recipients.every((r) => r && typeof r === "object" && Object.keys(r).sort().join() === "ct,device,enc")) {
    throw new EnvelopeInvalid("envelope recipients must be a list of {device, enc, ct}");
  }
  return doc;
}

/** Verify the signature with the sender's (verified) key, then decrypt this device's entry. */
export async function open(doc, { senderKey, device, keyPair }) {
  const { sig, ...unsigned } = doc;
  let ok = false;
  try {
    const key = await crypto.subtle.importKey("raw", senderKey, { name: "Ed25519" }, false, ["verify"]);
    ok = await crypto.subtle.verify({ name: "Ed25519" }, key, b64d(sig, "sig"), bytes(canonical(unsigned)));
  } catch { ok = false; }
  if (!ok) throw new EnvelopeInvalid("envelope signature does not verify with the sender device's key");
  const mine = doc.recipients.find((r) => r.device === device);
  if (!mine) throw new EnvelopeInvalid("envelope has no entry for this device");
  try {
    const pt = await suite.open({ recipientKey: keyPair, enc: b64d(mine.enc, "enc"), info: INFO }, b64d(mine.ct, "ct"));
    return { messageId: String(doc.message_id), senderUser: String(doc.sender.user),
             senderDevice: String(doc.sender.device), to: String(doc.to),
             text: new TextDecoder("utf-8", { fatal: true }).decode(pt) };
  } catch {
    throw new EnvelopeInvalid("envelope entry for this device does not decrypt");
  }
}
