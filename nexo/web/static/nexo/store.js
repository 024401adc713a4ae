// One IndexedDB database per browser origin; one key-value store per account. Device
// private keys are non-extractable CryptoKeys, stored as such (structured clone): the
// page can use them, never read their bytes.
const DB_NAME = "nexo";

function request(req) {
  return new Promise((resolve, reject) => { req.onsuccess = () => resolve(req.result); req.onerror = () => reject(req.error); });
}

let dbPromise = null;
function database() {
  dbPromise ??= new Promise((resolve, reject) => {
    const req = indexedDB.open(DB_NAME, 1);
    req.onupgradeneeded = () => { req.result.createObjectStore("kv"); req.result.createObjectStore("outbox"); };
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  return dbPromise;
}

/** Keys are prefixed with the server origin's account: `<username>/<name>`. */
export class Store {
  constructor(username) { this.prefix = `${username}/`; }

  async tx(store, mode, fn) {
    const db = await database();
    const t = db.transaction(store, mode);
    const result = await fn(t.objectStore(store));
    await new Promise((resolve, reject) => { t.oncomplete = resolve; t.onerror = () => reject(t.error); t.onabort = () => reject(t.error); });
    return result;
  }

  get(name) { return this.tx("kv", "readonly", (s) => request(s.get(this.prefix + name))); }
  put(name, value) { return this.tx("kv", "readwrite", (s) => request(s.put(value, this.prefix + name))); }

  /** The outbox: messages keep their message_id (and sealed body) until acked. */
  queue(item) { return this.tx("outbox", "readwrite", (s) => request(s.put(item, this.prefix + item.message_id))); }
  unqueue(id) { return this.tx("outbox", "readwrite", (s) => request(s.delete(this.prefix + id))); }
  async outbox() {
    const range = IDBKeyRange.bound(this.prefix, `${this.prefix}\uffff`);
    const items = await this.tx("outbox", "readonly", (s) => request(s.getAll(range)));
    return items.sort((a, b) => a.queued_at - b.queued_at);
  }
}
