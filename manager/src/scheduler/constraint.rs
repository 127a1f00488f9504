//! Placement constraints and spread descriptors: parsed once, evaluated against a node.
//!
//! The grammar is Swarm's: `KEY==VALUE` or `KEY!=VALUE`, whitespace around either side
//! ignored. Keys:
//!
//! | key                   | the node's                                   |
//! |-----------------------|----------------------------------------------|
//! | `node.id`             | id                                           |
//! | `node.hostname`       | hostname its agent reports                   |
//! | `node.role`           | role: `manager` or `worker`                  |
//! | `node.platform.os`    | OS its agent reports (`linux`)               |
//! | `node.platform.arch`  | architecture its agent reports (`x86_64`)    |
//! | `node.labels.KEY`     | label KEY (`shoal node update --label-add`)  |
//!
//! As in Swarm, the fixed keys are matched case-insensitively, a label's key exactly, and every
//! value case-insensitively (`node.role==Manager` holds on a manager). A node without the
//! label, or that did not report the attribute, has the empty value: `node.labels.zone!=a`
//! holds on it, `node.labels.zone==a` does not. Swarm's `engine.labels.*` are refused: shoal's
//! agents report no engine labels, and a constraint that can never hold would leave the
//! service pending for ever.
//!
//! A spread descriptor (`--placement-pref spread=node.labels.zone`) names the same attributes
//! without an operator; nodes lacking the attribute form one group of their own.

use std::fmt;

use shoal_proto::{Node, NodeRole, Placement};

/// One node attribute a constraint or a spread preference reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Attribute {
    Id,
    Hostname,
    Role,
    Os,
    Arch,
    /// `node.labels.KEY`: the key, exactly as written.
    Label(String),
}

impl Attribute {
    /// Parses a key such as `node.labels.zone`.
    pub fn parse(key: &str) -> Result<Attribute, PlacementError> {
        let key = key.trim();
        if key.is_empty() {
            return Err(PlacementError::new(key, "the key is empty"));
        }
        const LABELS: &str = "node.labels.";
        if let Some(label) = key.strip_prefix(LABELS) {
            if label.is_empty() {
                return Err(PlacementError::new(
                    key,
                    "the label key is empty: use node.labels.KEY",
                ));
            }
            if !label.chars().all(valid_key_char) {
                return Err(PlacementError::new(
                    key,
                    "the label key may hold letters, digits, '.', '-' and '_' only",
                ));
            }
            return Ok(Attribute::Label(label.to_string()));
        }
        let lower = key.to_ascii_lowercase();
        if lower.starts_with("engine.labels.") {
            return Err(PlacementError::new(
                key,
                "engine labels are not supported (shoal's agents report none): label the node \
                 with `shoal node update --label-add KEY=VALUE` and use node.labels.KEY",
            ));
        }
        match lower.as_str() {
            "node.id" => Ok(Attribute::Id),
            "node.hostname" => Ok(Attribute::Hostname),
            "node.role" => Ok(Attribute::Role),
            "node.platform.os" => Ok(Attribute::Os),
            "node.platform.arch" => Ok(Attribute::Arch),
            _ => Err(PlacementError::new(
                key,
                "unknown key: use node.id, node.hostname, node.role, node.platform.os, \
                 node.platform.arch or node.labels.KEY",
            )),
        }
    }

    /// The node's value for this attribute; empty when the node has none.
    pub fn of<'n>(&self, node: &'n Node) -> &'n str {
        let description = node.description.as_ref();
        let platform = description.and_then(|d| d.platform.as_ref());
        match self {
            Attribute::Id => &node.id,
            Attribute::Hostname => description.map(|d| d.hostname.as_str()).unwrap_or(""),
            Attribute::Role => match node.role() {
                NodeRole::Manager => "manager",
                NodeRole::Worker => "worker",
            },
            Attribute::Os => platform.map(|p| p.os.as_str()).unwrap_or(""),
            Attribute::Arch => platform.map(|p| p.architecture.as_str()).unwrap_or(""),
            Attribute::Label(key) => node.labels.get(key).map(String::as_str).unwrap_or(""),
        }
    }
}

fn valid_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

/// `KEY==VALUE` or `KEY!=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub attribute: Attribute,
    /// `==` when true, `!=` when false.
    pub equal: bool,
    pub value: String,
}

impl Constraint {
    pub fn parse(text: &str) -> Result<Constraint, PlacementError> {
        // Swarm looks for `==` first: in `a!=b==c` the key is `a!=b`, which is then refused.
        let (key, equal, value) = if let Some((k, v)) = text.split_once("==") {
            (k, true, v)
        } else if let Some((k, v)) = text.split_once("!=") {
            (k, false, v)
        } else {
            return Err(PlacementError::new(
                text,
                "no operator: use KEY==VALUE or KEY!=VALUE, e.g. node.labels.zone==a",
            ));
        };
        let attribute = Attribute::parse(key).map_err(|e| e.within(text))?;
        let value = value.trim();
        if value.is_empty() {
            return Err(PlacementError::new(
                text,
                "the value is empty: use KEY==VALUE or KEY!=VALUE",
            ));
        }
        if value.contains("==") || value.contains("!=") || value.chars().any(char::is_control) {
            return Err(PlacementError::new(
                text,
                "the value may not hold another operator or control characters",
            ));
        }
        Ok(Constraint {
            attribute,
            equal,
            value: value.to_string(),
        })
    }

    /// Whether the node satisfies the constraint (values compared case-insensitively, as in
    /// Swarm).
    pub fn holds(&self, node: &Node) -> bool {
        self.attribute.of(node).eq_ignore_ascii_case(&self.value) == self.equal
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = match &self.attribute {
            Attribute::Id => "node.id".to_string(),
            Attribute::Hostname => "node.hostname".to_string(),
            Attribute::Role => "node.role".to_string(),
            Attribute::Os => "node.platform.os".to_string(),
            Attribute::Arch => "node.platform.arch".to_string(),
            Attribute::Label(k) => format!("node.labels.{k}"),
        };
        let op = if self.equal { "==" } else { "!=" };
        write!(f, "{key}{op}{}", self.value)
    }
}

/// Parses every constraint; the first bad one is the error.
pub fn parse_all(constraints: &[String]) -> Result<Vec<Constraint>, PlacementError> {
    constraints.iter().map(|c| Constraint::parse(c)).collect()
}

/// Parses a spread descriptor (`node.labels.zone`).
pub fn parse_spread(descriptor: &str) -> Result<Attribute, PlacementError> {
    Attribute::parse(descriptor).map_err(|e| PlacementError {
        input: format!("spread={}", e.input),
        reason: e.reason,
    })
}

/// Whether every constraint holds on the node.
pub fn all_hold(constraints: &[Constraint], node: &Node) -> bool {
    constraints.iter().all(|c| c.holds(node))
}

/// A service's placement, parsed: what the scheduler and the global orchestrator apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    pub constraints: Vec<Constraint>,
    /// Spread descriptors, outermost first.
    pub spread: Vec<Attribute>,
    /// 0: no limit.
    pub max_replicas_per_node: u64,
}

impl Rules {
    /// Parses a placement (absent: no rules). The first bad constraint or preference is the
    /// error, so that a spec is refused with one clear line.
    pub fn parse(placement: Option<&Placement>) -> Result<Rules, PlacementError> {
        let Some(p) = placement else {
            return Ok(Rules::default());
        };
        let constraints = parse_all(&p.constraints)?;
        let spread = p
            .preferences
            .iter()
            .map(|pref| {
                if pref.spread.trim().is_empty() {
                    Err(PlacementError::new(
                        "spread=",
                        "a placement preference needs a descriptor: use spread=node.labels.KEY",
                    ))
                } else {
                    parse_spread(&pref.spread)
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Rules {
            constraints,
            spread,
            max_replicas_per_node: p.max_replicas_per_node,
        })
    }

    /// Whether every constraint holds on the node.
    pub fn admits(&self, node: &Node) -> bool {
        all_hold(&self.constraints, node)
    }
}

/// A constraint or spread descriptor that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid placement {input:?}: {reason}")]
pub struct PlacementError {
    pub input: String,
    pub reason: String,
}

impl PlacementError {
    fn new(input: &str, reason: &str) -> PlacementError {
        PlacementError {
            input: input.trim().to_string(),
            reason: reason.to_string(),
        }
    }

    /// Names the whole constraint rather than only its key.
    fn within(self, text: &str) -> PlacementError {
        PlacementError {
            input: text.trim().to_string(),
            reason: self.reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{NodeDescription, Platform};

    fn node() -> Node {
        let mut n = Node {
            id: "n1".into(),
            description: Some(NodeDescription {
                hostname: "host-a".into(),
                platform: Some(Platform {
                    os: "linux".into(),
                    architecture: "x86_64".into(),
                }),
                ..Default::default()
            }),
            labels: [("zone".to_string(), "b".to_string())].into(),
            ..Default::default()
        };
        n.set_role(NodeRole::Manager);
        n
    }

    fn holds(text: &str) -> bool {
        Constraint::parse(text).unwrap().holds(&node())
    }

    #[test]
    fn every_key_reads_its_attribute() {
        assert!(holds("node.id==n1"));
        assert!(holds("node.hostname==host-a"));
        assert!(holds("node.role==manager"));
        assert!(holds("node.role!=worker"));
        assert!(holds("node.platform.os==linux"));
        assert!(holds("node.platform.arch==x86_64"));
        assert!(holds("node.labels.zone==b"));
        assert!(!holds("node.labels.zone==a"));
        assert!(!holds("node.labels.zone!=b"));
    }

    #[test]
    fn whitespace_and_case_are_swarms() {
        assert!(holds("  node.labels.zone ==  b "));
        assert!(holds("node.role == Manager"));
        assert!(holds("Node.Platform.OS==LINUX"));
        assert!(holds("node.labels.zone==B"));
        // The label's key is exact.
        assert!(!holds("node.labels.Zone==b"));
    }

    #[test]
    fn a_missing_label_is_empty() {
        assert!(holds("node.labels.rack!=r1"));
        assert!(!holds("node.labels.rack==r1"));
    }

    #[test]
    fn bad_constraints_are_refused_with_a_reason() {
        let err = |t: &str| Constraint::parse(t).unwrap_err().to_string();
        assert!(err("node.labels.zone=b").contains("no operator"));
        assert!(err("engine.labels.os==linux").contains("engine labels are not supported"));
        assert!(err("node.color==red").contains("unknown key"));
        assert!(err("node.labels.==b").contains("label key is empty"));
        assert!(err("node.role==").contains("value is empty"));
        assert!(err("==x").contains("key is empty"));
        assert!(err("node.labels.a b==c").contains("label key may hold"));
        assert!(err("node.id==a==b").contains("another operator"));
        assert!(err("node.color==red").starts_with("invalid placement \"node.color==red\""));
    }

    #[test]
    fn constraints_print_as_written() {
        let c = Constraint::parse(" node.labels.zone != b ").unwrap();
        assert_eq!(c.to_string(), "node.labels.zone!=b");
    }

    #[test]
    fn spread_descriptors_name_attributes() {
        assert_eq!(
            parse_spread("node.labels.zone").unwrap(),
            Attribute::Label("zone".into())
        );
        assert_eq!(parse_spread("node.role").unwrap(), Attribute::Role);
        assert!(parse_spread("engine.labels.x")
            .unwrap_err()
            .to_string()
            .contains("spread=engine.labels.x"));
    }
}
