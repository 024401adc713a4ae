// Run in the page by test_envelope_vectors.py: the SDK's vectors through nexo/envelope.js.
(async (v) => {
  const env = await import("/static/nexo/envelope.js");
  const b64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  // Raw test private keys wrapped as PKCS#8 (RFC 8410): WebCrypto imports no raw private keys.
  const pkcs8 = (oid, raw) => Uint8Array.from([0x30, 0x2e, 2, 1, 0, 0x30, 5, 6, 3, 0x2b, 0x65, oid, 4, 0x22, 4, 0x20,
                                               ...b64(raw)]);
  const doc = env.parse(v.body);
  const { sig, ...unsigned } = doc;
  const signing = await crypto.subtle.importKey("pkcs8", pkcs8(0x70, v.sender.ed25519_private), "Ed25519", false,
                                                ["sign"]);
  const resigned = new Uint8Array(await crypto.subtle.sign("Ed25519", signing,
                                                           new TextEncoder().encode(env.canonical(unsigned))));
  const opened = [];
  for (const r of v.recipients) {
    const privateKey = await crypto.subtle.importKey("pkcs8", pkcs8(0x6e, r.x25519_private), "X25519", false,
                                                     ["deriveBits"]);
    const publicKey = await crypto.subtle.importKey("raw", b64(r.x25519_public), "X25519", true, []);
    opened.push((await env.open(doc, { senderKey: b64(v.sender.ed25519_public), device: r.device,
                                       keyPair: { privateKey, publicKey } })).text);
  }
  let tampered = null;
  try {
    await env.open({ ...doc, to: "mallory" }, { senderKey: b64(v.sender.ed25519_public), device: "x", keyPair: {} });
  } catch (err) { tampered = err.message; }
  return { canonical: env.canonical(unsigned), body: env.canonical(doc), sig: btoa(String.fromCharCode(...resigned)),
           opened, tampered };
})
