//! A bundle: the copy tasks of one artifact, one per destination, in one
//! queue message.
//!
//! The SQS event source hands a Lambda invocation whatever batch it
//! received; with other work queued, the tasks of one push into three
//! registries land in different invocations and each reads the artifact
//! from Harbor again. In one message they always arrive together, so the
//! worker reads each blob once for all of them (its fan-out). Each member
//! is still a task of its own: it succeeds, fails, is dead-lettered and
//! redriven on its own (the worker settles a failed member with a fresh
//! message holding that task alone, see `relay_aws::settle`).
//!
//! The envelope has its own version, above every task version, so a worker
//! older than bundles refuses one by name ("version 3 is not supported")
//! and dead-letters it for a redrive after the upgrade, rather than
//! guessing.

use serde::{Deserialize, Serialize};

use crate::task::{Action, Task, TaskError};

/// The version of the bundle envelope.
pub const BUNDLE_VERSION: u32 = 3;

/// At most this many tasks in one bundle: a push into more destinations
/// goes in several bundles (each still reads once for its own).
pub const MAX_BUNDLE: usize = 10;

/// SQS takes 256 KiB per message, attributes included; a bundle stays well
/// below, whatever its tasks' tags.
pub const MAX_BUNDLE_BYTES: usize = 192 * 1024;

/// The envelope as it is written.
#[derive(Serialize)]
struct Envelope<'a> {
    version: u32,
    tasks: &'a [&'a Task],
}

/// The envelope as it is read: its members stay raw until each is decoded
/// on its own, so one bad member fails alone.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvelope {
    #[allow(dead_code)]
    version: u32,
    tasks: Vec<serde_json::Value>,
}

/// The body of a bundle of `tasks` (at least one, at most [`MAX_BUNDLE`]).
pub fn encode(tasks: &[&Task]) -> String {
    serde_json::to_string(&Envelope { version: BUNDLE_VERSION, tasks }).expect("tasks always serialize")
}

/// Whether `task` may share a bundle with the other tasks of its
/// artifact: a copy (a delete reads nothing from the source).
pub fn bundles(task: &Task) -> bool {
    task.action == Action::Copy
}

/// The member bodies of a bundle, each member's JSON alone; `None` when `body` is
/// not a bundle (a task, or something the task decoder refuses by name).
pub fn split(body: &str) -> Option<Result<Vec<String>, TaskError>> {
    #[derive(Deserialize)]
    struct Shape {
        version: Option<serde_json::Value>,
        tasks: Option<serde::de::IgnoredAny>,
    }
    // A task of an unknown version (no `tasks`) is the task decoder's to
    // refuse, by its version.
    let shape = serde_json::from_str::<Shape>(body).ok()?;
    if shape.version?.as_u64() != Some(u64::from(BUNDLE_VERSION)) || shape.tasks.is_none() {
        return None;
    }
    let refused = |why: String| Some(Err(TaskError::Bundle(why)));
    let envelope: RawEnvelope = match serde_json::from_str(body) {
        Ok(e) => e,
        Err(e) => return refused(e.to_string()),
    };
    match envelope.tasks.len() {
        0 => refused("it holds no task".into()),
        n if n > MAX_BUNDLE => refused(format!("it holds {n} tasks, more than {MAX_BUNDLE}")),
        _ => Some(Ok(envelope.tasks.into_iter().map(|member| member.to_string()).collect())),
    }
}

/// Every task a queue message carries, each decoded on its own: one for a
/// task, one per member for a bundle.
pub fn tasks_in(body: &str) -> Vec<Result<Task, TaskError>> {
    match split(body) {
        None => vec![Task::decode(body)],
        Some(Ok(members)) => members.iter().map(|m| Task::decode(m)).collect(),
        Some(Err(e)) => vec![Err(e)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::tests::sample;

    fn into(registry: &str) -> Task {
        let mut t = sample();
        t.destination.registry = registry.into();
        t.id = format!("t-{registry}");
        t
    }

    #[test]
    fn a_bundle_splits_into_its_tasks() {
        let (a, b) = (into("a"), into("b"));
        let body = encode(&[&a, &b]);
        let members = split(&body).expect("a bundle").unwrap();
        assert_eq!(members.len(), 2);
        assert_eq!(Task::decode(&members[0]).unwrap(), a);
        assert_eq!(Task::decode(&members[1]).unwrap(), b);
        let tasks: Vec<_> = tasks_in(&body).into_iter().map(Result::unwrap).collect();
        assert_eq!(tasks, vec![a.clone(), b]);
        // A task is not a bundle, and reads as itself.
        assert!(split(&a.encode()).is_none());
        assert_eq!(tasks_in(&a.encode()).pop().unwrap().unwrap(), a);
        assert!(split("not json").is_none(), "left to the task decoder, which names the fault");
    }

    #[test]
    fn a_bad_member_fails_alone_and_a_bad_envelope_is_refused_by_name() {
        let a = into("a");
        let body = format!(r#"{{"version":3,"tasks":[{},{{"version":2,"id":"half"}}]}}"#, a.encode());
        let got = tasks_in(&body);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].as_ref().unwrap(), &a);
        assert!(matches!(got[1], Err(TaskError::Schema(_))), "{:?}", got[1]);
        for bad in [
            r#"{"version":3,"tasks":[]}"#.to_owned(),
            r#"{"version":3,"tasks":[],"more":1}"#.to_owned(),
            format!(r#"{{"version":3,"tasks":[{}]}}"#, vec![a.encode(); MAX_BUNDLE + 1].join(",")),
        ] {
            assert!(matches!(split(&bad), Some(Err(TaskError::Bundle(_)))), "{bad}");
        }
        // A version 3 task is refused by its version, as any unknown one.
        assert!(split(r#"{"version":3,"id":"t"}"#).is_none());
        assert!(matches!(tasks_in(r#"{"version":3,"id":"t"}"#)[0], Err(TaskError::UnknownVersion(3))));
        // A bundle inside a bundle is no task this worker reads.
        let nested = format!(r#"{{"version":3,"tasks":[{}]}}"#, encode(&[&a]));
        assert!(matches!(tasks_in(&nested)[0], Err(TaskError::UnknownVersion(3))));
    }
}
