//! A destination registry as the worker holds it: its client, what this
//! worker knows of its blobs (ledger) and whether it answers (breaker), and
//! what its kind does before the first push into a repository. This is the
//! seam between registry kinds and the copy engine, which never asks what
//! kind it writes to.

use std::collections::HashSet;
use std::sync::Mutex;

use crate::ecr::{EcrControl, EcrError};
use crate::harbor_api::{HarborApi, HarborApiError};
use crate::health::Health;
use crate::registry::auth::unpoisoned;
use crate::registry::ledger::BlobLedger;
use crate::registry::RegistryClient;
use crate::registry_kind::HarborSettings;
use crate::repository::RepositoryPath;

pub struct Destination {
    pub client: RegistryClient,
    pub ledger: BlobLedger,
    pub health: Health,
    pub kind: KindRuntime,
    /// Repositories (ECR) or projects (Harbor) known to exist.
    ready: Mutex<HashSet<String>>,
}

/// What a kind needs at run time: the one place a kind's actions before a
/// push are reached from ([`Destination::prepare`], one arm each).
pub enum KindRuntime {
    /// Any distribution registry: the first push creates the repository.
    Registry,
    Ecr(std::sync::Arc<EcrControl>),
    Harbor {
        api: HarborApi,
        settings: HarborSettings,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("{registry}: {source}")]
    Ecr { registry: String, source: EcrError },
    #[error("{registry}: {source}")]
    Harbor { registry: String, source: HarborApiError },
}

impl PrepareError {
    /// A missing permission: no retry helps until someone grants it.
    pub fn is_denied(&self) -> bool {
        match self {
            PrepareError::Ecr { source, .. } => source.is_denied(),
            PrepareError::Harbor { source, .. } => matches!(source, HarborApiError::Forbidden(_)),
        }
    }
}

impl Destination {
    pub fn new(client: RegistryClient, health: Health, kind: KindRuntime) -> Destination {
        Destination { client, ledger: BlobLedger::default(), health, kind, ready: Mutex::default() }
    }

    /// Makes `repo` ready to be pushed into, once per repository (or
    /// project) and process: ECR creates the repository, Harbor (with
    /// `create_projects`) the project. Called before any blob moves, so a
    /// missing permission fails the task once, naming it. One arm per kind.
    pub async fn prepare(&self, repo: &RepositoryPath) -> Result<(), PrepareError> {
        let registry = || self.client.name().to_owned();
        match &self.kind {
            KindRuntime::Registry => Ok(()),
            KindRuntime::Ecr(ecr) => {
                self.once(repo.as_str(), async {
                    ecr.ensure_repository(repo)
                        .await
                        .map_err(|source| PrepareError::Ecr { registry: registry(), source })
                })
                .await
            }
            KindRuntime::Harbor { api, settings } if settings.create_projects => {
                self.once(repo.project(), async {
                    api.set_credentials(self.client.credentials());
                    api.ensure_project(repo.project(), settings.storage_limit)
                        .await
                        .map(drop)
                        .map_err(|source| PrepareError::Harbor { registry: registry(), source })
                })
                .await
            }
            KindRuntime::Harbor { .. } => Ok(()),
        }
    }

    /// Runs `prepare` unless `key` (a repository, a project) is known ready,
    /// and remembers it once it is.
    async fn once(
        &self,
        key: &str,
        prepare: impl std::future::Future<Output = Result<(), PrepareError>>,
    ) -> Result<(), PrepareError> {
        if unpoisoned(self.ready.lock()).contains(key) {
            return Ok(());
        }
        prepare.await?;
        unpoisoned(self.ready.lock()).insert(key.to_owned());
        Ok(())
    }
}
