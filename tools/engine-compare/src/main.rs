//! engine-compare: measures candidate on-disk engines for Kickstand's embedded history store
//! (fjall, redb, SQLite) on the workload the design gives the engine. See README.md.
//!
//! Every engine sees exactly the same operations and the same pseudo-random bytes (fixed seed).
//! Each "durable" step returns only after the engine has synced to disk:
//! fjall: `batch.commit()` + `db.persist(SyncAll)`; redb: `commit()` (Durability::Immediate, the
//! default); SQLite: `COMMIT` in WAL mode with synchronous=FULL (NORMAL is shown for information
//! only: in WAL mode it does not sync at commit, so it does not meet the contract).

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn Error>>;

const HOUR_MS: i64 = 3_600_000;
/// 2026-11-01T00:00:00Z, a UTC hour boundary.
const T0_MS: i64 = 1_793_491_200_000;

// ---------------------------------------------------------------------------------------------
// configuration (env overrides so a quick smoke run is possible: KS_SCALE=0.1)

struct Cfg {
    baseline_rows: usize,
    baseline_batch: usize,
    vehicles: usize,
    checkpoints: usize,
    points_per_chunk: usize,
    bytes_per_point: usize,
    latest_bytes: usize,
    compact_batch: usize,
    track_vehicles: usize,
    track_buckets: usize,
    track_bucket_bytes: usize,
    track_queries: usize,
    retention_hours: usize,
    sqlite_normal: bool,
}

impl Cfg {
    fn from_env() -> Cfg {
        let scale: f64 = std::env::var("KS_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
        let s = |n: usize| ((n as f64 * scale).round() as usize).max(1);
        Cfg {
            baseline_rows: s(200_000),
            baseline_batch: 500,
            vehicles: s(20_000),
            checkpoints: 60,
            points_per_chunk: 30,
            bytes_per_point: 5,
            latest_bytes: 60,
            compact_batch: 1_000,
            track_vehicles: s(1_000),
            track_buckets: 24,
            track_bucket_bytes: 18_000,
            track_queries: 1_000,
            retention_hours: 12,
            sqlite_normal: std::env::var("KS_NO_SQLITE_NORMAL").is_err(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// data generation: deterministic, fast, incompressible-ish bytes

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn vehicle_id(i: usize) -> String {
    format!("scooter-{i:06}")
}

// ---------------------------------------------------------------------------------------------
// key encodings (KV engines). vehicle ids are 1–64 chars of [A-Za-z0-9_.:-], so a 0x00 separator
// keeps `vehicle_id | ...` prefix-free; i64 bucket starts are big-endian with the sign bit flipped
// so that byte order equals numeric order.

fn be_i64(x: i64) -> [u8; 8] {
    ((x as u64) ^ (1 << 63)).to_be_bytes()
}
fn bucket_prefix(v: &str, bucket: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(v.len() + 13);
    k.extend_from_slice(v.as_bytes());
    k.push(0);
    k.extend_from_slice(&be_i64(bucket));
    k
}
fn chunk_key(v: &str, bucket: i64, seq: u32) -> Vec<u8> {
    let mut k = bucket_prefix(v, bucket);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}
fn tindex_key(bucket: i64, v: &str) -> Vec<u8> {
    let mut k = be_i64(bucket).to_vec();
    k.extend_from_slice(v.as_bytes());
    k
}
fn tindex_decode(k: &[u8]) -> (i64, String) {
    let b = (u64::from_be_bytes(k[..8].try_into().unwrap()) ^ (1 << 63)) as i64;
    (b, String::from_utf8(k[8..].to_vec()).unwrap())
}

// ---------------------------------------------------------------------------------------------
// the operations every engine implements

struct Chunk {
    vehicle: usize,
    bucket: i64,
    seq: u32,
    data: Vec<u8>,
}

/// One shard checkpoint: one atomic batch, durable when `checkpoint` returns.
struct Checkpoint {
    chunks: Vec<Chunk>,
    /// (bucket_start, vehicle) for buckets first touched in this checkpoint
    new_buckets: Vec<(i64, usize)>,
    latest: Vec<(usize, Vec<u8>)>,
}

trait Store {
    /// baseline: one atomic durable batch of opaque rows
    fn put_rows(&mut self, rows: &[(Vec<u8>, Vec<u8>)]) -> Res<()>;
    fn checkpoint(&mut self, cp: &Checkpoint, ids: &[String]) -> Res<()>;
    /// read the chunks of each (vehicle, bucket), write them merged as seq 0, delete the chunks;
    /// one atomic durable batch. Returns merged bytes.
    fn compact(&mut self, buckets: &[(String, i64)]) -> Res<usize>;
    /// range scan `vehicle | from..to`, returns bytes read
    fn track(&self, vehicle: &str, from: i64, to: i64) -> Res<usize>;
    /// delete every entry of buckets starting before `cutoff` (found through the time index);
    /// returns entries deleted
    fn retention(&mut self, cutoff: i64) -> Res<usize>;
    /// let background work finish / fold logs, before a second size reading
    fn settle(&mut self) -> Res<String>;
    /// explicit maintenance that reclaims all free space (the floor an operator could reach)
    fn full_compact(&mut self) -> Res<&'static str>;
}

// ------------------------------------------------------------------------------- fjall

struct FjallStore {
    db: fjall::Database,
    rows: fjall::Keyspace,
    chunks: fjall::Keyspace,
    tindex: fjall::Keyspace,
    latest: fjall::Keyspace,
}

impl FjallStore {
    fn open(dir: &Path) -> Res<Self> {
        let db = fjall::Database::builder(dir).open()?;
        let ks = |n: &str| db.keyspace(n, fjall::KeyspaceCreateOptions::default);
        Ok(FjallStore {
            rows: ks("rows")?,
            chunks: ks("chunks")?,
            tindex: ks("tindex")?,
            latest: ks("latest")?,
            db,
        })
    }
    fn durable(&self) -> Res<()> {
        self.db.persist(fjall::PersistMode::SyncAll)?;
        Ok(())
    }
}

impl Store for FjallStore {
    fn put_rows(&mut self, rows: &[(Vec<u8>, Vec<u8>)]) -> Res<()> {
        let mut b = self.db.batch();
        for (k, v) in rows {
            b.insert(&self.rows, k.as_slice(), v.as_slice());
        }
        b.commit()?;
        self.durable()
    }
    fn checkpoint(&mut self, cp: &Checkpoint, ids: &[String]) -> Res<()> {
        let mut b = self.db.batch();
        for c in &cp.chunks {
            b.insert(&self.chunks, chunk_key(&ids[c.vehicle], c.bucket, c.seq), c.data.as_slice());
        }
        for (bucket, v) in &cp.new_buckets {
            b.insert(&self.tindex, tindex_key(*bucket, &ids[*v]), &[][..]);
        }
        for (v, data) in &cp.latest {
            b.insert(&self.latest, ids[*v].as_bytes(), data.as_slice());
        }
        b.commit()?;
        self.durable()
    }
    fn compact(&mut self, buckets: &[(String, i64)]) -> Res<usize> {
        let mut b = self.db.batch();
        let mut total = 0;
        for (v, bucket) in buckets {
            let mut merged = Vec::new();
            for kv in self.chunks.prefix(bucket_prefix(v, *bucket)) {
                let (k, val) = kv.into_inner()?;
                merged.extend_from_slice(&val);
                b.remove(&self.chunks, k);
            }
            total += merged.len();
            b.insert(&self.chunks, chunk_key(v, *bucket, 0), merged);
        }
        b.commit()?;
        self.durable()?;
        Ok(total)
    }
    fn track(&self, vehicle: &str, from: i64, to: i64) -> Res<usize> {
        let mut n = 0;
        for kv in self.chunks.range(bucket_prefix(vehicle, from)..bucket_prefix(vehicle, to)) {
            n += kv.value()?.len();
        }
        Ok(n)
    }
    fn retention(&mut self, cutoff: i64) -> Res<usize> {
        let mut b = self.db.batch();
        let mut n = 0;
        for kv in self.tindex.range(..be_i64(cutoff).to_vec()) {
            let k = kv.key()?;
            let (bucket, v) = tindex_decode(&k);
            for c in self.chunks.prefix(bucket_prefix(&v, bucket)) {
                b.remove(&self.chunks, c.key()?);
                n += 1;
            }
            b.remove(&self.tindex, k);
            n += 1;
        }
        b.commit()?;
        self.durable()?;
        Ok(n)
    }
    fn settle(&mut self) -> Res<String> {
        // flush memtables to tables (so the journal can be dropped), then let background
        // compaction finish, as a long-running process would get to
        self.durable()?;
        let t = Instant::now();
        for ks in [&self.chunks, &self.tindex, &self.latest] {
            ks.rotate_memtable_and_wait()?;
        }
        while (self.db.outstanding_flushes() > 0 || self.db.active_compactions() > 0)
            && t.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(format!(
            "flushed memtables + waited {:.1}s for compaction; {} tables, {} journals",
            t.elapsed().as_secs_f64(),
            self.chunks.table_count(),
            self.db.journal_count()
        ))
    }
    fn full_compact(&mut self) -> Res<&'static str> {
        for ks in [&self.chunks, &self.tindex, &self.latest] {
            ks.major_compact()?;
        }
        self.settle()?;
        Ok("Keyspace::major_compact (doc-hidden)")
    }
}

// ------------------------------------------------------------------------------- redb

const R_ROWS: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("rows");
const R_CHUNKS: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("chunks");
const R_TINDEX: redb::TableDefinition<&[u8], ()> = redb::TableDefinition::new("tindex");
const R_LATEST: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("latest");

struct RedbStore {
    db: redb::Database,
}

impl RedbStore {
    fn open(dir: &Path) -> Res<Self> {
        fs::create_dir_all(dir)?;
        let db = redb::Database::create(dir.join("history.redb"))?;
        let tx = db.begin_write()?;
        tx.open_table(R_ROWS)?;
        tx.open_table(R_CHUNKS)?;
        tx.open_table(R_TINDEX)?;
        tx.open_table(R_LATEST)?;
        tx.commit()?;
        Ok(RedbStore { db })
    }
}

impl Store for RedbStore {
    fn put_rows(&mut self, rows: &[(Vec<u8>, Vec<u8>)]) -> Res<()> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(R_ROWS)?;
            for (k, v) in rows {
                t.insert(k.as_slice(), v.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }
    fn checkpoint(&mut self, cp: &Checkpoint, ids: &[String]) -> Res<()> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(R_CHUNKS)?;
            for c in &cp.chunks {
                t.insert(chunk_key(&ids[c.vehicle], c.bucket, c.seq).as_slice(), c.data.as_slice())?;
            }
            let mut t = tx.open_table(R_TINDEX)?;
            for (bucket, v) in &cp.new_buckets {
                t.insert(tindex_key(*bucket, &ids[*v]).as_slice(), ())?;
            }
            let mut t = tx.open_table(R_LATEST)?;
            for (v, data) in &cp.latest {
                t.insert(ids[*v].as_bytes(), data.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }
    fn compact(&mut self, buckets: &[(String, i64)]) -> Res<usize> {
        use redb::ReadableTable;
        let tx = self.db.begin_write()?;
        let mut total = 0;
        {
            let mut t = tx.open_table(R_CHUNKS)?;
            for (v, bucket) in buckets {
                let lo = chunk_key(v, *bucket, 0);
                let hi = chunk_key(v, *bucket, u32::MAX);
                let mut merged = Vec::new();
                let mut keys = Vec::new();
                for kv in t.range(lo.as_slice()..=hi.as_slice())? {
                    let (k, val) = kv?;
                    merged.extend_from_slice(val.value());
                    keys.push(k.value().to_vec());
                }
                for k in &keys {
                    t.remove(k.as_slice())?;
                }
                total += merged.len();
                t.insert(lo.as_slice(), merged.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(total)
    }
    fn track(&self, vehicle: &str, from: i64, to: i64) -> Res<usize> {
        use redb::ReadableDatabase;
        let tx = self.db.begin_read()?;
        let t = tx.open_table(R_CHUNKS)?;
        let lo = bucket_prefix(vehicle, from);
        let hi = bucket_prefix(vehicle, to);
        let mut n = 0;
        for kv in t.range(lo.as_slice()..hi.as_slice())? {
            n += kv?.1.value().len();
        }
        Ok(n)
    }
    fn retention(&mut self, cutoff: i64) -> Res<usize> {
        use redb::ReadableTable;
        let tx = self.db.begin_write()?;
        let mut n = 0;
        {
            let mut ti = tx.open_table(R_TINDEX)?;
            let hi = be_i64(cutoff);
            let mut idx = Vec::new();
            for kv in ti.range(..hi.as_slice())? {
                idx.push(kv?.0.value().to_vec());
            }
            let mut t = tx.open_table(R_CHUNKS)?;
            for k in &idx {
                let (bucket, v) = tindex_decode(k);
                let lo = chunk_key(&v, bucket, 0);
                let hi = chunk_key(&v, bucket, u32::MAX);
                let mut keys = Vec::new();
                for kv in t.range(lo.as_slice()..=hi.as_slice())? {
                    keys.push(kv?.0.value().to_vec());
                }
                for ck in &keys {
                    t.remove(ck.as_slice())?;
                    n += 1;
                }
                ti.remove(k.as_slice())?;
                n += 1;
            }
        }
        tx.commit()?;
        Ok(n)
    }
    fn settle(&mut self) -> Res<String> {
        Ok("nothing to wait for (file does not shrink without Database::compact)".into())
    }
    fn full_compact(&mut self) -> Res<&'static str> {
        while self.db.compact()? {}
        Ok("Database::compact")
    }
}

// ------------------------------------------------------------------------------- SQLite

struct SqliteStore {
    conn: rusqlite::Connection,
}

impl SqliteStore {
    fn open(dir: &Path, synchronous: &str) -> Res<Self> {
        fs::create_dir_all(dir)?;
        let conn = rusqlite::Connection::open(dir.join("history.sqlite"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", synchronous)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS rows (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS chunks (
                 vehicle_id TEXT NOT NULL, bucket_start INTEGER NOT NULL, seq INTEGER NOT NULL,
                 data BLOB NOT NULL, PRIMARY KEY (vehicle_id, bucket_start, seq)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS tindex (
                 bucket_start INTEGER NOT NULL, vehicle_id TEXT NOT NULL,
                 PRIMARY KEY (bucket_start, vehicle_id)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS latest (vehicle_id TEXT PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;",
        )?;
        Ok(SqliteStore { conn })
    }
}

impl Store for SqliteStore {
    fn put_rows(&mut self, rows: &[(Vec<u8>, Vec<u8>)]) -> Res<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached("INSERT OR REPLACE INTO rows (k, v) VALUES (?1, ?2)")?;
            for (k, v) in rows {
                st.execute((k, v))?;
            }
        }
        tx.commit()?;
        Ok(())
    }
    fn checkpoint(&mut self, cp: &Checkpoint, ids: &[String]) -> Res<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT OR REPLACE INTO chunks (vehicle_id, bucket_start, seq, data) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for c in &cp.chunks {
                st.execute((&ids[c.vehicle], c.bucket, c.seq, &c.data))?;
            }
            let mut st = tx.prepare_cached("INSERT OR IGNORE INTO tindex (bucket_start, vehicle_id) VALUES (?1, ?2)")?;
            for (bucket, v) in &cp.new_buckets {
                st.execute((bucket, &ids[*v]))?;
            }
            let mut st = tx.prepare_cached("INSERT OR REPLACE INTO latest (vehicle_id, data) VALUES (?1, ?2)")?;
            for (v, data) in &cp.latest {
                st.execute((&ids[*v], data))?;
            }
        }
        tx.commit()?;
        Ok(())
    }
    fn compact(&mut self, buckets: &[(String, i64)]) -> Res<usize> {
        let tx = self.conn.transaction()?;
        let mut total = 0;
        {
            let mut sel = tx.prepare_cached(
                "SELECT data FROM chunks WHERE vehicle_id = ?1 AND bucket_start = ?2 ORDER BY seq",
            )?;
            let mut del = tx.prepare_cached("DELETE FROM chunks WHERE vehicle_id = ?1 AND bucket_start = ?2")?;
            let mut ins = tx.prepare_cached(
                "INSERT INTO chunks (vehicle_id, bucket_start, seq, data) VALUES (?1, ?2, 0, ?3)",
            )?;
            for (v, bucket) in buckets {
                let mut merged = Vec::new();
                let mut rows = sel.query((v, bucket))?;
                while let Some(r) = rows.next()? {
                    merged.extend_from_slice(r.get_ref(0)?.as_blob()?);
                }
                drop(rows);
                del.execute((v, bucket))?;
                total += merged.len();
                ins.execute((v, bucket, &merged))?;
            }
        }
        tx.commit()?;
        Ok(total)
    }
    fn track(&self, vehicle: &str, from: i64, to: i64) -> Res<usize> {
        let mut st = self.conn.prepare_cached(
            "SELECT data FROM chunks WHERE vehicle_id = ?1 AND bucket_start >= ?2 AND bucket_start < ?3
             ORDER BY bucket_start, seq",
        )?;
        let mut rows = st.query((vehicle, from, to))?;
        let mut n = 0;
        while let Some(r) = rows.next()? {
            n += r.get_ref(0)?.as_blob()?.len();
        }
        Ok(n)
    }
    fn retention(&mut self, cutoff: i64) -> Res<usize> {
        let tx = self.conn.transaction()?;
        let mut n = 0;
        {
            let mut idx = tx.prepare_cached("SELECT bucket_start, vehicle_id FROM tindex WHERE bucket_start < ?1")?;
            let list: Vec<(i64, String)> =
                idx.query_map([cutoff], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
            let mut del = tx.prepare_cached("DELETE FROM chunks WHERE vehicle_id = ?1 AND bucket_start = ?2")?;
            for (bucket, v) in &list {
                n += del.execute((v, bucket))?;
            }
            n += tx.execute("DELETE FROM tindex WHERE bucket_start < ?1", [cutoff])?;
        }
        tx.commit()?;
        Ok(n)
    }
    fn settle(&mut self) -> Res<String> {
        self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok("PRAGMA wal_checkpoint(TRUNCATE)".into())
    }
    fn full_compact(&mut self) -> Res<&'static str> {
        self.conn.execute_batch("VACUUM")?;
        self.settle()?;
        Ok("VACUUM")
    }
}

// ---------------------------------------------------------------------------------------------
// measurement helpers

fn du(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut n = 0;
    if let Ok(rd) = fs::read_dir(path) {
        for e in rd.flatten() {
            if let Ok(m) = e.metadata() {
                if m.is_dir() {
                    n += du(&e.path());
                } else {
                    n += m.blocks() * 512;
                }
            }
        }
    }
    n
}

/// bytes this process caused to be written to storage (includes engine background threads)
fn io_written() -> u64 {
    fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("write_bytes:"))
                .and_then(|l| l[12..].trim().parse().ok())
        })
        .unwrap_or(0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn mb(b: u64) -> String {
    format!("{:.0} MB", b as f64 / 1e6)
}

#[derive(Default)]
struct Col {
    name: String,
    cells: Vec<(String, String)>,
    notes: Vec<String>,
}
impl Col {
    fn put(&mut self, metric: &str, val: String) {
        eprintln!("  [{}] {metric}: {val}", self.name);
        self.cells.push((metric.to_string(), val));
    }
}

// ---------------------------------------------------------------------------------------------
// workloads

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Fjall,
    Redb,
    SqliteFull,
    SqliteNormal,
}
impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Fjall => "fjall 3.1",
            Kind::Redb => "redb 4.6",
            Kind::SqliteFull => "SQLite WAL sync=FULL",
            Kind::SqliteNormal => "SQLite WAL sync=NORMAL*",
        }
    }
    fn open(self, dir: &Path) -> Res<Box<dyn Store>> {
        Ok(match self {
            Kind::Fjall => Box::new(FjallStore::open(dir)?),
            Kind::Redb => Box::new(RedbStore::open(dir)?),
            Kind::SqliteFull => Box::new(SqliteStore::open(dir, "FULL")?),
            Kind::SqliteNormal => Box::new(SqliteStore::open(dir, "NORMAL")?),
        })
    }
}

fn run_engine(kind: Kind, cfg: &Cfg, root: &Path, ids: &[String]) -> Res<Col> {
    let mut col = Col { name: kind.name().to_string(), ..Default::default() };
    let base = root.join(kind.name().replace([' ', '.', '=', '*'], "_"));
    let _ = fs::remove_dir_all(&base);
    let started = Instant::now();

    // 1. baseline: small rows in batches of 500, durable per batch ------------------------
    {
        let dir = base.join("baseline");
        let mut s = kind.open(&dir)?;
        let mut rng = Rng(1);
        let mut lat = Vec::new();
        let t = Instant::now();
        let mut i = 0usize;
        while i < cfg.baseline_rows {
            let rows: Vec<(Vec<u8>, Vec<u8>)> = (i..(i + cfg.baseline_batch).min(cfg.baseline_rows))
                .map(|j| {
                    // ≈40-byte key: vehicle id, separator, ts, seq, padding
                    let mut k = format!("fleet-0001:scooter-{:06}", rng.below(20_000)).into_bytes();
                    k.push(0);
                    k.extend_from_slice(&be_i64(T0_MS + j as i64 * 1000));
                    k.extend_from_slice(&(j as u32).to_be_bytes());
                    k.extend_from_slice(&[0u8; 3]);
                    (k, rng.bytes(30))
                })
                .collect();
            let tb = Instant::now();
            s.put_rows(&rows)?;
            lat.push(tb.elapsed().as_secs_f64() * 1e3);
            i += rows.len();
        }
        let secs = t.elapsed().as_secs_f64();
        col.put("1 baseline rows/s (200k×~40B+30B, 500/batch, sync each)", format!("{:.0}", cfg.baseline_rows as f64 / secs));
        col.put("1 baseline ms/batch p50 / p99", format!("{:.2} / {:.2}", pct(&mut lat, 0.5), pct(&mut lat, 0.99)));
    }

    // 2. checkpoint workload -------------------------------------------------------------
    let dir = base.join("checkpoints");
    let mut s = kind.open(&dir)?;
    let points = cfg.vehicles * cfg.checkpoints * cfg.points_per_chunk;
    let chunk_bytes = cfg.points_per_chunk * cfg.bytes_per_point;
    let mut rng = Rng(2);
    let mut lat = Vec::new();
    let mut busy = 0.0;
    let io0 = io_written();
    let bucket_of = |c: usize| T0_MS + HOUR_MS * ((c * cfg.points_per_chunk) as i64 / 3600);
    for c in 0..cfg.checkpoints {
        let bucket = bucket_of(c);
        let first_of_bucket = c == 0 || bucket_of(c - 1) != bucket;
        let cp = Checkpoint {
            chunks: (0..cfg.vehicles)
                .map(|v| Chunk { vehicle: v, bucket, seq: c as u32 + 1, data: rng.bytes(chunk_bytes) })
                .collect(),
            new_buckets: if first_of_bucket { (0..cfg.vehicles).map(|v| (bucket, v)).collect() } else { vec![] },
            latest: (0..cfg.vehicles).map(|v| (v, rng.bytes(cfg.latest_bytes))).collect(),
        };
        let t = Instant::now();
        s.checkpoint(&cp, ids)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        busy += ms / 1e3;
        lat.push(ms);
    }
    let io_load = io_written() - io0;
    col.put("2 checkpoint points/s", format!("{:.2} M", points as f64 / busy / 1e6));
    col.put("2 checkpoint chunk rows/s", format!("{:.0}", (cfg.vehicles * cfg.checkpoints) as f64 / busy));
    col.put("2 ms per checkpoint p50 / p99 / max", format!("{:.0} / {:.0} / {:.0}", pct(&mut lat, 0.5), pct(&mut lat, 0.99), pct(&mut lat, 1.0)));
    col.put("2 total load time", format!("{busy:.1} s"));
    let size_load = du(&dir);
    col.put("5 disk after load (bytes/point)", format!("{} ({:.1})", mb(size_load), size_load as f64 / points as f64));
    col.put("5 written during load (write amp vs 5 B/pt)", format!("{} ({:.1}×)", mb(io_load), io_load as f64 / (points * cfg.bytes_per_point) as f64));

    // 3. compaction of every (vehicle, bucket) ------------------------------------------
    let mut all: Vec<(String, i64)> = Vec::new();
    let mut buckets: Vec<i64> = (0..cfg.checkpoints).map(bucket_of).collect();
    buckets.dedup();
    for b in &buckets {
        for id in ids.iter().take(cfg.vehicles) {
            all.push((id.clone(), *b));
        }
    }
    let io0 = io_written();
    let t = Instant::now();
    let mut merged = 0;
    for batch in all.chunks(cfg.compact_batch) {
        merged += s.compact(batch)?;
    }
    let secs = t.elapsed().as_secs_f64();
    let io_comp = io_written() - io0;
    assert_eq!(merged, points * cfg.bytes_per_point, "compaction lost data");
    col.put("3 compaction buckets/s (1000 per durable batch)", format!("{:.0}", all.len() as f64 / secs));
    col.put("3 compaction total time", format!("{secs:.1} s"));
    let size_comp = du(&dir);
    col.put("5 disk right after compaction (bytes/point)", format!("{} ({:.1})", mb(size_comp), size_comp as f64 / points as f64));
    let note = s.settle()?;
    let size_settled = du(&dir);
    col.put("5 disk after settle (bytes/point)", format!("{} ({:.1})", mb(size_settled), size_settled as f64 / points as f64));
    col.put("5 written during compaction", mb(io_comp));
    col.notes.push(format!("settle: {note}"));
    let t = Instant::now();
    let how = s.full_compact()?;
    let secs = t.elapsed().as_secs_f64();
    let size_floor = du(&dir);
    col.put("5 disk after explicit full compaction (bytes/point)", format!("{} ({:.1})", mb(size_floor), size_floor as f64 / points as f64));
    col.notes.push(format!("full compaction: {how}, {secs:.1} s"));
    drop(s);
    fs::remove_dir_all(&dir)?;

    // 4. track read + 6. retention ------------------------------------------------------
    if kind != Kind::SqliteNormal {
        let dir = base.join("track");
        let mut s = kind.open(&dir)?;
        let mut rng = Rng(4);
        let t = Instant::now();
        for h in 0..cfg.track_buckets {
            let bucket = T0_MS + HOUR_MS * h as i64;
            let cp = Checkpoint {
                chunks: (0..cfg.track_vehicles)
                    .map(|v| Chunk { vehicle: v, bucket, seq: 0, data: rng.bytes(cfg.track_bucket_bytes) })
                    .collect(),
                new_buckets: (0..cfg.track_vehicles).map(|v| (bucket, v)).collect(),
                latest: vec![],
            };
            s.checkpoint(&cp, ids)?;
        }
        col.notes.push(format!("track pre-load ({} × {} buckets × {} B): {:.1} s", cfg.track_vehicles, cfg.track_buckets, cfg.track_bucket_bytes, t.elapsed().as_secs_f64()));
        let _ = s.settle()?;
        let from = T0_MS;
        let to = T0_MS + HOUR_MS * cfg.track_buckets as i64;
        let mut lat = Vec::new();
        let mut rq = Rng(5);
        for _ in 0..cfg.track_queries {
            let v = &ids[rq.below(cfg.track_vehicles)];
            let t = Instant::now();
            let n = s.track(v, from, to)?;
            lat.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(n, cfg.track_buckets * cfg.track_bucket_bytes, "track read incomplete");
        }
        col.put("4 track read 24 buckets (432 KB) ms p50 / p99", format!("{:.2} / {:.2}", pct(&mut lat, 0.5), pct(&mut lat, 0.99)));

        let before = du(&dir);
        let t = Instant::now();
        let n = s.retention(T0_MS + HOUR_MS * cfg.retention_hours as i64)?;
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(n, 2 * cfg.track_vehicles * cfg.retention_hours, "retention deleted wrong count");
        col.put("6 retention: delete oldest 12 h (12k buckets + index)", format!("{:.2} s", secs));
        let after = du(&dir);
        let _ = s.settle()?;
        let settled = du(&dir);
        col.put("6 disk before / after retention / settled", format!("{} / {} / {}", mb(before), mb(after), mb(settled)));
        drop(s);
    }
    col.notes.push(format!("engine wall time incl. data generation: {:.1} s", started.elapsed().as_secs_f64()));
    let _ = fs::remove_dir_all(&base);
    Ok(col)
}

fn main() -> Res<()> {
    let cfg = Cfg::from_env();
    let root = PathBuf::from(std::env::var("KS_DIR").unwrap_or_else(|_| "/work/tmp-engine".into()));
    fs::create_dir_all(&root)?;
    let ids: Vec<String> = (0..cfg.vehicles.max(cfg.track_vehicles)).map(vehicle_id).collect();
    eprintln!(
        "engine-compare: dir {} ({} vehicles × {} checkpoints × {} points = {} points)",
        root.display(),
        cfg.vehicles,
        cfg.checkpoints,
        cfg.points_per_chunk,
        cfg.vehicles * cfg.checkpoints * cfg.points_per_chunk
    );
    let mut kinds = vec![Kind::Fjall, Kind::Redb, Kind::SqliteFull];
    if cfg.sqlite_normal {
        kinds.push(Kind::SqliteNormal);
    }
    if let Ok(only) = std::env::var("KS_ONLY") {
        kinds.retain(|k| k.name().to_lowercase().contains(&only.to_lowercase()));
    }
    let t = Instant::now();
    let mut cols = Vec::new();
    for k in kinds {
        eprintln!("== {}", k.name());
        cols.push(run_engine(k, &cfg, &root, &ids)?);
    }

    // table: one row per metric, one column per engine
    let mut metrics: Vec<String> = Vec::new();
    for c in &cols {
        for (m, _) in &c.cells {
            if !metrics.contains(m) {
                metrics.push(m.clone());
            }
        }
    }
    let mut out = String::new();
    out += &format!("| metric | {} |\n", cols.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(" | "));
    out += &format!("|---|{}\n", "---|".repeat(cols.len()));
    for m in &metrics {
        let vals: Vec<&str> = cols
            .iter()
            .map(|c| c.cells.iter().find(|(k, _)| k == m).map(|(_, v)| v.as_str()).unwrap_or("–"))
            .collect();
        out += &format!("| {} | {} |\n", m, vals.join(" | "));
    }
    println!("\n{out}");
    for c in &cols {
        for n in &c.notes {
            println!("- {}: {}", c.name, n);
        }
    }
    println!("- * SQLite synchronous=NORMAL in WAL mode does not sync at commit: NOT durable when the call returns; shown for information, workloads 1–3 only.");
    println!("- total run time {:.0} s", t.elapsed().as_secs_f64());
    Ok(())
}
