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

/// What a kind needs at run time.
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
    /// missing permission fails the task once, naming it.
    pub async fn prepare(&self, repo: &RepositoryPath) -> Result<(), PrepareError> {
        let key = match &self.kind {
            KindRuntime::Registry => return Ok(()),
            KindRuntime::Harbor { settings, .. } if !settings.create_projects => return Ok(()),
            KindRuntime::Ecr(_) => repo.as_str(),
            KindRuntime::Harbor { .. } => repo.project(),
        };
        if self.ready.lock().expect("ready lock").contains(key) {
            return Ok(());
        }
        let registry = self.client.name().to_owned();
        match &self.kind {
            KindRuntime::Registry => {}
            KindRuntime::Ecr(ecr) => {
                ecr.ensure_repository(repo).await.map_err(|source| PrepareError::Ecr { registry, source })?
            }
            KindRuntime::Harbor { api, settings } => {
                api.set_credentials(self.client.credentials());
                api.ensure_project(key, settings.storage_limit)
                    .await
                    .map_err(|source| PrepareError::Harbor { registry, source })
                    .map(drop)?
            }
        }
        self.ready.lock().expect("ready lock").insert(key.to_owned());
        Ok(())
    }
}
