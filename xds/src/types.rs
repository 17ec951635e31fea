//! Small value types shared by the Istio API and the proxy's configuration.

use serde::{Deserialize, Serialize};

/// A percentage in `[0.0, 100.0]`, written `{value: 0.1}` as in Istio.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

impl Percent {
    pub const ALL: Percent = Percent { value: 100.0 };

    pub fn new(value: f64) -> Self {
        Percent { value }
    }

    /// Whether a uniform random draw in `[0, 1)` falls inside this share.
    pub fn includes(&self, draw: f64) -> bool {
        draw * 100.0 < self.value
    }

    pub fn is_valid(&self) -> bool {
        (0.0..=100.0).contains(&self.value)
    }
}
