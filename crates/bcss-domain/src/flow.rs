//! The flow messages the hub carries.

use std::fmt;
use std::str::FromStr;

/// A flow (message type) of the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Flow {
    /// Periods of incapacity for work and other social risks, from health-insurance funds.
    A052,
    /// The employer's quarterly multifunctional declaration (also DmfAPPL).
    Dmfa,
    /// The immediate declaration of employment.
    Dimona,
}

impl Flow {
    pub const ALL: [Flow; 3] = [Flow::A052, Flow::Dmfa, Flow::Dimona];

    /// The name used in configuration files and reports.
    pub fn name(self) -> &'static str {
        match self {
            Flow::A052 => "A052",
            Flow::Dmfa => "DMFA",
            Flow::Dimona => "DIMONA",
        }
    }
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The text is not one of the flow names.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown flow `{0}`: expected A052, DMFA or DIMONA")]
pub struct UnknownFlow(pub String);

impl FromStr for Flow {
    type Err = UnknownFlow;

    fn from_str(s: &str) -> Result<Flow, UnknownFlow> {
        Flow::ALL
            .into_iter()
            .find(|flow| flow.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownFlow(s.to_owned()))
    }
}
