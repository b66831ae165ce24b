"""Where finished runs are kept: the SQLite store, the workers' receipts and the claims that
let several coordinators share a store."""
