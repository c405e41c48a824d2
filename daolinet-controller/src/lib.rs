//! daolinet-controller (work in progress).
