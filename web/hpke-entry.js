// The only npm code the browser runs: RFC 9180 HPKE with DHKEM(X25519, HKDF-SHA256),
// HKDF-SHA256 and ChaCha20-Poly1305 (WebCrypto has X25519 but no ChaCha20-Poly1305).
// Bundled into nexo/web/static/vendor/hpke.js by scripts/build-web.
export { CipherSuite, DhkemX25519HkdfSha256, HkdfSha256 } from "@hpke/core";
export { Chacha20Poly1305 } from "@hpke/chacha20poly1305";
