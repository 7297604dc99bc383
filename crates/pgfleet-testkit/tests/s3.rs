//! The S3 server the test kit starts (moto) serves `object_store`'s S3 client, the one
//! backups use: put, get, multipart upload, list, delete; and it goes away when stopped.

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt as _;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload, RetryConfig, WriteMultipart};
use pgfleet_testkit::{S3_ACCESS_KEY_ID, S3_REGION, S3_SECRET_ACCESS_KEY, S3Server};

fn s3_store(server: &S3Server, bucket: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
    // reqwest is built without a TLS provider of its own (see Cargo.toml): ring, as in
    // the rest of the workspace. Already installed by an earlier call: fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(server.endpoint())
            .with_region(S3_REGION)
            .with_bucket_name(bucket)
            .with_access_key_id(S3_ACCESS_KEY_ID)
            .with_secret_access_key(S3_SECRET_ACCESS_KEY)
            .with_allow_http(true)
            // A stopped server must fail the request now, not after minutes of retries.
            .with_retry(RetryConfig {
                max_retries: 1,
                retry_timeout: Duration::from_secs(2),
                ..RetryConfig::default()
            })
            .build()?,
    ))
}

#[tokio::test]
async fn s3_server_serves_put_get_multipart_list_and_delete() -> anyhow::Result<()> {
    let mut server = S3Server::start().await?;
    assert_eq!(server.endpoint(), format!("http://127.0.0.1:{}", server.port()));
    let env = server.env_vars();
    let endpoint = env.iter().find(|(name, _)| *name == "AWS_ENDPOINT_URL");
    assert_eq!(
        endpoint.map(|(_, value)| value.as_str()),
        Some(server.endpoint().as_str())
    );
    let refused = server
        .create_bucket("Not A Bucket")
        .await
        .err()
        .map(|e| e.to_string());
    assert!(
        refused
            .as_deref()
            .is_some_and(|e| e.contains("not an S3 bucket name")),
        "{refused:?}"
    );
    server.create_bucket("pgfleet-backups").await?;
    let store = s3_store(&server, "pgfleet-backups")?;

    let small = Path::from("backups/aws/orders/manifest.json");
    store
        .put(&small, PutPayload::from_static(b"{\"ok\":true}"))
        .await?;
    let got = store.get(&small).await?.bytes().await?;
    assert_eq!(&got[..], b"{\"ok\":true}");

    // Two parts: S3 wants at least 5 MiB in every part but the last.
    let big = Path::from("backups/aws/orders/dump.zst");
    let part = 5 * 1024 * 1024;
    let data: Vec<u8> = (0..part + 123).map(|i| (i % 251) as u8).collect();
    let mut upload = WriteMultipart::new_with_chunk_size(store.put_multipart(&big).await?, part);
    upload.write(&data);
    upload.finish().await?;
    let got = store.get(&big).await?.bytes().await?;
    assert_eq!(got.len(), data.len());
    assert!(
        got[..] == data[..],
        "multipart object differs from what was written"
    );

    let mut listed: Vec<(String, u64)> = store
        .list(Some(&Path::from("backups/aws")))
        .map_ok(|meta| (meta.location.to_string(), meta.size))
        .try_collect()
        .await?;
    listed.sort();
    assert_eq!(
        listed,
        [
            ("backups/aws/orders/dump.zst".to_owned(), data.len() as u64),
            ("backups/aws/orders/manifest.json".to_owned(), 11),
        ]
    );

    store.delete(&small).await?;
    let missing = store.get(&small).await;
    assert!(
        matches!(missing, Err(object_store::Error::NotFound { .. })),
        "get after delete: {missing:?}"
    );

    // Another bucket is empty; an unknown one is an error.
    server.create_bucket("pgfleet-other").await?;
    let other: Vec<_> = s3_store(&server, "pgfleet-other")?
        .list(None)
        .try_collect()
        .await?;
    assert!(other.is_empty());
    assert!(s3_store(&server, "no-such-bucket")?.get(&small).await.is_err());

    // Stopped: the store is unreachable, as in a storage outage.
    server.stop().await?;
    assert!(store.get(&big).await.is_err(), "read from a stopped server");
    Ok(())
}
