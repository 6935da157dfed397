//! pb-server placeholder
