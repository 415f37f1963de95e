//! MariaDB GTID positions (`@@gtid_current_pos`, `Gtid_IO_Pos`): the last transaction of each
//! replication domain, `domain-server-sequence`, comma-separated. Under `gtid_strict_mode`
//! sequence numbers only grow within a domain, whichever server wrote them, so a position holds
//! another when it is at least as far in every domain. This is how the watch compares nodes: a sum
//! of sequence numbers would let a node far ahead in one domain hide what it lacks in another.
use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

/// Domain -> (server id, sequence number) of the last transaction seen in it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GtidPosition(BTreeMap<u32, (u32, u64)>);

impl GtidPosition {
    /// Parses a position; an empty text is the empty position (a node that never wrote).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut domains = BTreeMap::new();
        for gtid in text.split(',').map(str::trim).filter(|g| !g.is_empty()) {
            let mut parts = gtid.splitn(3, '-');
            let mut field = |what: &str| {
                parts
                    .next()
                    .ok_or_else(|| format!("GTID `{gtid}` has no {what}"))
            };
            let domain = field("domain")?;
            let server = field("server id")?;
            let sequence = field("sequence number")?;
            let bad = |what: &str| format!("GTID `{gtid}`: bad {what}");
            let domain: u32 = domain.parse().map_err(|_| bad("domain"))?;
            let server: u32 = server.parse().map_err(|_| bad("server id"))?;
            let sequence: u64 = sequence.parse().map_err(|_| bad("sequence number"))?;
            if domains.insert(domain, (server, sequence)).is_some() {
                return Err(format!("domain {domain} appears twice in `{text}`"));
            }
        }
        Ok(GtidPosition(domains))
    }

    /// Every transaction of `other` is also in `self` (at least as far in every domain).
    pub fn holds(&self, other: &GtidPosition) -> bool {
        self.missing(other) == 0
    }

    /// How many transactions `other` has that `self` lacks, summed over domains.
    pub fn missing(&self, other: &GtidPosition) -> u64 {
        other
            .0
            .iter()
            .map(|(domain, &(_, theirs))| {
                let ours = self.0.get(domain).map_or(0, |&(_, seq)| seq);
                theirs.saturating_sub(ours)
            })
            .sum()
    }

    /// The position that holds both (the later transaction of each domain).
    pub fn union(&self, other: &GtidPosition) -> GtidPosition {
        let mut merged = self.0.clone();
        for (&domain, &(server, seq)) in &other.0 {
            let entry = merged.entry(domain).or_insert((server, seq));
            if seq > entry.1 {
                *entry = (server, seq);
            }
        }
        GtidPosition(merged)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for GtidPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (domain, (server, seq)) in &self.0 {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{domain}-{server}-{seq}")?;
        }
        Ok(())
    }
}

impl TryFrom<String> for GtidPosition {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        GtidPosition::parse(&text)
    }
}

impl From<GtidPosition> for String {
    fn from(position: GtidPosition) -> String {
        position.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> GtidPosition {
        GtidPosition::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn parses_and_prints_positions() {
        assert!(at("").is_empty());
        assert_eq!(at("0-1-42, 1-2-7").to_string(), "0-1-42,1-2-7");
        for bad in ["0-1", "a-1-2", "0-1-x", "0-1-2,0-2-3", "-1-2"] {
            assert!(GtidPosition::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_position_holds_another_only_in_every_domain() {
        assert!(at("0-1-10").holds(&at("0-1-9")));
        assert!(
            at("0-2-10").holds(&at("0-1-9")),
            "a failover continues the sequence"
        );
        assert!(at("0-1-10").holds(&at("")));
        assert!(!at("").holds(&at("0-1-1")));
        // Far ahead in domain 0 does not make up for domain 1: a sum would say it does.
        assert!(!at("0-1-100").holds(&at("0-1-5,1-2-7")));
        assert_eq!(at("0-1-100").missing(&at("0-1-5,1-2-7")), 7);
        assert_eq!(at("0-1-3").missing(&at("0-1-5")), 2);
    }

    #[test]
    fn union_keeps_the_later_transaction_of_each_domain() {
        assert_eq!(
            at("0-1-5,1-2-9").union(&at("0-3-7")).to_string(),
            "0-3-7,1-2-9"
        );
    }
}
