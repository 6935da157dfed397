//! AMP command derive (in progress).
