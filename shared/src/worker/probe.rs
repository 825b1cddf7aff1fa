//! The parking lot's probes: one per registry that is down asks it again,
//! and its parked tasks go back to the copy queue once it answers.

use std::time::Instant;

use super::{Failed, TaskFailure, Worker};
use crate::health::Health;
use crate::message::{Disposition, FailureCause, Probe, SOURCE};
use crate::metrics::{Slices, UNKNOWN};
use crate::registry::RegistryClient;

impl Worker {
    /// Asks `client`'s registry whether it answers (`GET /v2/`); one that
    /// does not is recorded unavailable and the task parked.
    pub(super) async fn still_answers(client: &RegistryClient, health: &Health) -> Result<(), TaskFailure> {
        match client.ping().await {
            Err(e) if e.is_unavailable() => {
                tracing::info!(registry = client.name(), error = %e, "registry unavailable: GET /v2/ fails too");
                health.record_unavailable();
                Err(TaskFailure::Parked(client.name().to_owned()))
            }
            _ => {
                health.record_success();
                Ok(())
            }
        }
    }

    /// A probe of the parking lot: asks its registry; when it answers, its
    /// parked tasks go back to the copy queue, otherwise the probe goes
    /// round again. Consumed either way (a probe that could not be sent
    /// again is redelivered instead).
    pub(super) async fn handle_probe(&self, probe: &Probe, deadline: Option<Instant>) -> Result<(), Failed> {
        let failed = |error: String| Failed {
            uploads: Vec::new(),
            error,
            cause: FailureCause::Probe,
            disposition: Disposition::Retry { retry_after: None },
            slices: Slices { registry: probe.registry.clone(), rule: UNKNOWN.into() },
        };
        let Some(parking) = &self.parking else {
            return Err(failed("a probe, but this worker has no parking queue (RELAY_PARKING_QUEUE_URL)".into()));
        };
        let side = match probe.registry.as_str() {
            SOURCE => Some((&*self.source, &self.source_health)),
            name => self.destinations.get(name).map(|d| (&d.client, &d.health)),
        };
        // A registry the configuration no longer names: its tasks are
        // released, and then fail as unknown (dead-lettered with that reason).
        let answers = match side {
            Some((client, health)) => Self::still_answers(client, health).await.is_ok(),
            None => true,
        };
        if answers {
            parking.release(probe, self.stop_at(deadline)).await;
            Ok(())
        } else if parking.still_down(probe).await {
            Ok(())
        } else {
            Err(failed("cannot send the probe again".into()))
        }
    }
}
