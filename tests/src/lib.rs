//! Privileged end-to-end tests (helpers).
