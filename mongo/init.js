// Zowy Gateway: collections and indexes, for the official mongo image's /docker-entrypoint-initdb.d/.
// The gateway creates the same on start (MongoStore.init); this lets a database be prepared ahead.
// The INDEXES block is JSON and must equal app/store/mongo/ INDEXES (tests/store/test_mongo_init.py).

const target = db.getSiblingDB(process.env.ZOWY_MONGO_DB || "zowy");

// BEGIN INDEXES
const INDEXES = {
  "accounts": [
    {"key": {"name": 1}, "name": "name_unique", "unique": true}
  ],
  "api_keys": [
    {"key": {"key_hash": 1}, "name": "key_hash_unique", "unique": true},
    {"key": {"account_id": 1}, "name": "account_id"}
  ],
  "ledger": [
    {"key": {"account_id": 1, "created_at": 1}, "name": "account_created"},
    {"key": {"state": 1}, "name": "pending", "partialFilterExpression": {"state": "pending"}},
    {"key": {"key_id": 1, "total_tokens": 1}, "name": "key_tokens"}
  ],
  "rate_windows": [
    {"key": {"expires_at": 1}, "name": "expires_at_ttl", "expireAfterSeconds": 0}
  ],
  "owners": [
    {"key": {"email": 1}, "name": "email_unique", "unique": true},
    {"key": {"account_id": 1}, "name": "account_id"}
  ],
  "invites": [
    {"key": {"token_hash": 1}, "name": "token_hash_unique", "unique": true}
  ],
  "sessions": [
    {"key": {"expires_at": 1}, "name": "expires_at"}
  ],
  "codes": [
    {"key": {"code_hash": 1}, "name": "code_hash_unique", "unique": true},
    {"key": {"batch_id": 1}, "name": "batch_id"}
  ],
  "topups": [
    {"key": {"account_id": 1}, "name": "account_id"}
  ],
  "alert_settings": [],
  "alert_outbox": [
    {"key": {"state": 1, "next_at": 1}, "name": "due"},
    {"key": {"account_id": 1, "created_at": 1}, "name": "account_created"}
  ],
  "audit": [
    {"key": {"at": 1}, "name": "at"},
    {"key": {"account_id": 1, "at": 1}, "name": "account_at"}
  ],
  "responses": [
    {"key": {"expires_at": 1}, "name": "expires_at_ttl", "expireAfterSeconds": 0},
    {"key": {"account_id": 1}, "name": "account_id"}
  ]
};
// END INDEXES

const existing = target.getCollectionNames();
for (const [collection, indexes] of Object.entries(INDEXES)) {
  if (!existing.includes(collection)) {
    target.createCollection(collection);
  }
  for (const { key, ...options } of indexes) {
    target.getCollection(collection).createIndex(key, options);
  }
}
print(`zowy: ${Object.keys(INDEXES).length} collections ready in ${target.getName()}`);
