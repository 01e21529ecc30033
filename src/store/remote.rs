//! The cache tier the replicas share, on an object store (`[cache] url = "az://container/prefix"`
//! or `"s3://bucket/prefix"`), through the `object_store` crate: the account and credentials
//! come from its standard environment variables (a managed identity, a key, the emulator with
//! `AZURE_STORAGE_USE_EMULATOR`), never from the config file.
//!
//! Objects are named by their sha256 only. What is read back is not trusted: the fetcher hashes
//! it while it streams out, as it hashes an upstream's bytes (see `fetch`).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt as _, TryStreamExt as _};
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;

use crate::policy::Sha256;

pub struct Remote {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// The URL, for messages.
    pub shown: String,
}

/// An object being read: its stored length and its bytes.
pub struct Object {
    pub len: u64,
    pub body: BoxStream<'static, Result<Bytes, std::io::Error>>,
}

/// Bytes buffered per part when an object is written (multipart above it).
const PART_BYTES: usize = 8 << 20;

impl Remote {
    pub fn open(url: &str) -> Result<Remote, String> {
        let fail = |e: object_store::Error| format!("[cache] url {url}: {e}");
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("[cache] url {url}: not an object store URL"))?;
        let prefix = rest
            .split_once('/')
            .map(|(_, p)| p.trim_matches('/').to_string())
            .unwrap_or_default();
        use object_store::ClientConfigKey::{ConnectTimeout, Timeout};
        // object_store bounds a whole request by 30 s by default, which would cut off a
        // multi-gigabyte layer read at a sound pace; a whole transfer gets 30 min, a connection
        // 5 s (set AZURE_TIMEOUT / AWS_TIMEOUT to choose otherwise).
        let timeout = |env: &str| std::env::var(env).unwrap_or_else(|_| "30m".into());
        let store: Arc<dyn ObjectStore> = match scheme {
            "az" => {
                use object_store::azure::AzureConfigKey::Client;
                Arc::new(
                    object_store::azure::MicrosoftAzureBuilder::from_env()
                        .with_config(Client(Timeout), timeout("AZURE_TIMEOUT"))
                        .with_config(Client(ConnectTimeout), "5s")
                        .with_url(url)
                        .build()
                        .map_err(fail)?,
                )
            }
            "s3" => {
                use object_store::aws::AmazonS3ConfigKey::Client;
                Arc::new(
                    object_store::aws::AmazonS3Builder::from_env()
                        .with_config(Client(Timeout), timeout("AWS_TIMEOUT"))
                        .with_config(Client(ConnectTimeout), "5s")
                        .with_url(url)
                        .build()
                        .map_err(fail)?,
                )
            }
            other => return Err(format!("[cache] url: {other}:// is not supported")),
        };
        Ok(Remote {
            store,
            prefix,
            shown: url.to_string(),
        })
    }

    fn path(&self, sha: &Sha256) -> ObjectPath {
        let hex = sha.hex();
        let name = format!("sha256/{}/{hex}", &hex[..2]);
        if self.prefix.is_empty() {
            ObjectPath::from(name)
        } else {
            ObjectPath::from(format!("{}/{name}", self.prefix))
        }
    }

    /// Opens the object named `sha`, if there is one.
    pub async fn get(&self, sha: &Sha256) -> Result<Option<Object>, String> {
        match self.store.get(&self.path(sha)).await {
            Ok(r) => {
                let len = r.meta.size;
                let body = r.into_stream().map_err(std::io::Error::other).boxed();
                Ok(Some(Object { len, body }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Writes the verified local file `path` as the object named `sha` (multipart for large
    /// ones: a writer killed halfway leaves no object behind).
    pub async fn put_file(&self, sha: &Sha256, path: &std::path::Path) -> Result<(), String> {
        use tokio::io::AsyncWriteExt as _;
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| e.to_string())?;
        let mut w = object_store::buffered::BufWriter::with_capacity(
            self.store.clone(),
            self.path(sha),
            PART_BYTES,
        );
        match tokio::io::copy(&mut file, &mut w).await {
            Ok(_) => w.shutdown().await.map_err(|e| e.to_string()),
            Err(e) => {
                let _ = w.abort().await;
                Err(e.to_string())
            }
        }
    }

    /// Removes the object named `sha` (its bytes did not match).
    pub async fn delete(&self, sha: &Sha256) -> Result<(), String> {
        match self.store.delete(&self.path(sha)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}
