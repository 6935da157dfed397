//! AMP, byte-compatible with Twisted (in progress).
