//! The copy's plan, decided without I/O from what was read before it: the
//! source's manifests (the root, and the children the destination lacks,
//! as the walk ([`super::walk`]) fetched them) and the tags still due
//! after the HEADs. It says what goes up and in which order — every blob
//! once, before any manifest; child manifests children first; the root
//! last, by digest or under its tags — so that no manifest reaches the
//! destination before what it refers to. How each blob goes up (skipped,
//! mounted, uploaded, waited for) is the ledger's one decision when the
//! blob starts ([`super::ledger::BlobLedger::decide`]): it depends on
//! what other tasks of the worker do meanwhile.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::manifest::{is_foreign, Contents, Descriptor, Manifest, ManifestError};
use super::report::Outcome;
use crate::digest::Digest;
use crate::repository::Tag;

/// A source tag the task still carries, and the destination tag it maps to.
pub(crate) type TagPair<'t> = (&'t Tag, &'t Tag);

/// What reaches the destination, in this order: `blobs`, `children`, then
/// the root as `root` says.
pub(crate) struct Plan<'m> {
    /// Each blob once (by digest order), whichever manifests share it;
    /// foreign layers (their bytes live at their urls) left out.
    pub(crate) blobs: Vec<Descriptor>,
    /// Child manifests the destination lacks, each after its own children.
    pub(crate) children: Vec<&'m Manifest>,
    pub(crate) root: RootPush<'m>,
}

/// How the root manifest goes up.
pub(crate) enum RootPush<'t> {
    /// Not by this plan: the caller pushes it (a referrer, whose push says
    /// whether the destination indexed its subject).
    Caller,
    /// By digest: a push without tags.
    ByDigest,
    /// Under each tag (the registry indexes it by digest too), each one
    /// checked again right before its `PUT`.
    Tags(Vec<TagPair<'t>>),
}

/// One step of a plan, for reading it in order.
#[cfg(test)]
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Blob(Digest),
    Manifest(Digest),
    Root,
    Tag(String),
}

/// The plan for `root`, whose children in `fetched` are those the
/// destination lacks (a child not there is already at the destination:
/// neither it nor what it needs goes up).
pub(crate) fn plan<'m>(
    root: &'m Manifest,
    fetched: &'m HashMap<Digest, Manifest>,
    push: RootPush<'m>,
) -> Result<Plan<'m>, ManifestError> {
    let mut order = Order::default();
    order.visit(root, fetched)?;
    Ok(Plan { blobs: order.blobs.into_values().collect(), children: order.children, root: push })
}

/// The plan when the destination holds the root already: its tags only.
pub(crate) fn root_only(push: RootPush<'_>) -> Plan<'_> {
    Plan { blobs: Vec::new(), children: Vec::new(), root: push }
}

/// The tags of `current` (each with the digest the destination's tag
/// points at now) that go up: those not already at the digest, and without
/// override those the destination does not hold elsewhere; the others are
/// added to `skipped`.
pub(crate) fn due_tags<'t>(
    digest: &Digest,
    current: Vec<(&'t Tag, &'t Tag, Option<Digest>)>,
    override_existing: bool,
    skipped: &mut Vec<Tag>,
) -> Vec<TagPair<'t>> {
    let mut due = Vec::new();
    for (src_tag, tag, at_dst) in current {
        match at_dst {
            Some(d) if &d == digest => {}
            Some(other) if !override_existing => {
                tracing::info!(tag = %tag, existing = %other, "destination tag points elsewhere and override is off: left alone");
                skipped.push(tag.clone());
            }
            _ => due.push((src_tag, tag)),
        }
    }
    due
}

/// How a tagged task ends when none of its tags is due.
pub(crate) fn none_due(skipped: &[Tag]) -> Outcome {
    if skipped.is_empty() {
        Outcome::AlreadyPresent
    } else {
        Outcome::SkippedNoOverride
    }
}

impl Plan<'_> {
    /// The plan's steps in order.
    #[cfg(test)]
    pub(crate) fn steps(&self) -> Vec<Step> {
        let blobs = self.blobs.iter().map(|d| Step::Blob(d.digest.clone()));
        let children = self.children.iter().map(|m| Step::Manifest(m.digest.clone()));
        let root = match &self.root {
            RootPush::Caller => vec![],
            RootPush::ByDigest => vec![Step::Root],
            RootPush::Tags(tags) => tags.iter().map(|(_, t)| Step::Tag(t.to_string())).collect(),
        };
        blobs.chain(children).chain(root).collect()
    }
}

/// The walk that orders a plan.
#[derive(Default)]
struct Order<'m> {
    blobs: BTreeMap<Digest, Descriptor>,
    children: Vec<&'m Manifest>,
    /// A child that several indexes list is ordered once.
    placed: HashSet<Digest>,
}

impl<'m> Order<'m> {
    fn visit(&mut self, manifest: &'m Manifest, fetched: &'m HashMap<Digest, Manifest>) -> Result<(), ManifestError> {
        match manifest.contents()? {
            Contents::Image { config, layers } => {
                for d in std::iter::once(config).chain(layers) {
                    if is_foreign(&d) {
                        tracing::debug!(digest = %d.digest, "foreign layer not copied (its bytes live at its urls)");
                        continue;
                    }
                    self.blobs.entry(d.digest.clone()).or_insert(d);
                }
            }
            Contents::Index(children) => {
                for child in children {
                    let Some(m) = fetched.get(&child.digest) else { continue };
                    if !self.placed.insert(child.digest.clone()) {
                        continue;
                    }
                    self.visit(m, fetched)?;
                    self.children.push(m);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::manifest::OCI_INDEX;
    use super::*;

    const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

    fn blob(name: &str) -> Digest {
        Digest::sha256_of(name.as_bytes())
    }

    fn manifest(media_type: &str, json: serde_json::Value) -> Manifest {
        let bytes = bytes::Bytes::from(serde_json::to_vec(&json).unwrap());
        Manifest { digest: Digest::sha256_of(&bytes), media_type: media_type.into(), bytes }
    }

    fn descriptor(media_type: &str, digest: &Digest) -> serde_json::Value {
        serde_json::json!({ "mediaType": media_type, "digest": digest.to_string(), "size": 10 })
    }

    fn image(config: &str, layers: &[&str]) -> Manifest {
        let layer = |l: &&str| descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &blob(l));
        manifest(
            OCI_MANIFEST,
            serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": descriptor("application/vnd.oci.image.config.v1+json", &blob(config)),
                "layers": layers.iter().map(layer).collect::<Vec<_>>(),
            }),
        )
    }

    fn index(children: &[&Manifest]) -> Manifest {
        let entries: Vec<_> = children.iter().map(|m| descriptor(OCI_MANIFEST, &m.digest)).collect();
        manifest(OCI_INDEX, serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries }))
    }

    fn fetched(children: &[&Manifest]) -> HashMap<Digest, Manifest> {
        children.iter().map(|m| (m.digest.clone(), (*m).clone())).collect()
    }

    fn position(steps: &[Step], step: &Step) -> usize {
        steps.iter().position(|s| s == step).unwrap_or_else(|| panic!("{step:?} not in the plan"))
    }

    #[test]
    fn an_index_whose_children_share_a_layer() {
        let (amd, arm) = (image("cfg-amd", &["shared", "amd"]), image("cfg-arm", &["shared", "arm"]));
        let root = index(&[&amd, &arm]);
        let tags: [Tag; 2] = ["v1".parse().unwrap(), "latest".parse().unwrap()];
        let push = RootPush::Tags(tags.iter().map(|t| (t, t)).collect());
        let fetched = fetched(&[&amd, &arm]);
        let steps = plan(&root, &fetched, push).unwrap().steps();

        let shared = Step::Blob(blob("shared"));
        assert_eq!(steps.iter().filter(|s| **s == shared).count(), 1, "a shared layer goes up once");
        let (amd_at, arm_at) = (
            position(&steps, &Step::Manifest(amd.digest.clone())),
            position(&steps, &Step::Manifest(arm.digest.clone())),
        );
        let blobs = ["shared", "amd", "arm", "cfg-amd", "cfg-arm"].map(|b| position(&steps, &Step::Blob(blob(b))));
        assert!(blobs.iter().all(|&b| b < amd_at.min(arm_at)), "every blob before both children: {steps:?}");
        let tags_at: Vec<_> = tags.iter().map(|t| position(&steps, &Step::Tag(t.to_string()))).collect();
        assert!(tags_at.iter().all(|&t| t > amd_at.max(arm_at)), "the index, under its tags, after both children");
        assert_eq!(tags_at, vec![steps.len() - 2, steps.len() - 1], "tags last, in the task's order");
        assert_eq!(steps.len(), 5 + 2 + 2);
    }

    #[test]
    fn a_child_the_destination_has_is_left_with_its_blobs() {
        let (have, lack) = (image("cfg-have", &["have"]), image("cfg-lack", &["lack"]));
        let root = index(&[&have, &lack]);
        let fetched = fetched(&[&lack]);
        let steps = plan(&root, &fetched, RootPush::ByDigest).unwrap().steps();
        let mut blobs = vec![blob("cfg-lack"), blob("lack")];
        blobs.sort();
        let expected: Vec<Step> =
            blobs.into_iter().map(Step::Blob).chain([Step::Manifest(lack.digest.clone()), Step::Root]).collect();
        assert_eq!(steps, expected, "nothing of the child the destination has");
    }

    #[test]
    fn nested_indexes_go_up_children_first_and_a_child_listed_twice_once() {
        let leaf = image("cfg", &["layer"]);
        let inner = index(&[&leaf]);
        let root = index(&[&inner, &leaf]);
        let fetched = fetched(&[&inner, &leaf]);
        let steps = plan(&root, &fetched, RootPush::Caller).unwrap().steps();
        let (leaf_at, inner_at) = (
            position(&steps, &Step::Manifest(leaf.digest.clone())),
            position(&steps, &Step::Manifest(inner.digest.clone())),
        );
        assert!(leaf_at < inner_at, "{steps:?}");
        assert_eq!(steps.len(), 2 + 2, "two blobs, two manifests, the root left to the caller");
    }

    #[test]
    fn an_image_is_its_blobs_then_itself() {
        let root = image("cfg", &["a", "b", "a"]);
        let steps = plan(&root, &HashMap::new(), RootPush::ByDigest).unwrap().steps();
        assert_eq!(steps.len(), 4, "three distinct blobs, then the root: {steps:?}");
        assert_eq!(steps.last(), Some(&Step::Root));
    }

    #[test]
    fn a_root_the_destination_has_only_gets_its_tags() {
        let v1: Tag = "v1".parse().unwrap();
        assert_eq!(root_only(RootPush::Tags(vec![(&v1, &v1)])).steps(), vec![Step::Tag("v1".into())]);
    }

    #[test]
    fn due_tags_from_what_the_destination_holds() {
        let digest = blob("root");
        let [a, b, c]: [Tag; 3] = ["a", "b", "c"].map(|t| t.parse().unwrap());
        let current = || vec![(&a, &a, Some(digest.clone())), (&b, &b, Some(blob("other"))), (&c, &c, None)];
        for (override_existing, due, skipped) in [(false, vec!["c"], vec!["b"]), (true, vec!["b", "c"], vec![])] {
            let mut left = Vec::new();
            let got = due_tags(&digest, current(), override_existing, &mut left);
            let names = |ts: Vec<&Tag>| ts.into_iter().map(Tag::to_string).collect::<Vec<_>>();
            assert_eq!(names(got.into_iter().map(|(_, t)| t).collect()), due, "override {override_existing}");
            assert_eq!(names(left.iter().collect()), skipped, "override {override_existing}");
        }
        assert_eq!(none_due(&[]), Outcome::AlreadyPresent);
        assert_eq!(none_due(std::slice::from_ref(&a)), Outcome::SkippedNoOverride);
    }
}
