//! Pooled index connections, without a round trip per statement.
//!
//! sqlx's own pool checks every connection it takes back before anyone may use it again: a
//! protocol `Sync` on PostgreSQL (a full round trip), a hop to the connection's thread on
//! SQLite. Under a read load that doubled the round trips to PostgreSQL, and removing it raised
//! the reads per second by about a quarter (BENCHMARKS.md). This pool (deadpool's, holding sqlx
//! connections) takes a connection back as it is, but only from a request that finished with it:
//!
//! - `Lease::done` returns the connection at once: its statements ran to completion, and
//!   sqlx reads whatever answer is still unread before its next statement;
//! - a lease dropped without `done` (an error, or a request cancelled mid-statement, perhaps
//!   inside a transaction) takes its connection out of the pool and closes it, so no
//!   connection with a half-written request or an open transaction is ever handed out again;
//!   the database rolls back whatever the closed session had open;
//! - a connection idle for `PING_AFTER_IDLE` is checked before use (a restarted database or a
//!   firewall may have dropped it), and one older than `MAX_LIFETIME` is replaced.
//!
//! A socket answers on the thread whose Tokio runtime opened it: each HTTP worker runs its own
//! runtime, and a connection opened by one and used by another costs a wake-up of the first
//! for every answer. The pool can therefore be split into partitions: a thread takes an idle
//! connection of its own partition first (threads beyond the partitions share them in turn),
//! then an idle one of another, and waits for its own only when every partition is busy.

use std::cell::Cell;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use deadpool::Runtime;
use deadpool::managed::{self, Metrics, Object, PoolError, RecycleError, RecycleResult, Timeouts};
use sqlx::{ConnectOptions, Connection, Database};

use super::StorageError;

/// A connection idle this long is checked (one round trip) before it is handed out; one in
/// steady use has just proved itself.
const PING_AFTER_IDLE: Duration = Duration::from_secs(1);
/// Connections are replaced after this long (sqlx's pool default): server-side memory held by
/// a session, and a failover behind a stable address, do not last forever.
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// Opens connections with the index's options, and checks them on reuse.
pub struct Connector<DB: Database> {
    options: <DB::Connection as Connection>::Options,
}

impl<DB: Database> managed::Manager for Connector<DB> {
    type Type = DB::Connection;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<DB::Connection, sqlx::Error> {
        self.options.connect().await
    }

    async fn recycle(&self, conn: &mut DB::Connection, metrics: &Metrics) -> RecycleResult<sqlx::Error> {
        if metrics.age() >= MAX_LIFETIME {
            return Err(RecycleError::message("past its maximum lifetime"));
        }
        if metrics.last_used() >= PING_AFTER_IDLE {
            conn.ping().await?;
        }
        Ok(())
    }
}

/// The pool of one index: one or more partitions (see the module's documentation).
pub struct Leases<DB: Database> {
    partitions: Box<[managed::Pool<Connector<DB>>]>,
    /// Taking a connection without waiting for one to come back (opening one may take `wait`).
    at_once: Timeouts,
}

/// This thread's partition number, given in turn to each thread that asks first.
fn thread_partition() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static PARTITION: Cell<Option<usize>> = const { Cell::new(None) };
    }
    PARTITION.with(|p| {
        let n = p.get().unwrap_or_else(|| NEXT.fetch_add(1, Ordering::Relaxed));
        p.set(Some(n));
        n
    })
}

impl<DB: Database> Leases<DB> {
    /// At most `max` connections, split between `partitions` pools (at least one connection
    /// each); `wait` bounds both waiting for a free one and opening one.
    pub fn new(
        options: &<DB::Connection as Connection>::Options,
        max: u32,
        partitions: usize,
        wait: Duration,
    ) -> Result<Self, StorageError> {
        let max = usize::try_from(max).unwrap_or(usize::MAX).max(1);
        let partitions = partitions.clamp(1, max);
        let partitions = (0..partitions)
            .map(|i| {
                // The first `max % partitions` pools take one more: `max` in all.
                let size = max / partitions + usize::from(i < max % partitions);
                managed::Pool::builder(Connector { options: options.clone() })
                    .max_size(size)
                    .runtime(Runtime::Tokio1)
                    .wait_timeout(Some(wait))
                    .create_timeout(Some(wait))
                    .recycle_timeout(Some(wait))
                    // The most recently used connection first: under a light load the same few
                    // stay warm (and skip the idle check), the others stay idle.
                    .queue_mode(managed::QueueMode::Lifo)
                    .build()
                    .map_err(|e| StorageError::Pool(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            partitions,
            at_once: Timeouts { wait: Some(Duration::ZERO), create: Some(wait), recycle: Some(wait) },
        })
    }

    /// `new`, then the database's migrations on one of its connections.
    pub async fn open(
        options: &<DB::Connection as Connection>::Options,
        max: u32,
        partitions: usize,
        wait: Duration,
        migrator: &sqlx::migrate::Migrator,
    ) -> Result<Self, StorageError>
    where
        for<'c> &'c mut DB::Connection: sqlx::Acquire<'c, Database = DB>,
        DB::Connection: sqlx::migrate::Migrate,
    {
        let leases = Self::new(options, max, partitions, wait)?;
        let mut conn = leases.get().await?;
        migrator.run(&mut *conn).await?;
        conn.done();
        Ok(leases)
    }

    /// An idle connection, or a new one, of this thread's partition, else of another; when every
    /// partition is busy, the next one back in this thread's.
    pub async fn get(&self) -> Result<Lease<DB>, StorageError> {
        let own = thread_partition() % self.partitions.len();
        let in_turn = self.partitions.iter().cycle().skip(own).take(self.partitions.len());
        for pool in in_turn {
            match pool.timeout_get(&self.at_once).await {
                Ok(conn) => return Ok(Lease { conn: Some(conn), done: false }),
                Err(PoolError::Timeout(managed::TimeoutType::Wait)) => {}
                Err(e) => return Err(pool_error(e)),
            }
        }
        let pool = self.partitions.get(own).unwrap_or_else(|| unreachable!("a remainder indexes the partitions"));
        pool.get().await.map(|conn| Lease { conn: Some(conn), done: false }).map_err(pool_error)
    }
}

fn pool_error(error: PoolError<sqlx::Error>) -> StorageError {
    match error {
        PoolError::Backend(e) => e.into(),
        PoolError::Timeout(_) => sqlx::Error::PoolTimedOut.into(),
        PoolError::Closed => sqlx::Error::PoolClosed.into(),
        e => StorageError::Pool(e.to_string()),
    }
}

/// One connection, lent to one piece of work. Call `done` when that work finished.
pub struct Lease<DB: Database> {
    conn: Option<Object<Connector<DB>>>,
    done: bool,
}

impl<DB: Database> Lease<DB> {
    /// The work finished: the connection goes back to the pool as it is.
    pub fn done(mut self) {
        self.done = true;
    }
}

impl<DB: Database> Drop for Lease<DB> {
    fn drop(&mut self) {
        if !self.done
            && let Some(conn) = self.conn.take()
        {
            // Out of the pool (which may open a new one), then closed.
            drop(Object::take(conn));
        }
    }
}

impl<DB: Database> Deref for Lease<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        // `conn` is `None` only inside `drop`.
        self.conn.as_deref().unwrap_or_else(|| unreachable!("a lease is used after it was dropped"))
    }
}

impl<DB: Database> DerefMut for Lease<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        self.conn.as_deref_mut().unwrap_or_else(|| unreachable!("a lease is used after it was dropped"))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use sqlx::Sqlite;
    use sqlx::sqlite::SqliteConnectOptions;

    use super::*;

    /// A waiting writer waits up to five seconds for the write lock: long enough that only a
    /// lock that is never released fails the test.
    fn leases(dir: &Path) -> Leases<Sqlite> {
        let options = SqliteConnectOptions::new()
            .filename(dir.join("lease.sqlite"))
            .create_if_missing(true)
            .busy_timeout(Duration::from_secs(5));
        Leases::new(&options, 2, 1, Duration::from_secs(5)).unwrap()
    }

    #[tokio::test]
    async fn a_finished_lease_goes_back_to_the_pool_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let leases = leases(dir.path());
        let mut conn = leases.get().await.unwrap();
        sqlx::query("SELECT 1").execute(&mut *conn).await.unwrap();
        conn.done();
        let status = leases.partitions[0].status();
        assert_eq!((status.size, status.available), (1, 1));
    }

    #[tokio::test]
    async fn an_unfinished_lease_closes_its_connection_and_rolls_back_its_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let leases = leases(dir.path());
        let mut first = leases.get().await.unwrap();
        sqlx::raw_sql("CREATE TABLE t (x INTEGER)").execute(&mut *first).await.unwrap();
        sqlx::raw_sql("BEGIN IMMEDIATE; INSERT INTO t VALUES (1)").execute(&mut *first).await.unwrap();
        // As a request cancelled in the middle of its transaction would leave it.
        drop(first);
        assert_eq!(leases.partitions[0].status().size, 0);

        let mut second = leases.get().await.unwrap();
        sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *second).await.unwrap();
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM t").fetch_one(&mut *second).await.unwrap();
        assert_eq!(rows, 0, "the unfinished transaction was rolled back");
    }

    #[tokio::test]
    async fn a_thread_takes_its_connections_from_its_own_partition() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::new().filename(dir.path().join("p.sqlite")).create_if_missing(true);
        let leases = Leases::<Sqlite>::new(&options, 5, 2, Duration::from_secs(5)).unwrap();
        let sizes: Vec<usize> = leases.partitions.iter().map(|p| p.status().max_size).collect();
        assert_eq!(sizes, [3, 2], "the partitions share the maximum");
        for _ in 0..3 {
            let mut conn = leases.get().await.unwrap();
            sqlx::query("SELECT 1").execute(&mut *conn).await.unwrap();
            conn.done();
        }
        let mine = thread_partition() % 2;
        let opened: Vec<usize> = leases.partitions.iter().map(|p| p.status().size).collect();
        assert_eq!(opened[mine], 1, "{opened:?}");
        assert_eq!(opened[1 - mine], 0, "{opened:?}");
    }

    #[tokio::test]
    async fn a_thread_whose_partition_is_busy_takes_another_s_idle_connection() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::new().filename(dir.path().join("p.sqlite")).create_if_missing(true);
        let leases = Leases::<Sqlite>::new(&options, 2, 2, Duration::from_secs(5)).unwrap();
        let first = leases.get().await.unwrap();
        // Its partition's one connection is out: the other partition's serves, at once.
        let second = tokio::time::timeout(Duration::from_secs(1), leases.get()).await.unwrap().unwrap();
        let opened: Vec<usize> = leases.partitions.iter().map(|p| p.status().size).collect();
        assert_eq!(opened, [1, 1]);
        first.done();
        second.done();
    }
}
