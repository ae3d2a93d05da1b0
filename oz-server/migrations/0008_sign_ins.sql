-- Dashboard sign-ins: a browser's cookie names one of these, made from an API key (the cookie holds
-- its id and a secret whose SHA-256 is kept here). The key is checked again on every request, so a
-- sign-in ends with its key (revoked, expired, its user disabled) as well as at its own expiry.
CREATE TABLE sign_ins (
    id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    created_us INTEGER NOT NULL,
    expires_us INTEGER NOT NULL
);
CREATE INDEX sign_ins_expiry ON sign_ins(expires_us);
