//! Whether the rules in force still produce a task taken from the queue:
//! the webhook checked when it wrote the task, but rules change (a redrive
//! days later) and anyone allowed to send to the queue may write one.

use super::{TaskFailure, Worker};
use crate::bundle;
use crate::message::Message;
use crate::task::{Action, Task};

impl Worker {
    /// Whether every task among `messages` names a registry this worker
    /// has (undecodable ones do not count: no configuration fixes them).
    pub fn knows_registries_of(&self, messages: &[Message]) -> bool {
        messages
            .iter()
            .flat_map(|m| bundle::tasks_in(&m.body))
            .filter_map(Result::ok)
            .all(|t| self.destinations.contains_key(&t.destination.registry))
    }

    /// Whether the rules in force produce every task among `messages` (see
    /// `allowed`). One they do not may come from a rule added since this
    /// configuration was read — the webhook notices a change on its own
    /// clock, up to a check period before the worker — so the caller asks
    /// for the configuration at once before the task is refused for good.
    pub fn rules_produce_all_of(&self, messages: &[Message]) -> bool {
        messages.iter().flat_map(|m| bundle::tasks_in(&m.body)).filter_map(Result::ok).all(|t| self.allowed(&t).is_ok())
    }

    /// Whether the rules in force still produce a task from the queue: an enabled rule
    /// that selects its source repository and maps it onto its destination
    /// repository of the same registry — with `deletion` on, for a delete.
    /// The webhook checked this when it wrote the task, but the rules may
    /// have changed since (a redrive days later), and the queue takes
    /// messages from anyone allowed to send to it. Tags, labels and the
    /// operator are the webhook's decision and not checked again: a task
    /// outside them still copies only what its own mapping allows.
    pub(super) fn allowed(&self, task: &Task) -> Result<(), TaskFailure> {
        let (source, destination) = (&task.source.repository, &task.destination);
        if !self.destinations.contains_key(&destination.registry) {
            // Reported as such by the run.
            return Ok(());
        }
        let mut producing = self.rules.iter().filter(|r| {
            r.enabled
                && r.destination.registry == destination.registry
                && r.selects(source)
                && r.map_repository(source).is_ok_and(|mapped| mapped == destination.repository)
        });
        let mapping = || format!("{source} → {}/{}", destination.registry, destination.repository);
        match task.action {
            Action::Copy if producing.next().is_none() => {
                Err(TaskFailure::Refused(format!("no enabled rule maps {} any more", mapping())))
            }
            Action::Delete if !producing.any(|r| r.deletion) => {
                Err(TaskFailure::Refused(format!("no enabled rule that maps {} has `deletion` on", mapping())))
            }
            _ => Ok(()),
        }
    }
}
