//! Harbor replication rules: filters and destination mapping, with Harbor's
//! semantics (see DESIGN §3 and docs/harbor.md's mapping table).

use serde::Deserialize;

use crate::doublestar::{self, BadPattern};
use crate::repository::{RepositoryPath, Tag};

/// A parsed, validated replication rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub enabled: bool,
    pub name_filter: Option<Pattern>,
    pub tag_filter: Option<TagFilter>,
    /// Evaluated with labels read from Harbor's API (`source.harbor_api`).
    pub label_filter: Option<LabelFilter>,
    /// Evaluated with the type Harbor gives the artifact (`source.harbor_api`).
    pub resource_filter: Option<ResourceFilter>,
    pub destination: Destination,
    /// Overwrite a destination tag that points at another digest [override].
    pub override_existing: bool,
    /// Delete on the destination when Harbor deletes the artifact [deletion].
    pub deletion: bool,
    /// Reconcile also deletes destination tags of the rule's mapping that no
    /// source repository holds although the relay never wrote them (pushed
    /// straight to the destination). Off by default; needs `deletion`.
    pub prune: bool,
    /// Harbor's "speed" in kilobits per second; `None` = unlimited (-1).
    pub bandwidth_kbps: Option<u64>,
    /// Events whose `operator` is listed are ignored (replication loops).
    pub exclude_operators: Vec<String>,
}

/// A glob matched exactly as Harbor matches it (doublestar v1.3.4, see
/// [`crate::doublestar`]): `*` stays in one component, `**` as a whole
/// component crosses `/`, `?`, `[..]` with `^` negating, `{a,b}` where an
/// alternative may be empty. Checked for syntax errors when built.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
}

#[derive(Debug, Clone)]
pub struct TagFilter {
    pub pattern: Pattern,
    pub decoration: Decoration,
}

/// Harbor's label filter: an artifact matches when it carries *all* the
/// listed labels; `excludes` inverts that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelFilter {
    pub labels: Vec<String>,
    pub decoration: Decoration,
}

impl LabelFilter {
    pub fn accepts(&self, labels: &[String]) -> bool {
        let all = self.labels.iter().all(|l| labels.contains(l));
        match self.decoration {
            Decoration::Matches => all,
            Decoration::Excludes => !all,
        }
    }
}

/// Harbor's resource filter [resource]: `image` replicates the artifacts
/// Harbor types `IMAGE` (container images, and the indexes over them);
/// `artifact` every other type (Helm charts, CNAB, WASM, SBOMs, unknown OCI
/// artifacts). No filter replicates both (Harbor's "All").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceFilter {
    Image,
    Artifact,
}

impl ResourceFilter {
    pub fn accepts(self, artifact_type: &ArtifactType) -> bool {
        match self {
            ResourceFilter::Image => artifact_type.is_image(),
            ResourceFilter::Artifact => !artifact_type.is_image(),
        }
    }
}

/// The type Harbor's artifact processors give an artifact (`IMAGE`,
/// `CHART`, `CNAB`, `WASM`, `SBOM`, `UNKNOWN`, or a vendor's own), as its
/// API's `type` field says; compared without regard to case, as Harbor does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactType(String);

impl ArtifactType {
    pub fn new(harbor_type: &str) -> ArtifactType {
        ArtifactType(harbor_type.to_ascii_uppercase())
    }

    pub fn is_image(&self) -> bool {
        self.0 == "IMAGE"
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What Harbor's API says of an artifact that the label and resource
/// filters decide on; the webhook's payload carries neither.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArtifactFacts {
    pub labels: Vec<String>,
    /// `None` when Harbor no longer knows the artifact (it was deleted).
    pub artifact_type: Option<ArtifactType>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decoration {
    Matches,
    Excludes,
}

/// Where a rule sends what it matches [dest registry, dest_namespace,
/// dest_namespace_replace_count].
#[derive(Debug, Clone)]
pub struct Destination {
    pub registry: String,
    pub namespace: Option<String>,
    pub flatten: Flatten,
}

/// Harbor's flattening levels: −1 all, 0 none, 1..=3 leading components.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flatten {
    All,
    Levels(u8),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("`{field}`: {reason}")]
    Field { field: String, reason: String },
}

/// Why a rule does not replicate an artifact: the setting that decided
/// (`filters.tag`, `enabled`, …, as the configuration names it) and what
/// it saw.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    pub filter: &'static str,
    pub reason: String,
}

impl Refusal {
    pub fn new(filter: &'static str, reason: impl Into<String>) -> Refusal {
        Refusal { filter, reason: reason.into() }
    }
}

/// Why a rule that matched could not map a repository.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("flattening {levels} levels is deeper than repository {repository} ({depth} components)")]
pub struct MappingError {
    pub repository: String,
    pub levels: u8,
    pub depth: usize,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Pattern, BadPattern> {
        doublestar::check(source)?;
        Ok(Pattern { source: source.to_owned() })
    }

    pub fn is_match(&self, candidate: &str) -> bool {
        // `check` refused every pattern that can err.
        doublestar::matches(&self.source, candidate).unwrap_or(false)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The part before the first glob metacharacter (`proj/` of
    /// `proj/**`): every match starts with it.
    pub fn literal_prefix(&self) -> &str {
        let end = self.source.find(['*', '?', '[', '{', '\\']).unwrap_or(self.source.len());
        &self.source[..end]
    }
}

impl TagFilter {
    /// Harbor matches the tag filter against each tag; an untagged artifact
    /// is matched as the empty string.
    pub fn accepts(&self, tag: Option<&Tag>) -> bool {
        let candidate = tag.map(Tag::as_str).unwrap_or("");
        let hit = self.pattern.is_match(candidate);
        match self.decoration {
            Decoration::Matches => hit,
            Decoration::Excludes => !hit,
        }
    }
}

impl Rule {
    /// Does this rule replicate `repository` (with `tag`, or untagged)?
    /// Label and resource filters are not looked at here: see
    /// [`Rule::accepts_facts`].
    pub fn matches(&self, repository: &RepositoryPath, tag: Option<&Tag>, operator: &str) -> bool {
        self.enabled
            && !self.exclude_operators.iter().any(|o| o == operator)
            && self.selects(repository)
            && self.tag_filter.as_ref().is_none_or(|f| f.accepts(tag))
    }

    /// Why this rule does or does not replicate `repository` (with `tag`)
    /// for an event by `operator`: the first of its checks that refuses,
    /// in Harbor's order (enabled, name, tag, labels, resource), or
    /// `None` when it replicates. Label and resource filters are judged on
    /// `facts`; without them a rule that has either does not replicate, as
    /// [`Rule::accepts_facts`] decides.
    pub fn refusal(
        &self,
        repository: &RepositoryPath,
        tag: Option<&Tag>,
        operator: &str,
        facts: Option<&ArtifactFacts>,
    ) -> Option<Refusal> {
        if !self.enabled {
            return Some(Refusal::new("enabled", "the rule is disabled"));
        }
        if self.exclude_operators.iter().any(|o| o == operator) {
            return Some(Refusal::new("exclude_operators", format!("events by {operator:?} are ignored")));
        }
        if !self.selects(repository) {
            let pattern = self.name_filter.as_ref().map(Pattern::as_str).unwrap_or_default();
            return Some(Refusal::new("filters.name", format!("{repository} does not match {pattern:?}")));
        }
        if let Some(f) = self.tag_filter.as_ref().filter(|f| !f.accepts(tag)) {
            let tag = tag.map_or_else(|| "no tag".to_owned(), |t| format!("tag {t}"));
            let how = if f.decoration == Decoration::Matches { "does not match" } else { "is excluded by" };
            return Some(Refusal::new("filters.tag", format!("{tag} {how} {:?}", f.pattern.as_str())));
        }
        let Some(facts) = facts else {
            let filter = if self.label_filter.is_some() { "filters.label" } else { "filters.resource" };
            return self
                .needs_facts()
                .then(|| Refusal::new(filter, "the artifact's labels and type were not read from Harbor's API"));
        };
        if let Some(f) = self.label_filter.as_ref().filter(|f| !f.accepts(&facts.labels)) {
            let how = if f.decoration == Decoration::Matches { "lacks one of" } else { "carries all of" };
            return Some(Refusal::new(
                "filters.label",
                format!("the artifact {how} the labels {:?} (it has {:?})", f.labels, facts.labels),
            ));
        }
        match (self.resource_filter, &facts.artifact_type) {
            (Some(f), Some(t)) if !f.accepts(t) => {
                Some(Refusal::new("filters.resource", format!("the artifact is of type {} ({f:?} only)", t.as_str())))
            }
            _ => None,
        }
    }

    /// The name filter alone (empty selects every repository).
    pub fn selects(&self, repository: &RepositoryPath) -> bool {
        self.name_filter.as_ref().is_none_or(|p| p.is_match(repository.as_str()))
    }

    /// True when deciding needs what Harbor's API knows of the artifact.
    pub fn needs_facts(&self) -> bool {
        self.label_filter.is_some() || self.resource_filter.is_some()
    }

    /// The label and resource filters against what Harbor's API says of the
    /// artifact; `None` (not looked up) passes only rules without either.
    /// An artifact Harbor no longer knows (a delete) has no labels, and its
    /// type is unknown: the resource filter lets the delete through, since
    /// the worker deletes only that digest, and only where it was copied.
    pub fn accepts_facts(&self, facts: Option<&ArtifactFacts>) -> bool {
        let Some(facts) = facts else { return !self.needs_facts() };
        let labels = self.label_filter.as_ref().is_none_or(|f| f.accepts(&facts.labels));
        let resource = match (self.resource_filter, &facts.artifact_type) {
            (Some(f), Some(t)) => f.accepts(t),
            (None, _) | (Some(_), None) => true,
        };
        labels && resource
    }

    /// The destination repository for `repository` (Harbor's
    /// `replaceNamespace`).
    pub fn map_repository(&self, repository: &RepositoryPath) -> Result<RepositoryPath, MappingError> {
        let Some(namespace) = &self.destination.namespace else {
            return Ok(repository.clone());
        };
        let parts: Vec<&str> = repository.components().collect();
        let rest = match self.destination.flatten {
            Flatten::All => parts[parts.len() - 1..].join("/"),
            Flatten::Levels(0) => repository.as_str().to_owned(),
            Flatten::Levels(n) if (n as usize) < parts.len() => parts[n as usize..].join("/"),
            Flatten::Levels(n) if n as usize == parts.len() => parts[parts.len() - 1].to_owned(),
            Flatten::Levels(n) => {
                return Err(MappingError { repository: repository.to_string(), levels: n, depth: parts.len() })
            }
        };
        // Both halves are valid path components, so the join is valid too
        // unless it grows past the length limit.
        RepositoryPath::join(namespace, &rest).map_err(|_| MappingError {
            repository: repository.to_string(),
            levels: 0,
            depth: parts.len(),
        })
    }
}

/// The rule as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    name: String,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    filters: RawFilters,
    destination: RawDestination,
    #[serde(default = "yes", rename = "override")]
    override_existing: bool,
    #[serde(default)]
    deletion: bool,
    #[serde(default)]
    prune: bool,
    #[serde(default = "unlimited")]
    bandwidth_kbps: i64,
    #[serde(default)]
    exclude_operators: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilters {
    #[serde(default)]
    name: String,
    tag: Option<RawTagFilter>,
    label: Option<RawLabelFilter>,
    #[serde(default)]
    resource: String,
}

/// `label: [a, b]` or `label: { values: [a, b], decoration: excludes }`.
/// Deserialized by hand, not `#[serde(untagged)]`: an untagged variant
/// ignores `deny_unknown_fields`, so `decoraton: excludes` loaded as a
/// *matching* filter, an exclusion silently turned into an inclusion.
#[derive(Debug)]
enum RawLabelFilter {
    List(Vec<String>),
    Full(RawLabelFilterFull),
}

/// The full form of a label filter, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLabelFilterFull {
    values: Vec<String>,
    #[serde(default = "matches")]
    decoration: Decoration,
}

impl<'de> Deserialize<'de> for RawLabelFilter {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Form;
        impl<'de> serde::de::Visitor<'de> for Form {
            type Value = RawLabelFilter;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of labels, or { values: [...], decoration: matches | excludes }")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<RawLabelFilter, A::Error> {
                Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(RawLabelFilter::List)
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawLabelFilter, A::Error> {
                RawLabelFilterFull::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawLabelFilter::Full)
            }
        }
        deserializer.deserialize_any(Form)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTagFilter {
    #[serde(default)]
    pattern: String,
    #[serde(default = "matches")]
    decoration: Decoration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDestination {
    registry: String,
    #[serde(default)]
    namespace: String,
    #[serde(default = "one")]
    flatten: i64,
}

fn yes() -> bool {
    true
}
fn unlimited() -> i64 {
    -1
}
fn matches() -> Decoration {
    Decoration::Matches
}
fn one() -> i64 {
    1
}

fn field_err(field: &str, reason: impl Into<String>) -> RuleError {
    RuleError::Field { field: field.to_owned(), reason: reason.into() }
}

impl Rule {
    /// `harbor_api`: Harbor's API may be read (label and resource filters).
    pub(crate) fn from_raw(raw: RawRule, harbor_api: bool) -> Result<Rule, RuleError> {
        if raw.name.trim().is_empty() {
            return Err(field_err("name", "must not be empty"));
        }
        if raw.prune && !raw.deletion {
            return Err(field_err(
                "prune",
                "removes destination tags, which needs `deletion: true` on the same rule (or drop `prune`)",
            ));
        }
        let name_filter = match raw.filters.name.as_str() {
            "" => None,
            p => Some(Pattern::new(p).map_err(|e| field_err("filters.name", e.to_string()))?),
        };
        let tag_filter = match raw.filters.tag {
            None => None,
            // Harbor: an empty pattern switches the filter off, whatever
            // the decoration (untagged artifacts included).
            Some(t) if t.pattern.is_empty() => None,
            Some(t) => Some(TagFilter {
                pattern: Pattern::new(&t.pattern).map_err(|e| field_err("filters.tag.pattern", e.to_string()))?,
                decoration: t.decoration,
            }),
        };
        let label_filter = match raw.filters.label {
            None => None,
            // Harbor: no labels switch the filter off, whatever the decoration.
            Some(RawLabelFilter::List(values) | RawLabelFilter::Full(RawLabelFilterFull { values, .. }))
                if values.is_empty() =>
            {
                None
            }
            Some(_) if !harbor_api => {
                return Err(field_err(
                    "filters.label",
                    "a label filter needs Harbor's API, and source.harbor_api is false (labels are read from Harbor's API; artifacts carry none at push time)",
                ))
            }
            Some(RawLabelFilter::List(values)) => Some(LabelFilter { labels: values, decoration: Decoration::Matches }),
            Some(RawLabelFilter::Full(RawLabelFilterFull { values, decoration })) => {
                Some(LabelFilter { labels: values, decoration })
            }
        };
        let resource_filter =
            match raw.filters.resource.as_str() {
                // Harbor's "All": no filter.
                "" => None,
                "image" | "artifact" if !harbor_api => return Err(field_err(
                    "filters.resource",
                    "a resource filter needs Harbor's API, and source.harbor_api is false (the artifact's type is read from Harbor's API)",
                )),
                "image" => Some(ResourceFilter::Image),
                "artifact" => Some(ResourceFilter::Artifact),
                other => return Err(field_err("filters.resource", format!("{other:?} is not one of image, artifact"))),
            };
        if raw.destination.registry.is_empty() {
            return Err(field_err("destination.registry", "must not be empty"));
        }
        let namespace = match raw.destination.namespace.as_str() {
            "" => None,
            ns => {
                ns.parse::<RepositoryPath>().map_err(|e| field_err("destination.namespace", e.to_string()))?;
                Some(ns.to_owned())
            }
        };
        let flatten = match raw.destination.flatten {
            -1 => Flatten::All,
            n @ 0..=3 => Flatten::Levels(n as u8),
            n => {
                return Err(field_err("destination.flatten", format!("{n} is not one of -1 (all), 0 (none), 1, 2, 3")))
            }
        };
        let bandwidth_kbps = match raw.bandwidth_kbps {
            -1 => None,
            n if n > 0 && n as u64 <= crate::task::MAX_BANDWIDTH_KBPS => Some(n as u64),
            n => {
                return Err(field_err(
                    "bandwidth_kbps",
                    format!("{n}: use -1 for unlimited or 1..={} kilobits/s", crate::task::MAX_BANDWIDTH_KBPS),
                ))
            }
        };
        Ok(Rule {
            name: raw.name,
            enabled: raw.enabled,
            name_filter,
            tag_filter,
            label_filter,
            resource_filter,
            destination: Destination { registry: raw.destination.registry, namespace, flatten },
            override_existing: raw.override_existing,
            deletion: raw.deletion,
            prune: raw.prune,
            bandwidth_kbps,
            exclude_operators: raw.exclude_operators,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(yaml: &str) -> Rule {
        let raw: RawRule = serde_yaml_ng::from_str(yaml).unwrap();
        Rule::from_raw(raw, false).unwrap()
    }

    fn repo(s: &str) -> RepositoryPath {
        s.parse().unwrap()
    }

    fn tag(s: &str) -> Option<Tag> {
        (!s.is_empty()).then(|| s.parse().unwrap())
    }

    #[test]
    fn a_refusal_names_the_filter_that_decided() {
        let facts = |labels: &[&str], kind: &str| ArtifactFacts {
            labels: labels.iter().map(|l| l.to_string()).collect(),
            artifact_type: Some(ArtifactType::new(kind)),
        };
        let image = facts(&["prod"], "IMAGE");
        let cases: [(&str, &str, Option<&ArtifactFacts>, Option<&str>); 9] = [
            ("{ name: a, destination: { registry: r } }", "v1", Some(&image), None),
            ("{ name: a, enabled: false, destination: { registry: r } }", "v1", None, Some("enabled")),
            (
                "{ name: a, exclude_operators: [relay], destination: { registry: r } }",
                "v1",
                None,
                Some("exclude_operators"),
            ),
            (
                "{ name: a, filters: { name: other/** }, destination: { registry: r } }",
                "v1",
                None,
                Some("filters.name"),
            ),
            (
                "{ name: a, filters: { tag: { pattern: 'v*', decoration: excludes } }, destination: { registry: r } }",
                "v1",
                None,
                Some("filters.tag"),
            ),
            (
                "{ name: a, filters: { label: [qa] }, destination: { registry: r } }",
                "v1",
                Some(&image),
                Some("filters.label"),
            ),
            (
                "{ name: a, filters: { label: [prod] }, destination: { registry: r } }",
                "v1",
                None,
                Some("filters.label"),
            ),
            (
                "{ name: a, filters: { resource: artifact }, destination: { registry: r } }",
                "v1",
                Some(&image),
                Some("filters.resource"),
            ),
            (
                "{ name: a, filters: { label: [prod], resource: image }, destination: { registry: r } }",
                "v1",
                Some(&image),
                None,
            ),
        ];
        for (yaml, t, facts, filter) in cases {
            let r = Rule::from_raw(serde_yaml_ng::from_str(yaml).unwrap(), true).unwrap();
            let refusal = r.refusal(&repo("lib/app"), tag(t).as_ref(), "relay", facts);
            assert_eq!(refusal.as_ref().map(|r| r.filter), filter, "{yaml}: {refusal:?}");
            // The same answer as the checks the planner used before.
            let before = r.matches(&repo("lib/app"), tag(t).as_ref(), "relay") && r.accepts_facts(facts);
            assert_eq!(refusal.is_none(), before, "{yaml}");
        }
    }

    /// (name filter, tag filter, decoration, repository, tag, expected)
    #[test]
    fn filters_follow_harbor() {
        let table = [
            ("library/*", "", "matches", "library/alpine", "latest", true),
            ("library/*", "", "matches", "library/a/b", "latest", false),
            ("library/**", "", "matches", "library/a/b", "latest", true),
            ("library/**", "", "matches", "goharbor/a", "latest", false),
            ("{library,goharbor}/**", "", "matches", "goharbor/harbor-core", "v2", true),
            ("{library,goharbor}/**", "", "matches", "other/x", "v2", false),
            ("", "", "matches", "any/thing/deep", "x", true),
            ("**", "1.?", "matches", "p/app", "1.0", true),
            ("**", "1.?", "matches", "p/app", "1.10", false),
            ("**", "1.?", "excludes", "p/app", "1.10", true),
            ("**", "1.?", "excludes", "p/app", "1.0", false),
            ("**", "v*", "matches", "p/app", "", false),
            ("**", "v*", "excludes", "p/app", "", true),
            ("**", "**", "matches", "p/app", "", true),
            ("p/[ab]pp", "", "matches", "p/app", "x", true),
            ("p/[ab]pp", "", "matches", "p/cpp", "x", false),
            // Where Harbor's doublestar v1 differs from shell globs.
            ("library/[!n]ginx", "", "matches", "library/nginx", "x", true),
            ("library/[^n]ginx", "", "matches", "library/nginx", "x", false),
            ("**", "{,v*}", "matches", "p/app", "", true),
            ("**", "{,v*}", "matches", "p/app", "v2", true),
            ("**", "{,v*}", "matches", "p/app", "latest", false),
            // An empty tag pattern is no filter, whatever the decoration.
            ("**", "", "excludes", "p/app", "", true),
            ("**", "", "excludes", "p/app", "v1", true),
        ];
        for (name, tag_pattern, decoration, r, t, expected) in table {
            let yaml = format!(
                "{{ name: t, filters: {{ name: '{name}', tag: {{ pattern: '{tag_pattern}', decoration: {decoration} }} }}, destination: {{ registry: r }} }}"
            );
            let got = rule(&yaml).matches(&repo(r), tag(t).as_ref(), "admin");
            assert_eq!(got, expected, "name={name} tag={tag_pattern} {decoration} on {r}:{t}");
        }
    }

    #[test]
    fn label_filters_follow_harbor() {
        let labels = |l: &[&str]| ArtifactFacts {
            labels: l.iter().map(|s| s.to_string()).collect(),
            artifact_type: Some(ArtifactType::new("IMAGE")),
        };
        let parse = |yaml: &str, api: bool| Rule::from_raw(serde_yaml_ng::from_str(yaml).unwrap(), api);
        let all =
            parse("{ name: t, filters: { label: [prod, approved] }, destination: { registry: r } }", true).unwrap();
        assert!(all.accepts_facts(Some(&labels(&["approved", "prod", "x"]))));
        assert!(!all.accepts_facts(Some(&labels(&["prod"]))), "needs every listed label");
        assert!(!all.accepts_facts(None));
        let not = parse(
            "{ name: t, filters: { label: { values: [wip], decoration: excludes } }, destination: { registry: r } }",
            true,
        )
        .unwrap();
        assert!(not.accepts_facts(Some(&labels(&["prod"]))));
        assert!(!not.accepts_facts(Some(&labels(&["wip"]))));
        let err = parse("{ name: t, filters: { label: [prod] }, destination: { registry: r } }", false).unwrap_err();
        assert!(err.to_string().contains("harbor_api"));
        let none = parse("{ name: t, destination: { registry: r } }", false).unwrap();
        assert!(none.accepts_facts(None));
        // No labels is no filter, whatever the decoration (and needs no API).
        let empty = parse(
            "{ name: t, filters: { label: { values: [], decoration: excludes } }, destination: { registry: r } }",
            false,
        )
        .unwrap();
        assert!(empty.accepts_facts(None));
    }

    /// A misspelt `decoration` once loaded as a matching filter: the
    /// exclusion became an inclusion.
    #[test]
    fn a_misspelt_field_of_a_label_filter_is_refused() {
        let raw = |filter: &str| {
            let yaml = format!("{{ name: t, filters: {{ label: {filter} }}, destination: {{ registry: r }} }}");
            serde_yaml_ng::from_str::<RawRule>(&yaml).map_err(|e| e.to_string())
        };
        let err = raw("{ values: [x], decoraton: excludes }").unwrap_err();
        assert!(err.contains("unknown field `decoraton`") && err.contains("`decoration`"), "{err}");
        let err = raw("prod").unwrap_err();
        assert!(err.contains("a list of labels, or { values"), "{err}");
        let err = raw("{ values: [x], decoration: exclude }").unwrap_err();
        assert!(err.contains("unknown variant `exclude`"), "{err}");
        assert!(raw("[x]").is_ok() && raw("{ values: [x] }").is_ok());
    }

    /// `prune` widens what `deletion` deletes; alone it would ask reconcile
    /// for deletes the worker refuses (no `deletion` on the rule).
    #[test]
    fn prune_needs_deletion_and_is_off_by_default() {
        let parse = |extra: &str| {
            let yaml = format!("{{ name: t, destination: {{ registry: r }}{extra} }}");
            Rule::from_raw(serde_yaml_ng::from_str(&yaml).unwrap(), false)
        };
        let err = parse(", prune: true").unwrap_err().to_string();
        assert!(err.contains("prune") && err.contains("deletion: true"), "{err}");
        assert!(parse(", deletion: true, prune: true").unwrap().prune);
        assert!(!parse(", deletion: true").unwrap().prune);
    }

    #[test]
    fn resource_filters_follow_harbor() {
        let parse = |resource: &str, api: bool| {
            let yaml = format!("{{ name: t, filters: {{ resource: '{resource}' }}, destination: {{ registry: r }} }}");
            Rule::from_raw(serde_yaml_ng::from_str(&yaml).unwrap(), api)
        };
        let facts = |t: Option<&str>| ArtifactFacts { labels: vec![], artifact_type: t.map(ArtifactType::new) };
        let image = parse("image", true).unwrap();
        let artifact = parse("artifact", true).unwrap();
        let all = parse("", false).unwrap();
        // (Harbor's type, image, artifact): compared without regard to case.
        for (t, i, a) in
            [("IMAGE", true, false), ("image", true, false), ("CHART", false, true), ("UNKNOWN", false, true)]
        {
            assert_eq!(image.accepts_facts(Some(&facts(Some(t)))), i, "image on {t}");
            assert_eq!(artifact.accepts_facts(Some(&facts(Some(t)))), a, "artifact on {t}");
            assert!(all.accepts_facts(Some(&facts(Some(t)))));
        }
        assert!(!all.needs_facts() && image.needs_facts());
        assert!(!image.accepts_facts(None), "not looked up: cannot decide");
        assert!(image.accepts_facts(Some(&facts(None))) && artifact.accepts_facts(Some(&facts(None))), "a delete");
        assert!(parse("image", false).unwrap_err().to_string().contains("harbor_api"));
        assert!(parse("chart", true).unwrap_err().to_string().contains("not one of image, artifact"));
    }

    #[test]
    fn disabled_and_excluded_operators_do_not_match() {
        let r = rule("{ name: t, enabled: false, destination: { registry: r } }");
        assert!(!r.matches(&repo("a/b"), None, "admin"));
        let r = rule("{ name: t, exclude_operators: [replicator], destination: { registry: r } }");
        assert!(!r.matches(&repo("a/b"), None, "replicator"));
        assert!(r.matches(&repo("a/b"), None, "admin"));
    }

    #[test]
    fn destination_mapping_follows_harbor() {
        let table: [(&str, i64, &str, Result<&str, ()>); 9] = [
            ("", 1, "a/b/c/d/img", Ok("a/b/c/d/img")),
            ("ns", -1, "a/b/c/d/img", Ok("ns/img")),
            ("ns", 0, "a/b/c/d/img", Ok("ns/a/b/c/d/img")),
            ("ns", 1, "a/b/c/d/img", Ok("ns/b/c/d/img")),
            ("ns", 2, "a/b/c/d/img", Ok("ns/c/d/img")),
            ("ns", 3, "a/b/c/d/img", Ok("ns/d/img")),
            ("ns", 2, "library/img", Ok("ns/img")),
            ("ns", 3, "library/img", Err(())),
            ("ns/sub", 1, "library/img", Ok("ns/sub/img")),
        ];
        for (ns, flatten, from, expected) in table {
            let r =
                rule(&format!("{{ name: t, destination: {{ registry: r, namespace: '{ns}', flatten: {flatten} }} }}"));
            let got = r.map_repository(&repo(from)).map(|p| p.to_string()).map_err(|_| ());
            assert_eq!(got, expected.map(str::to_owned), "{ns} {flatten} {from}");
        }
    }
}
