//! Where backups are stored: one `object_store` (a local directory by
//! default; S3, GCS or Azure by `backup.storage_url`), object names, and the
//! manifest beside each object.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, ObjectStoreScheme, PutPayload, WriteMultipart};
use pgfleet_config::BackupConfig;
use pgfleet_registry::Target;
use uuid::Uuid;

use crate::BackupError;
use crate::manifest::Manifest;
use crate::policy::DumpFormat;

/// Top-level folder of every object pgfleet writes.
pub const ROOT: &str = "backups";

/// Retries of one storage request: a few, within 20 s. A backup that cannot
/// reach its storage fails (and is retried at its next schedule) rather than
/// holding a pg_dump open for object_store's default three minutes.
fn retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 3,
        retry_timeout: std::time::Duration::from_secs(20),
        ..object_store::RetryConfig::default()
    }
}

/// The backup storage.
#[derive(Clone)]
pub struct BackupStorage {
    store: Arc<dyn ObjectStore>,
    /// Folder inside the store (the URL's path), prepended to every key.
    prefix: Path,
    /// Bytes per multipart part.
    part_bytes: usize,
    /// What it is, without credentials (logs, health).
    description: String,
}

impl std::fmt::Debug for BackupStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupStorage")
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

impl BackupStorage {
    /// The storage `config` names; a local directory is created if missing.
    pub fn from_config(config: &BackupConfig) -> Result<Self, BackupError> {
        let part_bytes = usize::try_from(config.part_bytes).unwrap_or(usize::MAX);
        let Some(url_text) = &config.storage_url else {
            std::fs::create_dir_all(&config.dir).map_err(|error| {
                BackupError::Unavailable(format!(
                    "cannot create backup.dir {}: {error}",
                    config.dir.display()
                ))
            })?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(&config.dir)
                .map_err(|error| BackupError::storage("opening backup.dir", &error))?;
            return Ok(Self {
                store: Arc::new(store),
                prefix: Path::default(),
                part_bytes,
                description: format!("directory {}", config.dir.display()),
            });
        };
        // object_store's HTTP client uses rustls without a provider of its
        // own: ring, the workspace's, unless the process chose one already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let invalid = |reason: String| BackupError::invalid("backup.storage_url", reason);
        let url = url::Url::parse(url_text).map_err(|error| invalid(format!("not a URL: {error}")))?;
        let (scheme, prefix) =
            ObjectStoreScheme::parse(&url).map_err(|error| invalid(format!("not a storage URL: {error}")))?;
        let options = config
            .storage_options
            .iter()
            .map(|(key, value)| (key.clone(), value.expose().to_owned()));
        let store: Arc<dyn ObjectStore> = match scheme {
            ObjectStoreScheme::AmazonS3 => {
                let mut builder = object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url.as_str())
                    .with_retry(retry());
                for (key, value) in options {
                    let key = key.parse().map_err(|_| {
                        invalid(format!("unknown S3 option {key:?} in backup.storage_options"))
                    })?;
                    builder = builder.with_config(key, value);
                }
                Arc::new(builder.build().map_err(|error| invalid(error.to_string()))?)
            }
            ObjectStoreScheme::GoogleCloudStorage => {
                let mut builder = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(url.as_str())
                    .with_retry(retry());
                for (key, value) in options {
                    let key = key.parse().map_err(|_| {
                        invalid(format!("unknown GCS option {key:?} in backup.storage_options"))
                    })?;
                    builder = builder.with_config(key, value);
                }
                Arc::new(builder.build().map_err(|error| invalid(error.to_string()))?)
            }
            ObjectStoreScheme::MicrosoftAzure => {
                let mut builder = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url.as_str())
                    .with_retry(retry());
                for (key, value) in options {
                    let key = key.parse().map_err(|_| {
                        invalid(format!("unknown Azure option {key:?} in backup.storage_options"))
                    })?;
                    builder = builder.with_config(key, value);
                }
                Arc::new(builder.build().map_err(|error| invalid(error.to_string()))?)
            }
            ObjectStoreScheme::Local => {
                let dir = url
                    .to_file_path()
                    .map_err(|()| invalid("not a local path".to_owned()))?;
                std::fs::create_dir_all(&dir).map_err(|error| {
                    BackupError::Unavailable(format!("cannot create {}: {error}", dir.display()))
                })?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|error| BackupError::storage("opening the backup directory", &error))?;
                return Ok(Self {
                    store: Arc::new(store),
                    prefix: Path::default(),
                    part_bytes,
                    description: format!("directory {}", dir.display()),
                });
            }
            other => return Err(invalid(format!("{other:?} storage is not supported"))),
        };
        let mut described = url.clone();
        // A URL may carry credentials (user:password@); never shown.
        let _ = described.set_username("");
        let _ = described.set_password(None);
        Ok(Self {
            store,
            prefix,
            part_bytes,
            description: described.to_string(),
        })
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    fn path(&self, key: &str) -> Path {
        let key = Path::from(key);
        if self.prefix.as_ref().is_empty() {
            key
        } else {
            self.prefix.parts().chain(key.parts()).collect()
        }
    }

    /// Streams `chunks` into a multipart upload of `key`, at most two parts in
    /// flight; the upload is aborted (nothing left at `key`) when a chunk is
    /// an error or the store fails. Returns the bytes written.
    pub async fn upload(
        &self,
        key: &str,
        mut chunks: impl futures::Stream<Item = Result<bytes::Bytes, BackupError>> + Unpin,
    ) -> Result<u64, BackupError> {
        let upload = self
            .store
            .put_multipart(&self.path(key))
            .await
            .map_err(|error| BackupError::storage("starting the upload", &error))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_bytes);
        let mut written = 0_u64;
        let failure = loop {
            let chunk = match chunks.next().await {
                None => break None,
                Some(Err(error)) => break Some(error),
                Some(Ok(chunk)) => chunk,
            };
            if let Err(error) = writer.wait_for_capacity(2).await {
                break Some(BackupError::storage("uploading", &error));
            }
            written += chunk.len() as u64;
            writer.put(chunk);
        };
        match failure {
            None => {
                writer
                    .finish()
                    .await
                    .map_err(|error| BackupError::storage("finishing the upload", &error))?;
                Ok(written)
            }
            Some(error) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(error = %abort, key, "aborting a failed backup upload failed");
                }
                Err(error)
            }
        }
    }

    /// The stored object as a stream of chunks.
    pub async fn read(
        &self,
        key: &str,
    ) -> Result<BoxStream<'static, Result<bytes::Bytes, BackupError>>, BackupError> {
        let found = self
            .store
            .get(&self.path(key))
            .await
            .map_err(|error| BackupError::storage(key, &error))?;
        let owned_key = key.to_owned();
        Ok(found
            .into_stream()
            .map_err(move |error| BackupError::storage(&owned_key, &error))
            .boxed())
    }

    pub async fn put_manifest(&self, manifest: &Manifest) -> Result<(), BackupError> {
        let bytes = serde_json::to_vec_pretty(manifest)
            .map_err(|error| BackupError::Internal(format!("encoding a manifest: {error}")))?;
        self.store
            .put(
                &self.path(&manifest_key(&manifest.object_key)),
                PutPayload::from(bytes),
            )
            .await
            .map_err(|error| BackupError::storage("writing the manifest", &error))?;
        Ok(())
    }

    pub async fn get_manifest(&self, object_key: &str) -> Result<Manifest, BackupError> {
        let key = manifest_key(object_key);
        let bytes = self
            .store
            .get(&self.path(&key))
            .await
            .map_err(|error| BackupError::storage(&key, &error))?
            .bytes()
            .await
            .map_err(|error| BackupError::storage(&key, &error))?;
        serde_json::from_slice(&bytes).map_err(|error| {
            BackupError::FailedPrecondition(format!("{key} is not a pgfleet manifest: {error}"))
        })
    }

    /// Deletes `key`; a key already gone is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), BackupError> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(BackupError::storage(key, &error)),
        }
    }

    /// Every key under `folder` (relative to the storage's prefix).
    pub async fn list(&self, folder: &str) -> Result<Vec<String>, BackupError> {
        let prefix = self.path(folder);
        let skip = self.prefix.parts().count();
        let listed: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|error| BackupError::storage("listing", &error))?;
        Ok(listed
            .into_iter()
            .map(|meta| {
                meta.location
                    .parts()
                    .skip(skip)
                    .map(|part| part.as_ref().to_owned())
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .collect())
    }
}

/// `backups/<cloud>/<database>/<UTC timestamp>-<id>.<dump|sql>.zst[.age]`.
pub fn object_key(
    target: &Target,
    started: DateTime<Utc>,
    id: Uuid,
    format: DumpFormat,
    encrypted: bool,
) -> String {
    format!(
        "{ROOT}/{}/{}/{}-{id}.{}.zst{}",
        target.cloud,
        target.database,
        started.format("%Y%m%dT%H%M%SZ"),
        format.extension(),
        if encrypted { ".age" } else { "" }
    )
}

/// The manifest's key beside `object_key`.
pub fn manifest_key(object_key: &str) -> String {
    format!("{object_key}.manifest.json")
}
