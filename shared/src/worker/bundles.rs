//! A bundle message ([`crate::bundle`]) as its batch runs it: each member
//! a task of its own (its own run, outcome and settling), the message done
//! when its last member ends.

use std::collections::HashMap;
use std::sync::Mutex;

use super::fanouts::Decoded;
use crate::bundle;
use crate::message::Message;
use crate::task::Task;

/// The batch's bundles whose members still run: the message, how many are
/// left, whether all so far succeeded.
#[derive(Default)]
pub(super) struct Running {
    bundles: Mutex<HashMap<String, (Message, usize, bool)>>,
}

impl Running {
    /// Tells `ended` of the message once `m`'s task ends: at once for a
    /// message of its own, at its last member for a bundle, succeeded when
    /// every member did.
    pub(super) fn ended(&self, m: &Message, ok: bool, ended: &(dyn Fn(&Message, bool) + Sync)) {
        let Some(id) = &m.bundle else { return ended(m, ok) };
        let mut bundles = self.bundles.lock().expect("bundles lock");
        let Some((_, left, all_ok)) = bundles.get_mut(id) else { return };
        *left -= 1;
        *all_ok &= ok;
        if *left == 0 {
            let (message, _, all_ok) = bundles.remove(id).expect("present");
            drop(bundles);
            ended(&message, all_ok);
        }
    }
}

/// Each message with its task decoded, a bundle split into its members:
/// a member's id is the bundle's with its place (`<id>/<n>`), its body its
/// own task, and it has no receipt (see [`Message::bundle`]).
pub(super) fn split(messages: Vec<Message>) -> (Vec<Decoded>, Running) {
    let running = Running::default();
    let mut decoded = Vec::with_capacity(messages.len());
    for m in messages {
        let members = match m.probe.is_none().then(|| bundle::split(&m.body)).flatten() {
            None => {
                let task = Task::decode(&m.body);
                decoded.push((m, task));
                continue;
            }
            Some(Err(refused)) => {
                decoded.push((m, Err(refused)));
                continue;
            }
            Some(Ok(members)) => members,
        };
        tracing::debug!(message_id = %m.id, tasks = members.len(), "a bundle of tasks");
        let count = members.len();
        for (n, body) in members.into_iter().enumerate() {
            let task = Task::decode(&body);
            let member = Message {
                id: format!("{}/{n}", m.id),
                body,
                receipt: None,
                bundle: Some(m.id.clone()),
                uploads: Vec::new(),
                ..m.clone()
            };
            decoded.push((member, task));
        }
        running.bundles.lock().expect("bundles lock").insert(m.id.clone(), (m, count, true));
    }
    (decoded, running)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{Action, CopyOptions, DestinationArtifact, EventRef, SourceArtifact, TASK_VERSION};

    fn task(registry: &str) -> Task {
        Task {
            version: TASK_VERSION,
            id: format!("t-{registry}"),
            action: Action::Copy,
            source: SourceArtifact {
                repository: "library/app".parse().unwrap(),
                digest: crate::Digest::sha256_of(b"x"),
                tags: vec![],
            },
            destination: DestinationArtifact {
                registry: registry.into(),
                repository: "app".parse().unwrap(),
                tags: vec![],
            },
            rules: vec!["r".into()],
            options: CopyOptions { override_existing: true, bandwidth_kbps: None, refresh_referrers: false },
            event: EventRef { key: "e".into(), occurred_at: 1, operator: "admin".into() },
        }
    }

    fn message(id: &str, body: String) -> Message {
        Message { id: id.into(), body, receive_count: 2, receipt: Some(format!("r-{id}")), ..Default::default() }
    }

    #[test]
    fn a_bundle_runs_as_its_members_and_ends_with_the_last() {
        let (a, b) = (task("a"), task("b"));
        let messages =
            vec![message("one", bundle::encode(&[&a, &b])), message("two", a.encode()), message("bad", "{".into())];
        let (decoded, running) = split(messages);
        let ids: Vec<_> = decoded.iter().map(|(m, _)| m.id.as_str()).collect();
        assert_eq!(ids, ["one/0", "one/1", "two", "bad"]);
        let (member, task) = &decoded[1];
        assert_eq!(task.as_ref().unwrap(), &b);
        assert_eq!((member.bundle.as_deref(), member.receipt.as_deref(), member.receive_count), (Some("one"), None, 2));
        assert_eq!(member.delivered_as(), "one");
        assert!(decoded[3].1.is_err());

        let told = Mutex::new(Vec::new());
        let ended = |m: &Message, ok: bool| told.lock().unwrap().push((m.id.clone(), ok, m.receipt.clone()));
        running.ended(&decoded[2].0, true, &ended);
        running.ended(&decoded[0].0, true, &ended);
        assert_eq!(told.lock().unwrap().len(), 1, "the bundle is not done while a member runs");
        running.ended(&decoded[1].0, false, &ended);
        let told = told.into_inner().unwrap();
        assert_eq!(
            told,
            [("two".into(), true, Some("r-two".into())), ("one".into(), false, Some("r-one".into()))],
            "the bundle ends with its last member, failed if one failed, as the message it came in"
        );
    }
}
