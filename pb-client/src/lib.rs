//! pb-client placeholder
