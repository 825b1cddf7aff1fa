//! Which tasks of a batch share one read of the source: those that copy
//! the same artifact into different registries.

use std::collections::HashMap;
use std::sync::Arc;

use crate::message::Message;
use crate::registry::tee::Fanout;
use crate::task::{Action, Task, TaskError};

/// A message with its task, decoded once.
pub(super) type Decoded = (Message, Result<Task, TaskError>);

/// Groups the batch's copy tasks that read the same source artifact into
/// different destination registries (without a bandwidth limit, which
/// would hold the others to its rate), one [`Fanout`] per group of two or
/// more, by message id; moves each group's messages next to each other so
/// they start together.
pub(super) fn fanouts(messages: &mut Vec<Decoded>) -> HashMap<String, Arc<Fanout>> {
    let keys: Vec<_> = messages
        .iter()
        .map(|(_, t)| {
            let t = t.as_ref().ok()?;
            let shares = t.action == Action::Copy && t.options.bandwidth_kbps.is_none();
            shares.then(|| (t.source.repository.clone(), t.source.digest.clone(), t.destination.registry.clone()))
        })
        .collect();
    let mut groups: HashMap<_, (usize, Vec<(String, String)>)> = HashMap::new();
    let mut rank = Vec::with_capacity(messages.len());
    for (i, ((m, _), key)) in messages.iter().zip(keys).enumerate() {
        let Some((repository, digest, registry)) = key else {
            rank.push(i);
            continue;
        };
        let (first, members) = groups.entry((repository, digest)).or_insert((i, Vec::new()));
        rank.push(*first);
        // Two tasks into one registry are ordered by its ledger instead.
        if !members.iter().any(|(_, r)| *r == registry) {
            members.push((m.id.clone(), registry));
        }
    }
    // A stable sort by the position of each message's group's first.
    let mut ranked: Vec<_> = rank.into_iter().zip(std::mem::take(messages)).collect();
    ranked.sort_by_key(|(first, _)| *first);
    messages.extend(ranked.into_iter().map(|(_, m)| m));
    let mut fanouts = HashMap::new();
    for (_, members) in groups.into_values().filter(|(_, m)| m.len() > 1) {
        let fanout = Fanout::new(members.len());
        fanouts.extend(members.into_iter().map(|(id, _)| (id, fanout.clone())));
    }
    fanouts
}
