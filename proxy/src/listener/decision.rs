//! The decision a capture listener's direction makes for a connection (refuse it, or serve it
//! on which listener), kept apart so the pure `decide` functions of [`super::outbound`] and
//! [`super::inbound`] and the shell that acts on it ([`super::serve`]) depend on it one way.

use std::sync::Arc;

use crate::metrics::Reporter;
use crate::snapshot::CompiledListener;
use crate::stats::Refusal;

/// What a capture listener does with an accepted connection, decided by its direction's pure
/// `decide` ([`super::outbound::decide`], [`super::inbound::decide`]) from the configuration and the addresses.
#[derive(Debug)]
pub enum Decision {
    /// Close the connection, counted as refused by `listener` for `why`.
    Refuse {
        /// The listener that refuses (the capture listener's name if the configuration has none).
        listener: String,
        /// Why (the `reason` label of the refused counter).
        why: Refusal,
    },
    /// Hand the connection to `listener`'s filter chains ([`super::dispatch`]).
    Serve {
        /// A virtual listener for the destination, or the capture listener's own chains.
        listener: Arc<CompiledListener>,
        /// Which side's Istio metrics the connection reports.
        reporter: Reporter,
        /// The capture listener that accepted it, when that is another listener (its
        /// `cx_total` counts the accept too, as Envoy's does).
        accepted_by: Option<Arc<CompiledListener>>,
    },
}
