//! DNS proxy (in progress).
