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
/// more, by message id. Returns the batch as units that start together —
/// each group one unit, every other message its own — in the order of
/// each unit's first message: a member that starts after its group's read
/// began reads alone, so the batch's task slots count units, not tasks.
pub(super) fn fanouts(messages: Vec<Decoded>) -> (Vec<Vec<Decoded>>, HashMap<String, Arc<Fanout>>) {
    let mut units: Vec<Vec<Decoded>> = Vec::new();
    let mut unit_of: HashMap<_, usize> = HashMap::new();
    let mut groups: HashMap<usize, Vec<(String, String)>> = HashMap::new();
    for (m, t) in messages {
        let key = t.as_ref().ok().and_then(|t| {
            let shares = t.action == Action::Copy && t.options.bandwidth_kbps.is_none();
            shares.then(|| (t.source.repository.clone(), t.source.digest.clone(), t.destination.registry.clone()))
        });
        let Some((repository, digest, registry)) = key else {
            units.push(vec![(m, t)]);
            continue;
        };
        let unit = *unit_of.entry((repository, digest)).or_insert_with(|| {
            units.push(Vec::new());
            units.len() - 1
        });
        let members = groups.entry(unit).or_default();
        // Two tasks into one registry are ordered by its ledger instead.
        if !members.iter().any(|(_, r)| *r == registry) {
            members.push((m.id.clone(), registry));
        }
        units[unit].push((m, t));
    }
    let mut fanouts = HashMap::new();
    for members in groups.into_values().filter(|m| m.len() > 1) {
        let fanout = Fanout::new(members.len());
        fanouts.extend(members.into_iter().map(|(id, _)| (id, fanout.clone())));
    }
    (units, fanouts)
}
