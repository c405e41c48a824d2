//! daolinet-agent (work in progress).
