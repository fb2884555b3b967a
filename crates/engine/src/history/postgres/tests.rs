//! PostgreSQL-only checks (the shared contract is in `history/tests.rs`): the query plans use
//! the indexes, migrations are versioned and refused when foreign, the bucket span is fixed.

use super::*;
use kickstand_domain::VehicleState;

const H: i64 = 3_600_000;
/// 2026-11-20T00:00:00Z.
const DAY0: i64 = 1_795_132_800_000;

/// A fresh schema, dropped at the end; `None` when PostgreSQL is not configured.
struct Schema(PostgresConfig);

impl Schema {
    fn fresh() -> Option<Schema> {
        let url = crate::testing::service_url("POSTGRES")?;
        let config = PostgresConfig {
            url,
            schema: crate::testing::unique_name("pgtest"),
            compact_grace_secs: 0,
            pool_size: 2,
            ..PostgresConfig::default()
        };
        match PostgresHistory::open(&config, BucketSpan::HOUR) {
            Ok(_) => Some(Schema(config)),
            Err(e) => crate::testing::unreachable("PostgreSQL", e),
        }
    }
    fn open(&self) -> PostgresHistory {
        PostgresHistory::open(&self.0, BucketSpan::HOUR).unwrap()
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if let Ok(h) = PostgresHistory::open(&self.0, BucketSpan::HOUR) {
            let _ = h.drop_schema();
        }
    }
}

fn point(ts: i64, i: i64) -> Point {
    Point {
        ts,
        lat_e6: 37_500_000 + i as i32,
        lon_e6: 127_000_000 + (ts / 1000 % 1000) as i32,
        state: Some(VehicleState::Available),
        ..Point::default()
    }
}

#[test]
fn track_and_time_scan_queries_use_their_indexes() {
    let Some(schema) = Schema::fresh() else {
        return;
    };
    let h = schema.open();
    let mut w = h.writer(0).unwrap();
    // 400 vehicles × 24 hours, ten fixes an hour each, compacted: about a day of a fleet.
    for hour in 0..24 {
        let fixes: Vec<Fix> = (0..400)
            .flat_map(|v| {
                (0..10).map(move |k| Fix {
                    vehicle_id: VehicleId::new(&format!("v{v:04}")).unwrap(),
                    point: point(DAY0 + hour * H + k * 360_000, v),
                })
            })
            .collect();
        let mut is_new = Vec::new();
        w.append(&fixes, &mut is_new).unwrap();
        assert!(is_new.iter().all(|n| *n));
    }
    w.close().unwrap();
    h.maintain(DAY0 + 2 * 24 * H).unwrap();
    h.analyze().unwrap();
    let (track, scan) = h
        .explain_queries(
            &VehicleId::new("v0123").unwrap(),
            DAY0 + 3 * H,
            DAY0 + 20 * H,
        )
        .unwrap();
    assert!(
        track.contains("history_chunks_p20261120_pkey") && !track.contains("Seq Scan"),
        "a one-vehicle track uses the primary key of its day's partition:\n{track}"
    );
    assert!(
        scan.contains("history_chunks_p20261120_bucket_start_vehicle_id_idx")
            && !scan.contains("Seq Scan")
            && !scan.contains("Sort"),
        "a time-range scan reads the time index in order, without a sort:\n{scan}"
    );
    // Partition pruning: a range within one day touches one partition only.
    assert!(!track.contains("history_chunks_p20261121"), "{track}");
}

#[test]
fn migrations_are_recorded_and_a_foreign_schema_is_refused() {
    let Some(schema) = Schema::fresh() else {
        return;
    };
    let h = schema.open();
    let s = h.shared.clone();
    let versions: Vec<(i32, String)> = h
        .shared
        .rt
        .block_on(async move {
            let c = s.pooled().await?;
            let rows = c
                .query(
                    "SELECT version, name FROM kickstand_migrations ORDER BY version",
                    &[],
                )
                .await
                .map_err(pg_err)?;
            Ok::<_, HistoryError>(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
        .unwrap();
    assert_eq!(
        versions,
        schema::MIGRATIONS
            .iter()
            .map(|m| (m.version, m.name.to_owned()))
            .collect::<Vec<_>>()
    );
    // Opening again applies nothing and works.
    drop(schema.open());
    // A version from the future (a newer binary migrated it) is refused.
    let s = h.shared.clone();
    h.shared
        .rt
        .block_on(async move {
            let c = s.pooled().await?;
            c.execute(
                "INSERT INTO kickstand_migrations (version, name, checksum) VALUES (999, 'future', 0)",
                &[],
            )
            .await
            .map_err(pg_err)
        })
        .unwrap();
    let err = PostgresHistory::open(&schema.0, BucketSpan::HOUR)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("newer Kickstand"), "{err}");
}

#[test]
fn a_store_opened_with_another_bucket_span_is_refused() {
    let Some(schema) = Schema::fresh() else {
        return;
    };
    drop(schema.open());
    let err = PostgresHistory::open(&schema.0, BucketSpan::from_secs(600).unwrap())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("3600000 ms"), "{err}");
}

#[test]
fn a_bad_url_or_an_unreachable_server_is_a_clear_error() {
    let bad = PostgresConfig {
        url: "not a url at all".into(),
        ..PostgresConfig::default()
    };
    let err = PostgresHistory::open(&bad, BucketSpan::HOUR).err().unwrap();
    assert!(err.to_string().contains("history.postgres.url"), "{err}");
    let closed = PostgresConfig {
        // A port nothing listens on.
        url: "postgres://postgres@127.0.0.1:9/postgres".into(),
        ..PostgresConfig::default()
    };
    let err = PostgresHistory::open(&closed, BucketSpan::HOUR)
        .err()
        .unwrap();
    assert!(err.to_string().contains("postgres"), "{err}");
    // The URL (which may hold a password) is never in the debug output of the settings.
    let secret = PostgresConfig {
        url: "postgres://u:hunter2@db/x".into(),
        ..PostgresConfig::default()
    };
    assert!(!format!("{secret:?}").contains("hunter2"));
}

/// TLS against a server with a certificate for `localhost` (Debian's default snake-oil one on
/// the development machines): `KICKSTAND_TEST_POSTGRES_TLS_URL` with `sslmode=require`, and
/// `KICKSTAND_TEST_POSTGRES_TLS_CA`, the PEM file that certifies it.
#[test]
fn tls_connections_verify_the_server_and_are_encrypted() {
    let Some(url) = crate::testing::service_url("POSTGRES_TLS") else {
        return;
    };
    let ca = std::env::var("KICKSTAND_TEST_POSTGRES_TLS_CA")
        .expect("KICKSTAND_TEST_POSTGRES_TLS_CA names the CA file of the TLS test server");
    assert!(url.contains("sslmode=require"), "{url}");
    let config = PostgresConfig {
        url,
        schema: crate::testing::unique_name("tls"),
        ca_file: Some(ca.into()),
        pool_size: 2,
        ..PostgresConfig::default()
    };
    let h = PostgresHistory::open(&config, BucketSpan::HOUR).unwrap();
    let mut w = h.writer(0).unwrap();
    let f = Fix {
        vehicle_id: VehicleId::new("tls-1").unwrap(),
        point: point(DAY0, 1),
    };
    let mut is_new = Vec::new();
    w.append(std::slice::from_ref(&f), &mut is_new).unwrap();
    assert_eq!(is_new, vec![true]);
    assert_eq!(h.track(&f.vehicle_id, DAY0, DAY0).unwrap(), vec![f.point]);
    let s = h.shared.clone();
    let encrypted: bool = h
        .shared
        .rt
        .block_on(async move {
            let c = s.pooled().await?;
            let row = c
                .query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await
                .map_err(pg_err)?;
            Ok::<_, HistoryError>(row.get(0))
        })
        .unwrap();
    assert!(encrypted, "the pooled connection is not encrypted");

    // Without the CA that certifies the server, the handshake is refused: the certificate is
    // verified, not just accepted.
    let untrusted = PostgresConfig {
        ca_file: None,
        ..config.clone()
    };
    let err = PostgresHistory::open(&untrusted, BucketSpan::HOUR)
        .err()
        .expect("an unknown issuer is refused");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    // A CA file that is not one is a clear settings error.
    let junk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(junk.path(), "not a certificate").unwrap();
    let bad = PostgresConfig {
        ca_file: Some(junk.path().to_owned()),
        ..config.clone()
    };
    let err = PostgresHistory::open(&bad, BucketSpan::HOUR).err().unwrap();
    assert!(
        err.to_string().contains("history.postgres.ca_file"),
        "{err}"
    );
    h.drop_schema().unwrap();
}
