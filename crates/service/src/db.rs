//! The ops database: one async API over an embedded SQLite file (`kickstand run`) or PostgreSQL
//! (`kickstand serve`), so each operations service writes its queries once.
//!
//! - SQL is written with PostgreSQL's `$1, $2, …` placeholders; for SQLite they become `?1, ?2,
//!   …` (the same positions), outside quoted text.
//! - Values are [`Value`]s: integers (`bigint`/`INTEGER`; booleans are stored as 0/1 on
//!   SQLite and may be `boolean` on PostgreSQL), reals, text and NULL. Times are milliseconds
//!   since the Unix epoch in integers; JSON is text (`text`, `json` or `jsonb` on PostgreSQL).
//! - Each component (`messenger`, `runner`, …) migrates its own tables: the versions applied
//!   are rows of `kickstand_ops_migrations`, applied in order, in one transaction, under a lock
//!   (`BEGIN IMMEDIATE` on SQLite, an advisory lock on PostgreSQL) so two processes starting
//!   together apply each version once.
//! - Several statements that must happen together go through [`Db::batch`], one transaction.
//!
//! SQLite runs on the blocking thread pool (`spawn_blocking`) over one connection in WAL mode
//! with `synchronous = FULL`: a record is on disk when the call returns.

use bytes::BytesMut;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_postgres::config::SslMode;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres_rustls::MakeRustlsConnect;

#[derive(Clone, Debug, thiserror::Error)]
pub enum DbError {
    /// The settings are unusable (a bad URL, a missing TLS configuration).
    #[error("{0}")]
    Config(String),
    /// A unique constraint refused a row (`INSERT` of a key that exists).
    #[error("duplicate key: {0}")]
    Unique(String),
    /// Anything else the database said, or could not be reached.
    #[error("{0}")]
    Sql(String),
    /// A column did not hold what the caller asked for.
    #[error("column {0}: {1}")]
    Decode(usize, String),
}

pub type DbResult<T> = Result<T, DbError>;

/// Which database a [`Db`] talks to, for the few statements that differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// One version of a component's schema.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// 1, 2, 3, … with no gaps.
    pub version: u32,
    /// What it does, recorded beside the version.
    pub name: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

impl Migration {
    /// A migration whose SQL is the same for both databases.
    pub const fn same(version: u32, name: &'static str, sql: &'static str) -> Migration {
        Migration {
            version,
            name,
            sqlite: sql,
            postgres: sql,
        }
    }
}

/// A parameter or a column value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Value {
        Value::Int(v.into())
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Value {
        Value::Int(v.into())
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Int(v.into())
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Real(v)
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_owned())
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Value {
        Value::Text(v.clone())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// Parameters for a statement: `params![a, b, c]`.
#[macro_export]
macro_rules! params {
    () => { ::std::vec::Vec::<$crate::Value>::new() };
    ($($v:expr),+ $(,)?) => { vec![$($crate::Value::from($v)),+] };
}

/// A result row.
#[derive(Clone, Debug, PartialEq)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn at(&self, i: usize) -> DbResult<&Value> {
        self.0
            .get(i)
            .ok_or_else(|| DbError::Decode(i, "no such column".into()))
    }

    pub fn opt_int(&self, i: usize) -> DbResult<Option<i64>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(*v)),
            other => Err(DbError::Decode(i, format!("not an integer: {other:?}"))),
        }
    }

    pub fn int(&self, i: usize) -> DbResult<i64> {
        self.opt_int(i)?
            .ok_or_else(|| DbError::Decode(i, "NULL".into()))
    }

    pub fn bool(&self, i: usize) -> DbResult<bool> {
        Ok(self.int(i)? != 0)
    }

    pub fn opt_real(&self, i: usize) -> DbResult<Option<f64>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Real(v) => Ok(Some(*v)),
            Value::Int(v) => Ok(Some(*v as f64)),
            other => Err(DbError::Decode(i, format!("not a number: {other:?}"))),
        }
    }

    pub fn real(&self, i: usize) -> DbResult<f64> {
        self.opt_real(i)?
            .ok_or_else(|| DbError::Decode(i, "NULL".into()))
    }

    pub fn opt_text(&self, i: usize) -> DbResult<Option<&str>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Text(v) => Ok(Some(v)),
            other => Err(DbError::Decode(i, format!("not text: {other:?}"))),
        }
    }

    pub fn text(&self, i: usize) -> DbResult<&str> {
        self.opt_text(i)?
            .ok_or_else(|| DbError::Decode(i, "NULL".into()))
    }
}

/// The ops database; cheap to clone (one shared connection or pool).
#[derive(Clone)]
pub struct Db(Arc<Inner>);

enum Inner {
    Sqlite(Arc<Mutex<rusqlite::Connection>>),
    Postgres(deadpool_postgres::Pool),
}

const PG_POOL_SIZE: usize = 16;
const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Db {
    /// Opens (creating it if needed) the SQLite file at `path`.
    pub fn open_sqlite(path: &Path) -> DbResult<Db> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| DbError::Config(format!("{}: {e}", dir.display())))?;
        }
        let c = rusqlite::Connection::open(path)
            .map_err(|e| DbError::Config(format!("{}: {e}", path.display())))?;
        c.busy_timeout(Duration::from_secs(10))
            .map_err(sqlite_err)?;
        c.pragma_update(None, "journal_mode", "WAL")
            .map_err(sqlite_err)?;
        c.pragma_update(None, "synchronous", "FULL")
            .map_err(sqlite_err)?;
        c.pragma_update(None, "foreign_keys", "ON")
            .map_err(sqlite_err)?;
        Ok(Db(Arc::new(Inner::Sqlite(Arc::new(Mutex::new(c))))))
    }

    /// Connects to PostgreSQL at `url`, in `schema` (created when missing; 1 to 63 ASCII
    /// letters, digits or `_`, not starting with a digit). With `tls` the connections use
    /// rustls with that configuration and TLS is required unless the URL says
    /// `sslmode=disable`; without it they are plain, and a URL that says `sslmode=require` is
    /// refused. Errors never repeat the URL (it may hold a password).
    pub async fn open_postgres(
        url: &str,
        schema: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> DbResult<Db> {
        check_schema(schema)?;
        let mut pg = tokio_postgres::Config::from_str(url).map_err(|e| {
            DbError::Config(format!("the ops database's PostgreSQL URL is invalid: {e}"))
        })?;
        let tls = match (pg.get_ssl_mode(), tls) {
            (SslMode::Require, None) => {
                return Err(DbError::Config(
                    "the ops database's PostgreSQL URL asks for sslmode=require, but no TLS \
                     configuration was given"
                        .into(),
                ));
            }
            (SslMode::Disable, _) | (_, None) => None,
            (_, Some(config)) => {
                pg.ssl_mode(SslMode::Require);
                Some(MakeRustlsConnect::new((*config).clone()))
            }
        };
        pg.application_name("kickstand-ops");
        pg.connect_timeout(PG_CONNECT_TIMEOUT);
        // Create the schema first, on a connection without the search path.
        let manager_config = deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        };
        let build = |pg: tokio_postgres::Config| {
            let manager = match &tls {
                Some(t) => {
                    deadpool_postgres::Manager::from_config(pg, t.clone(), manager_config.clone())
                }
                None => deadpool_postgres::Manager::from_config(
                    pg,
                    tokio_postgres::NoTls,
                    manager_config.clone(),
                ),
            };
            deadpool_postgres::Pool::builder(manager)
                .max_size(PG_POOL_SIZE)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(Some(Duration::from_secs(30)))
                .create_timeout(Some(PG_CONNECT_TIMEOUT))
                .build()
                .map_err(|e| DbError::Config(format!("PostgreSQL connection pool: {e}")))
        };
        {
            let first = build(pg.clone())?;
            let client = first.get().await.map_err(pool_err)?;
            client
                .batch_execute(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {}",
                    quote_ident(schema)
                ))
                .await
                .map_err(pg_err)?;
        }
        pg.options(format!("-c search_path={}", quote_ident(schema)));
        Ok(Db(Arc::new(Inner::Postgres(build(pg)?))))
    }

    pub fn dialect(&self) -> Dialect {
        match &*self.0 {
            Inner::Sqlite(_) => Dialect::Sqlite,
            Inner::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Applies the versions of `component`'s schema this database lacks, in order, in one
    /// transaction. A database newer than `migrations` (a newer build ran) is refused.
    pub async fn migrate(&self, component: &str, migrations: &[Migration]) -> DbResult<()> {
        for (i, m) in migrations.iter().enumerate() {
            assert_eq!(
                m.version as usize,
                i + 1,
                "{component}: migrations must be numbered 1, 2, 3, …"
            );
        }
        const TABLE: &str = "CREATE TABLE IF NOT EXISTS kickstand_ops_migrations (
            component TEXT NOT NULL,
            version BIGINT NOT NULL,
            name TEXT NOT NULL,
            applied_at BIGINT NOT NULL,
            PRIMARY KEY (component, version))";
        let component = component.to_owned();
        let migrations = migrations.to_vec();
        match &*self.0 {
            Inner::Sqlite(conn) => {
                let conn = conn.clone();
                blocking(move || {
                    let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
                    let tx = c
                        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                        .map_err(sqlite_err)?;
                    tx.execute_batch(TABLE).map_err(sqlite_err)?;
                    let have: i64 = tx
                        .query_row(
                            "SELECT COALESCE(MAX(version), 0) FROM kickstand_ops_migrations WHERE component = ?1",
                            [&component],
                            |r| r.get(0),
                        )
                        .map_err(sqlite_err)?;
                    check_not_newer(&component, have, migrations.len())?;
                    for m in migrations.iter().skip(have as usize) {
                        tx.execute_batch(m.sqlite).map_err(|e| {
                            DbError::Sql(format!("{component} migration {}: {e}", m.version))
                        })?;
                        tx.execute(
                            "INSERT INTO kickstand_ops_migrations VALUES (?1, ?2, ?3, ?4)",
                            rusqlite::params![component, m.version, m.name, crate::now_ms()],
                        )
                        .map_err(sqlite_err)?;
                    }
                    tx.commit().map_err(sqlite_err)
                })
                .await
            }
            Inner::Postgres(pool) => {
                let mut client = pool.get().await.map_err(pool_err)?;
                let tx = client.transaction().await.map_err(pg_err)?;
                tx.execute(
                    "SELECT pg_advisory_xact_lock(hashtext('kickstand-ops-migrate:' || $1::text))",
                    &[&component],
                )
                .await
                .map_err(pg_err)?;
                tx.batch_execute(TABLE).await.map_err(pg_err)?;
                let have: i64 = tx
                    .query_one(
                        "SELECT COALESCE(MAX(version), 0)::bigint FROM kickstand_ops_migrations WHERE component = $1",
                        &[&component],
                    )
                    .await
                    .map_err(pg_err)?
                    .get(0);
                check_not_newer(&component, have, migrations.len())?;
                for m in migrations.iter().skip(have as usize) {
                    tx.batch_execute(m.postgres).await.map_err(|e| {
                        DbError::Sql(format!(
                            "{component} migration {}: {}",
                            m.version,
                            pg_text(&e)
                        ))
                    })?;
                    tx.execute(
                        "INSERT INTO kickstand_ops_migrations VALUES ($1, $2, $3, $4)",
                        &[&component, &(m.version as i64), &m.name, &crate::now_ms()],
                    )
                    .await
                    .map_err(pg_err)?;
                }
                tx.commit().await.map_err(pg_err)
            }
        }
    }

    /// Runs one statement; returns the rows it changed.
    pub async fn execute(&self, sql: &str, params: Vec<Value>) -> DbResult<u64> {
        Ok(self.batch(vec![(sql.to_owned(), params)]).await?[0])
    }

    /// Runs the statements in one transaction; returns the rows each changed. Nothing is
    /// changed when one fails.
    pub async fn batch(&self, statements: Vec<(String, Vec<Value>)>) -> DbResult<Vec<u64>> {
        match &*self.0 {
            Inner::Sqlite(conn) => {
                let conn = conn.clone();
                blocking(move || {
                    let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
                    let tx = c
                        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                        .map_err(sqlite_err)?;
                    let mut changed = Vec::with_capacity(statements.len());
                    for (sql, params) in &statements {
                        let mut stmt = tx.prepare_cached(&to_sqlite(sql)).map_err(sqlite_err)?;
                        let n = stmt
                            .execute(rusqlite::params_from_iter(params.iter()))
                            .map_err(sqlite_err)?;
                        changed.push(n as u64);
                    }
                    tx.commit().map_err(sqlite_err)?;
                    Ok(changed)
                })
                .await
            }
            Inner::Postgres(pool) => {
                let mut client = pool.get().await.map_err(pool_err)?;
                if statements.len() == 1 {
                    let (sql, params) = &statements[0];
                    let stmt = client.prepare_cached(sql).await.map_err(pg_err)?;
                    let n = client
                        .execute(&stmt, &pg_params(params))
                        .await
                        .map_err(pg_err)?;
                    return Ok(vec![n]);
                }
                let tx = client.transaction().await.map_err(pg_err)?;
                let mut changed = Vec::with_capacity(statements.len());
                for (sql, params) in &statements {
                    let stmt = tx.prepare_cached(sql).await.map_err(pg_err)?;
                    changed.push(
                        tx.execute(&stmt, &pg_params(params))
                            .await
                            .map_err(pg_err)?,
                    );
                }
                tx.commit().await.map_err(pg_err)?;
                Ok(changed)
            }
        }
    }

    /// Runs a query (or a statement with `RETURNING`); returns its rows.
    pub async fn query(&self, sql: &str, params: Vec<Value>) -> DbResult<Vec<Row>> {
        match &*self.0 {
            Inner::Sqlite(conn) => {
                let conn = conn.clone();
                let sql = to_sqlite(sql);
                blocking(move || {
                    let c = conn.lock().unwrap_or_else(|p| p.into_inner());
                    let mut stmt = c.prepare_cached(&sql).map_err(sqlite_err)?;
                    let n = stmt.column_count();
                    let mut rows = stmt
                        .query(rusqlite::params_from_iter(params.iter()))
                        .map_err(sqlite_err)?;
                    let mut out = Vec::new();
                    while let Some(r) = rows.next().map_err(sqlite_err)? {
                        let mut row = Vec::with_capacity(n);
                        for i in 0..n {
                            row.push(from_sqlite(r.get_ref(i).map_err(sqlite_err)?, i)?);
                        }
                        out.push(Row(row));
                    }
                    Ok(out)
                })
                .await
            }
            Inner::Postgres(pool) => {
                let client = pool.get().await.map_err(pool_err)?;
                let stmt = client.prepare_cached(sql).await.map_err(pg_err)?;
                let rows = client
                    .query(&stmt, &pg_params(&params))
                    .await
                    .map_err(pg_err)?;
                rows.iter().map(from_pg).collect()
            }
        }
    }

    /// [`Db::query`] for at most one row.
    pub async fn query_opt(&self, sql: &str, params: Vec<Value>) -> DbResult<Option<Row>> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }
}

fn check_not_newer(component: &str, have: i64, known: usize) -> DbResult<()> {
    if have as usize > known {
        return Err(DbError::Config(format!(
            "the ops database holds version {have} of the {component} schema, newer than this \
             build knows ({known}); use a newer kickstand"
        )));
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> DbResult<T> + Send + 'static,
) -> DbResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DbError::Sql(format!("the database task failed: {e}")))?
}

/// `$1` → `?1` outside quoted text and identifiers.
fn to_sqlite(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                if c == q {
                    quote = None;
                }
                out.push(c);
            }
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    out.push(c);
                }
                '$' if chars.peek().is_some_and(|d| d.is_ascii_digit()) => out.push('?'),
                _ => out.push(c),
            },
        }
    }
    out
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Value::Real(v) => ToSqlOutput::Borrowed(ValueRef::Real(*v)),
            Value::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
        })
    }
}

fn from_sqlite(v: rusqlite::types::ValueRef<'_>, i: usize) -> DbResult<Value> {
    use rusqlite::types::ValueRef;
    Ok(match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(v) => Value::Int(v),
        ValueRef::Real(v) => Value::Real(v),
        ValueRef::Text(t) => Value::Text(
            std::str::from_utf8(t)
                .map_err(|e| DbError::Decode(i, e.to_string()))?
                .to_owned(),
        ),
        ValueRef::Blob(_) => return Err(DbError::Decode(i, "a blob".into())),
    })
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::BOOL => (*v != 0).to_sql(ty, out),
                Type::FLOAT8 => (*v as f64).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => v.to_string().to_sql(ty, out),
                _ => Err(format!("an integer cannot be sent as {ty}").into()),
            },
            Value::Real(v) => match *ty {
                Type::FLOAT8 => v.to_sql(ty, out),
                Type::FLOAT4 => (*v as f32).to_sql(ty, out),
                _ => Err(format!("a real cannot be sent as {ty}").into()),
            },
            Value::Text(v) => match *ty {
                Type::JSON => {
                    out.extend_from_slice(v.as_bytes());
                    Ok(IsNull::No)
                }
                Type::JSONB => {
                    out.extend_from_slice(&[1]);
                    out.extend_from_slice(v.as_bytes());
                    Ok(IsNull::No)
                }
                _ => v.as_str().to_sql(ty, out),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn pg_params(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

fn from_pg(row: &tokio_postgres::Row) -> DbResult<Row> {
    let mut out = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let dec = |e: tokio_postgres::Error| DbError::Decode(i, e.to_string());
        let v = match *col.type_() {
            Type::INT8 => row.try_get::<_, Option<i64>>(i).map_err(dec)?.into(),
            Type::INT4 => row.try_get::<_, Option<i32>>(i).map_err(dec)?.into(),
            Type::INT2 => row
                .try_get::<_, Option<i16>>(i)
                .map_err(dec)?
                .map(i32::from)
                .into(),
            Type::BOOL => row.try_get::<_, Option<bool>>(i).map_err(dec)?.into(),
            Type::FLOAT8 => row.try_get::<_, Option<f64>>(i).map_err(dec)?.into(),
            Type::FLOAT4 => row
                .try_get::<_, Option<f32>>(i)
                .map_err(dec)?
                .map(f64::from)
                .into(),
            Type::JSON | Type::JSONB => row
                .try_get::<_, Option<Json>>(i)
                .map_err(dec)?
                .map(|j| j.0)
                .into(),
            _ => row.try_get::<_, Option<String>>(i).map_err(dec)?.into(),
        };
        out.push(v);
    }
    Ok(Row(out))
}

/// JSON or JSONB read as its text.
struct Json(String);

impl<'a> tokio_postgres::types::FromSql<'a> for Json {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Json, Box<dyn std::error::Error + Sync + Send>> {
        let raw = if *ty == Type::JSONB {
            raw.strip_prefix(&[1]).ok_or("unknown jsonb version")?
        } else {
            raw
        };
        Ok(Json(std::str::from_utf8(raw)?.to_owned()))
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::JSON | Type::JSONB)
    }
}

fn sqlite_err(e: rusqlite::Error) -> DbError {
    if let rusqlite::Error::SqliteFailure(f, msg) = &e
        && matches!(
            f.extended_code,
            rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
        )
    {
        return DbError::Unique(msg.clone().unwrap_or_else(|| e.to_string()));
    }
    DbError::Sql(e.to_string())
}

/// The server's message with its detail, never the connection settings.
fn pg_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{}: {d}", db.message()),
            None => db.message().to_owned(),
        },
        None => e.to_string(),
    }
}

fn pg_err(e: tokio_postgres::Error) -> DbError {
    if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
        return DbError::Unique(pg_text(&e));
    }
    DbError::Sql(pg_text(&e))
}

fn pool_err(e: deadpool_postgres::PoolError) -> DbError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_err(e),
        other => DbError::Sql(format!("the ops database is unreachable: {other}")),
    }
}

fn check_schema(schema: &str) -> DbResult<()> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && schema
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(DbError::Config(format!(
            "the ops database schema {schema:?} must be 1 to 63 ASCII letters, digits or _, not starting with a digit"
        )))
    }
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests;
