//! What a replica announces changed to the others sharing the store (the payload of
//! PostgreSQL's NOTIFY): `kill`, `proposal:ID`, `token:ID`, `grants:AGENT`, as it always was on
//! the wire.

/// A change announced between replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    /// A kill switch was thrown or reset: read them again.
    Kill,
    /// A proposal changed: wake what waits on it.
    Proposal(String),
    /// An issued token changed (revoked): forget its copy.
    Token(String),
    /// An agent's grants changed: forget their copy.
    Grants(String),
}

impl Topic {
    /// The topic announced as `text`; None for one this build does not know (a newer replica's:
    /// the replicas' one-second polls see its change all the same).
    pub fn parse(text: &str) -> Option<Topic> {
        if text == "kill" {
            return Some(Topic::Kill);
        }
        let (kind, id) = text.split_once(':')?;
        let id = id.to_string();
        match kind {
            "proposal" => Some(Topic::Proposal(id)),
            "token" => Some(Topic::Token(id)),
            "grants" => Some(Topic::Grants(id)),
            _ => None,
        }
    }
}

impl std::fmt::Display for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Topic::Kill => f.write_str("kill"),
            Topic::Proposal(id) => write!(f, "proposal:{id}"),
            Topic::Token(id) => write!(f, "token:{id}"),
            Topic::Grants(agent) => write!(f, "grants:{agent}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_is_announced_as_the_text_it_always_was() {
        for (topic, text) in [
            (Topic::Kill, "kill"),
            (Topic::Proposal("prop_1".into()), "proposal:prop_1"),
            (Topic::Token("tok_1".into()), "token:tok_1"),
            (Topic::Grants("bot:a".into()), "grants:bot:a"),
        ] {
            assert_eq!(topic.to_string(), text);
            assert_eq!(Topic::parse(text), Some(topic));
        }
        assert_eq!(Topic::parse("quota:x"), None);
        assert_eq!(Topic::parse("killed"), None);
    }
}
