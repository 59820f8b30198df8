//! The one layer selector every pass uses: a `layers` entry is a node name, or a
//! pattern where each `*` stands for any text (`encoder.layer.5.*`,
//! `encoder.layer.*.output.dense`). An entry that matches no weighted node is an error
//! naming it, so a typo never selects nothing in silence.

use crate::model::Model;
use crate::spec::ParamKind;

/// Whether a node name matches a layer pattern: equal, with each `*` standing for any text.
pub fn matches(pattern: &str, node: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = node.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// The nodes with a weight tensor, in parameter order, once each.
pub fn all_weighted(model: &Model) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in model.params.specs.iter().filter(|s| s.kind == ParamKind::Weight) {
        if !out.contains(&s.node) {
            out.push(s.node.clone());
        }
    }
    out
}

/// The weighted nodes that `patterns` select, in parameter order; empty when
/// `patterns` is (the passes read that as "every layer"). `Err` holds the first entry
/// that matches no weighted node.
pub fn weighted_nodes(model: &Model, patterns: &[String]) -> Result<Vec<String>, String> {
    if patterns.is_empty() {
        return Ok(Vec::new());
    }
    let weighted = all_weighted(model);
    if let Some(p) = patterns.iter().find(|p| !weighted.iter().any(|w| matches(p, w))) {
        return Err(p.clone());
    }
    Ok(weighted.into_iter().filter(|w| patterns.iter().any(|p| matches(p, w))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_names_and_stars() {
        assert!(matches("b2_*", "b2_attn") && !matches("b2_*", "b1_attn") && matches("head", "head") && !matches("hea", "head"));
        assert!(matches("encoder.layer.*.output.dense", "encoder.layer.5.output.dense"));
        assert!(!matches("encoder.layer.*.output.dense", "encoder.layer.5.attention.output.dense.x"));
    }

    #[test]
    fn selection_is_by_name_or_pattern_and_unknown_entries_are_errors() {
        let m = Model::init(crate::model::zoo::build("lenet300").unwrap(), 1).unwrap();
        assert_eq!(weighted_nodes(&m, &[]).unwrap(), Vec::<String>::new());
        assert_eq!(weighted_nodes(&m, &["fc2".into()]).unwrap(), vec!["fc2"]);
        assert_eq!(weighted_nodes(&m, &["fc*".into()]).unwrap(), vec!["fc1", "fc2", "fc3"]);
        assert_eq!(weighted_nodes(&m, &["fc9".into()]).unwrap_err(), "fc9");
    }
}
