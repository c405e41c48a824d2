//! daolinet-openflow (work in progress).
