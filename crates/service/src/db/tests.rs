//! One contract, run against a real SQLite file and, where `KICKSTAND_TEST_POSTGRES_URL` is
//! set, a real PostgreSQL server (in a schema of its own, dropped afterwards).

use super::*;

const ITEMS_V1: Migration = Migration {
    version: 1,
    name: "items",
    sqlite: "CREATE TABLE items (id TEXT PRIMARY KEY, n INTEGER NOT NULL, score REAL, note TEXT, at INTEGER NOT NULL)",
    postgres: "CREATE TABLE items (id text PRIMARY KEY, n bigint NOT NULL, score double precision, note jsonb, at bigint NOT NULL)",
};
const ITEMS_V2: Migration = Migration::same(
    2,
    "flag",
    "ALTER TABLE items ADD COLUMN flagged BOOLEAN NOT NULL DEFAULT FALSE",
);

async fn contract(db: Db) {
    db.migrate("test", &[ITEMS_V1]).await.unwrap();
    // Applying again is a no-op; a second version is applied alone.
    db.migrate("test", &[ITEMS_V1]).await.unwrap();
    db.migrate("test", &[ITEMS_V1, ITEMS_V2]).await.unwrap();
    // A build that knows fewer versions than the database holds is refused.
    let older = db.migrate("test", &[]).await.unwrap_err();
    assert!(
        older.to_string().contains("newer than this build"),
        "{older}"
    );
    // Another component's versions are its own.
    db.migrate(
        "other",
        &[Migration::same(1, "t", "CREATE TABLE other_t (x BIGINT)")],
    )
    .await
    .unwrap();

    let n = db
        .execute(
            "INSERT INTO items (id, n, score, note, at) VALUES ($1, $2, $3, $4, $5)",
            params!["a", 1i64, 0.5, Some(r#"{"k":"it's $1"}"#), 1_000i64],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    // A unique key refused is its own error (the basis of idempotency).
    let dup = db
        .execute(
            "INSERT INTO items (id, n, at) VALUES ($1, $2, $3)",
            params!["a", 2i64, 2_000i64],
        )
        .await
        .unwrap_err();
    assert!(matches!(dup, DbError::Unique(_)), "{dup:?}");
    // ON CONFLICT … RETURNING works on both.
    let rows = db
        .query(
            "INSERT INTO items (id, n, at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING RETURNING id",
            params!["a", 3i64, 3_000i64],
        )
        .await
        .unwrap();
    assert!(rows.is_empty());
    let rows = db
        .query(
            "INSERT INTO items (id, n, at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING RETURNING id, n",
            params!["b", 3i64, 3_000i64],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].text(0).unwrap(), "b");
    assert_eq!(rows[0].int(1).unwrap(), 3);

    // Placeholders out of order, text with `$1` inside quotes left alone.
    let row = db
        .query_opt(
            "SELECT id, n, score, note, flagged, 'cost $1' FROM items WHERE at < $2 AND id = $1",
            params!["a", 5_000i64],
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.text(0).unwrap(), "a");
    assert_eq!(row.int(1).unwrap(), 1);
    assert_eq!(row.real(2).unwrap(), 0.5);
    let note: serde_json::Value = serde_json::from_str(row.text(3).unwrap()).unwrap();
    assert_eq!(note["k"], "it's $1");
    assert!(!row.bool(4).unwrap());
    assert_eq!(row.text(5).unwrap(), "cost $1");
    let row = db
        .query_opt("SELECT score, note FROM items WHERE id = $1", params!["b"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.opt_real(0).unwrap(), None);
    assert_eq!(row.opt_text(1).unwrap(), None);
    assert!(row.text(1).is_err(), "NULL is not text");
    assert!(row.int(5).is_err(), "no such column");

    // A batch is one transaction: a failing statement undoes the ones before it.
    let err = db
        .batch(vec![
            (
                "UPDATE items SET n = n + 10 WHERE id = $1".into(),
                params!["a"],
            ),
            (
                "INSERT INTO items (id, n, at) VALUES ($1, $2, $3)".into(),
                params!["b", 1i64, 1i64],
            ),
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, DbError::Unique(_)));
    let n = db
        .query_opt("SELECT n FROM items WHERE id = $1", params!["a"])
        .await
        .unwrap()
        .unwrap()
        .int(0)
        .unwrap();
    assert_eq!(n, 1, "the update was rolled back");
    let changed = db
        .batch(vec![
            (
                "UPDATE items SET n = n + 10 WHERE id = $1".into(),
                params!["a"],
            ),
            (
                "UPDATE items SET flagged = $1 WHERE n > $2".into(),
                params![true, 2i64],
            ),
        ])
        .await
        .unwrap();
    assert_eq!(changed, vec![1, 2]);

    // Garbage SQL is an error, not a panic.
    assert!(matches!(
        db.query("SELEKT 1", params![]).await,
        Err(DbError::Sql(_))
    ));

    // Concurrent writers: every insert lands once.
    let mut tasks = Vec::new();
    for w in 0..4 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                db.execute(
                    "INSERT INTO items (id, n, at) VALUES ($1, $2, $3)",
                    params![format!("w{w}-{i}"), i as i64, 0i64],
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let count = db
        .query_opt("SELECT COUNT(*) FROM items WHERE id LIKE 'w%'", params![])
        .await
        .unwrap()
        .unwrap()
        .int(0)
        .unwrap();
    assert_eq!(count, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_contract() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ops").join("ops.db");
    contract(Db::open_sqlite(&path).unwrap()).await;
    // Reopened, the records and versions are there.
    let db = Db::open_sqlite(&path).unwrap();
    db.migrate("test", &[ITEMS_V1, ITEMS_V2]).await.unwrap();
    assert_eq!(
        db.query("SELECT id FROM items WHERE id = 'b'", params![])
            .await
            .unwrap()
            .len(),
        1
    );
}

fn postgres_url() -> Option<String> {
    match std::env::var("KICKSTAND_TEST_POSTGRES_URL") {
        Ok(url) => Some(url),
        Err(_) if std::env::var("KICKSTAND_REQUIRE_SERVICES").as_deref() == Ok("1") => {
            panic!("KICKSTAND_TEST_POSTGRES_URL is not set and services are required")
        }
        Err(_) => {
            eprintln!(
                "KICKSTAND_TEST_POSTGRES_URL is not set: skipping the PostgreSQL ops database test"
            );
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_contract() {
    let Some(url) = postgres_url() else { return };
    let schema = format!("ops_test_{}_{}", std::process::id(), crate::now_ms());
    contract(Db::open_postgres(&url, &schema, None).await.unwrap()).await;
    // Two processes starting together: each version applied once.
    let (a, b) = (
        Db::open_postgres(&url, &schema, None).await.unwrap(),
        Db::open_postgres(&url, &schema, None).await.unwrap(),
    );
    let v3 = Migration::same(3, "more", "CREATE TABLE more_items (x BIGINT)");
    let all = [ITEMS_V1, ITEMS_V2, v3];
    let (ra, rb) = tokio::join!(a.migrate("test", &all), b.migrate("test", &all));
    ra.unwrap();
    rb.unwrap();
    let versions = a
        .query(
            "SELECT version FROM kickstand_ops_migrations WHERE component = 'test' ORDER BY version",
            params![],
        )
        .await
        .unwrap();
    assert_eq!(versions.len(), 3);
    a.execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"), params![])
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_settings_are_refused_without_echoing_the_url() {
    let err = Db::open_postgres("postgres://u:s3cret@h:notaport/db", "ops", None)
        .await
        .err()
        .unwrap();
    assert!(!err.to_string().contains("s3cret"), "{err}");
    let err = Db::open_postgres("postgres://u@127.0.0.1/db?sslmode=require", "ops", None)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("TLS"), "{err}");
    let err = Db::open_postgres("postgres://u@127.0.0.1/db", "1bad;drop", None)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("schema"), "{err}");
}

#[test]
fn placeholders_become_sqlite_positions_outside_quotes() {
    assert_eq!(
        to_sqlite("SELECT '$1', \"a$2\" FROM t WHERE a = $2 AND b = $10"),
        "SELECT '$1', \"a$2\" FROM t WHERE a = ?2 AND b = ?10"
    );
}
